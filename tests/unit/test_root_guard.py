"""One writer per root, and storage problems as one line with exit 2, at the jobs' entry point
(tkre.cli.run_job; issue 14)."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tkre import layout, pipeline
from tkre.cli import run_job
from tkre.config import PIPELINE_STAGES, FinetuneConfig, PipelineConfig
from tkre.data import datasets

HOLD = ("import sys\nfrom tkre import layout\nwith layout.writing(sys.argv[1]):\n"
        "    print('held', flush=True)\n    sys.stdin.read()\n")


def one_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def free(root: str) -> bool:
    """Whether another process could take the root's lock now."""
    fd = os.open(layout.lock_file(root), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_a_second_job_on_a_held_root_fails_at_once_naming_the_holder(tmp_path: Path, capsys):
    root, ran = str(tmp_path / "run"), []
    holder = subprocess.Popen([sys.executable, "-c", HOLD, root], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        assert run_job(FinetuneConfig, ran.append, ["--root", root]) == 2 and not ran
        assert time.monotonic() - started < 5  # at once, not after a wait
        line = one_line(capsys)
        assert f"error: {root} is in use by" in line
        assert f"pid {holder.pid} on {socket.gethostname()}" in line
    finally:
        holder.communicate("")  # the holder exits; the kernel drops its lock
    assert run_job(FinetuneConfig, ran.append, ["--root", root]) == 0 and len(ran) == 1
    assert free(root)  # released when the job ended


def test_the_lock_is_released_when_the_job_fails(tmp_path: Path):
    root = str(tmp_path / "run")

    def crash(cfg: FinetuneConfig) -> None:
        assert not free(cfg.root)
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_job(FinetuneConfig, crash, ["--root", root])
    assert free(root)


def test_the_pipeline_and_its_stages_take_the_lock_again_without_deadlock(tmp_path: Path,
                                                                          monkeypatch):
    root, ran = str(tmp_path / "run"), []

    def runners(cfg: PipelineConfig) -> dict:  # every stage prepares (and locks) on its own
        return {name: (lambda splits, name=name: ran.append(
            (name, datasets.prepare(cfg.data, cfg.root).labels))) for name in PIPELINE_STAGES}

    monkeypatch.setattr(pipeline, "stage_runners", runners)
    monkeypatch.setattr(pipeline, "classifier_window", lambda cfg: None)
    argv = ["--root", root, "--stages", "knowledge,finetune"]
    assert run_job(PipelineConfig, pipeline.run_pipeline, argv) == 0
    assert [name for name, _ in ran] == ["knowledge", "finetune"] and free(root)


@pytest.mark.parametrize(("root", "expected"), [
    ("", "error: root: must not be empty"),
    ("{tmp}/file", "is (or lies under) a file, not a folder"),
    ("{tmp}/file/run", "is (or lies under) a file, not a folder"),
    ("s3://", "root 's3://': not an S3 URI with a bucket"),
])
def test_unusable_roots_exit_2_with_one_line(root: str, expected: str, tmp_path: Path, capsys):
    (tmp_path / "file").write_text("not a folder")
    ran: list = []
    assert run_job(FinetuneConfig, ran.append, ["--root", root.format(tmp=tmp_path)]) == 2
    assert expected in one_line(capsys) and not ran


def test_a_read_only_root_exits_2_with_one_line(tmp_path: Path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user writes into read-only folders (root)")
        assert run_job(FinetuneConfig, print, ["--root", str(folder)]) == 2
    finally:
        folder.chmod(0o755)
    assert one_line(capsys) == f"error: {folder} is not writable: permission denied"


def test_s3_problems_exit_2_with_one_line(tmp_path: Path, monkeypatch, capsys):
    """No credentials (a traceback after 19 s before), and S3 failing inside a job."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    ran: list = []
    assert run_job(FinetuneConfig, ran.append, ["--root", "s3://bucket/run"]) == 2 and not ran
    assert one_line(capsys).startswith("error: s3://bucket/run: no AWS credentials: set ")

    from botocore.exceptions import ReadTimeoutError

    def slow_s3(cfg: FinetuneConfig) -> None:
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b/k")

    assert run_job(FinetuneConfig, slow_s3, ["--root", str(tmp_path / "run")]) == 2
    assert "did not answer" in one_line(capsys)
