"""The README's `ray start` / `ray job submit -- python jobs/pretrain.py` against a real head.

The head is the `ray_head` fixture (tests/integration/conftest.py): the README's export line and
`ray start` flags, free ports, stopped by the test instead of `ray stop`. The job gets a small
config (a tiny encoder, 2 steps) appended to the README's command, and runs with the token
authentication the README's export line turns on.
"""

from __future__ import annotations

import json
import shlex
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import SUBMIT, submit
from tests.pretrain_fixtures import write_knowledge
from tests.tiny import make_tiny_encoder
from tkre.config import DataConfig
from tkre.data import datasets

pytestmark = pytest.mark.integration


def test_ray_job_submit_pretrain(ray_head, tmp_path: Path):
    _, address, env = ray_head
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
    out = submit(command, env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "succeeded" in out.stdout.lower()
    # the job API agrees (to a request with the token only), and the artifacts are there
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=10)
    request = urllib.request.Request(f"{address}/api/jobs/", headers={
        "Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        jobs = json.load(response)
    assert [job["status"] for job in jobs] == ["SUCCEEDED"]
    for stage in ("mslm", "scl"):
        assert (root / "pretrain" / stage / "model" / "config.json").exists()
        assert json.loads((root / "pretrain" / stage / "metrics.json").read_text())["steps"] == 2
