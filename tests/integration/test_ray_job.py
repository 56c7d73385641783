"""The README's `ray start` / `ray job submit -- python jobs/pretrain.py` against a real head.

The head starts with the README's `ray start` flags plus free ports (other Ray instances may run
on this machine) and `--block`, in its own process group, which the test stops instead of the
README's `ray stop` (that would stop every Ray instance on the machine). The job gets a small
config (a tiny encoder, 2 steps) appended to the README's command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.pretrain_fixtures import write_knowledge
from tests.tiny import make_tiny_encoder
from tkre.config import DataConfig
from tkre.data import datasets

pytestmark = pytest.mark.integration

README = (REPO / "README.md").read_text()
BLOCK = next(b for b in re.findall(r"```bash\n(.*?)```", README, flags=re.S)
             if b.startswith("ray start"))
START, SUBMIT, STOP = BLOCK.strip().splitlines()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1 with its dashboard (the job API); stopped after the test."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    bin_dir = Path(sys.executable).parent
    readme_args = shlex.split(START)[2:]  # after "ray start"
    assert "--head" in readme_args and "127.0.0.1" in readme_args and STOP == "ray stop"
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", *readme_args, "--block",
         f"--port={gcs}", f"--dashboard-port={dashboard}",
         f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}",
         # own ports for the per-node agent: another Ray instance on this machine may hold the
         # defaults, and then no agent could accept the job
         f"--dashboard-agent-listen-port={free_port()}",
         f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for(f"{address}/api/version", timeout_s=120)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_ray_job_submit_pretrain(ray_head, tmp_path: Path):
    address, env = ray_head
    root = tmp_path / "run"
    splits = datasets.prepare(DataConfig(), str(root))
    write_knowledge(str(root), splits.train)
    encoder = make_tiny_encoder(tmp_path / "encoder")
    config = tmp_path / "small.yaml"
    config.write_text(f"root: {root}\nencoder: {encoder}\nmax_steps: 2\nbatch_size: 4\n"
                      "checkpoint_every: 2\nlog_every: 1\nstrategy: deepspeed\nzero_stage: 2\n")
    command = shlex.split(SUBMIT.replace("http://127.0.0.1:8265", address))
    assert command[:3] == ["ray", "job", "submit"]
    assert command[-2:] == ["python", "jobs/pretrain.py"]
    command = [str(Path(sys.executable).parent / "ray"), *command[1:], "--config", str(config)]
    for _ in range(10):  # the node's agent registers a few seconds after the dashboard
        out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=900)
        if "No available agent" not in out.stderr:
            break
        time.sleep(3)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "succeeded" in out.stdout.lower()
    # the job API agrees, and the artifacts are there
    with urllib.request.urlopen(f"{address}/api/jobs/", timeout=10) as response:
        jobs = json.load(response)
    assert [job["status"] for job in jobs] == ["SUCCEEDED"]
    for stage in ("mslm", "scl"):
        assert (root / "pretrain" / stage / "model" / "config.json").exists()
        assert json.loads((root / "pretrain" / stage / "metrics.json").read_text())["steps"] == 2
