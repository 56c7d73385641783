"""Jobs: --help works, bad input exits 2 with a one-line reason naming the field or file."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

JOBS = ["generate", "finetune", "evaluate"]


def run_job(name: str, *args: str, tmp_path=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / f"{name}.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path or REPO)


@pytest.mark.parametrize("name", JOBS)
def test_help(name):
    out = run_job(name, "--help")
    assert out.returncode == 0
    assert "--root" in out.stdout and "--data-dir" in out.stdout and "--k" in out.stdout


@pytest.mark.parametrize(("args", "expected"), [
    (["--k", "0"], "error: data.k: must be >= 1"),
    (["--data", "semeval"], "error: data.data_dir: is required for --data semeval"),
    (["--data", "semeval", "--data-dir", "/nonexistent"], "/nonexistent"),
    (["--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
])
def test_bad_input_exits_2_with_one_line(args, expected, tmp_path):
    out = run_job("finetune", "--root", str(tmp_path / "root"), *args, tmp_path=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_evaluate_without_a_model_says_what_to_run(tmp_path):
    out = run_job("evaluate", "--root", str(tmp_path / "root"), tmp_path=tmp_path)
    assert out.returncode == 2
    assert "run jobs/finetune.py first" in out.stderr
