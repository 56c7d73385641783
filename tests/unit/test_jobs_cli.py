"""Jobs: --help works, bad input exits 2 with a one-line reason naming the field or file.

The job files run in this process through runpy (as `__main__`, exactly as `python jobs/X.py`
runs them) so that each case costs no interpreter start; one case runs a real process, to
show the exit code and the single stderr line reach the shell.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

JOBS = sorted(path.stem for path in (REPO / "jobs").glob("*.py"))


def run_in_process(name: str, *args: str, cwd: Path, capsys, monkeypatch
                   ) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python jobs/<name>.py ARGS` run in this process."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [str(REPO / "jobs" / f"{name}.py"), *args])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / "jobs" / f"{name}.py"), run_name="__main__")
    out = capsys.readouterr()
    return exited.value.code or 0, out.out, out.err


def test_every_job_has_help(capsys, monkeypatch, tmp_path):
    assert {"pipeline", "generate", "pretrain", "finetune", "evaluate"} <= set(JOBS)
    for name in JOBS:
        code, out, _ = run_in_process(name, "--help", cwd=tmp_path, capsys=capsys,
                                      monkeypatch=monkeypatch)
        assert code == 0, name
        assert "--root" in out and "usage:" in out, name


@pytest.mark.parametrize("name", ["generate", "finetune", "evaluate"])
def test_data_flags_in_help(name, capsys, monkeypatch, tmp_path):
    _, out, _ = run_in_process(name, "--help", cwd=tmp_path, capsys=capsys,
                               monkeypatch=monkeypatch)
    assert "--data-dir" in out and "--k" in out


@pytest.mark.parametrize(("args", "expected"), [
    (["--k", "0"], "error: data.k: must be >= 1"),
    (["--data", "semeval"], "error: data.data_dir: is required for --data semeval"),
    (["--data", "semeval", "--data-dir", "/nonexistent"], "/nonexistent"),
    (["--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
])
def test_bad_input_exits_2_with_one_line(args, expected, tmp_path, capsys, monkeypatch):
    code, _, err = run_in_process("finetune", "--root", str(tmp_path / "root"), *args,
                                  cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_a_real_process_exits_2_with_one_stderr_line(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "finetune.py"), "--root",
                          str(tmp_path / "root"), "--k", "0"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == ["error: data.k: must be >= 1, got 0"]


def test_evaluate_without_a_model_says_what_to_run(tmp_path, capsys, monkeypatch):
    code, _, err = run_in_process("evaluate", "--root", str(tmp_path / "root"), cwd=tmp_path,
                                  capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2
    assert "run jobs/finetune.py on this root first" in err


def test_fewshot_eval_without_data_says_where_to_find_it(tmp_path, capsys, monkeypatch):
    """The FewRel folder comes from --data-dir or $TKRE_DATA_DIR, never from the checkout."""
    monkeypatch.delenv("TKRE_DATA_DIR", raising=False)
    code, _, err = run_in_process("fewshot_eval", cwd=tmp_path, capsys=capsys,
                                  monkeypatch=monkeypatch)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data_dir: ")
    assert "--data-dir" in lines[0] and "TKRE_DATA_DIR" in lines[0]
