"""Ctrl-C (SIGINT to the job's process group, as a terminal sends it) and SIGTERM stop a job
within seconds: exit code 130, one line, its local cluster gone; what it finished stays, and
the same command resumes (issue 14).

Each job runs as a subprocess in its own session on a tiny model, and is interrupted once it is
in its long phase with something already written: generation with rows in its ledger, training
with a checkpoint Ray Train has recorded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO
from tests.tiny import make_tiny_causal_lm, make_tiny_encoder
from tkre.train.cluster import free_port

pytestmark = pytest.mark.integration

INTERRUPTED = "interrupted; re-run the same command to resume"
STOP_WITHIN_S = 15.0


def default_sigint() -> None:
    """In the job's process before it starts: Ctrl-C's default action. A process started in the
    background of a shell without job control (CI launched with `&`) inherits SIGINT ignored,
    and a job started from a terminal does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Job:
    """A job started like a user starts it: its own process group, output in a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        with log_path.open("w") as log:
            self.process = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, **(env or {})},
                                            preexec_fn=default_sigint)

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def wait_until(self, ready, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert self.process.poll() is None, f"the job ended early:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"not ready in time:\n{self.output[-3000:]}"
            time.sleep(0.1)

    def interrupt(self, signum: int) -> float:
        """Send `signum` to the job's process group; the seconds until the job and every process
        it started have exited."""
        tree = psutil.Process(self.process.pid).children(recursive=True)
        started = time.monotonic()
        os.killpg(self.process.pid, signum)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            pytest.fail(f"still running 60 s after {signal.Signals(signum).name}:\n"
                        f"{self.output[-3000:]}")
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, f"left running: {alive}"
        return time.monotonic() - started

    def finish(self, timeout_s: float = 900) -> str:
        self.process.wait(timeout=timeout_s)
        assert self.process.returncode == 0, self.output[-4000:]
        return self.output


# a line a Ray worker printed, forwarded to the driver's output: "(Name pid=123) ..."
WORKER_LINE = re.compile(r"\((?:[^()]*\s)?pid=\d+(?:, ip=[^)]*)?\)")


def assert_clean_stop(job: Job, seconds: float) -> None:
    """Exit code 130, the one line last, no traceback of the job's own, in time."""
    own = [line for line in job.output.splitlines() if not WORKER_LINE.search(line)]
    assert job.process.returncode == 130, job.output[-3000:]
    assert own[-1] == INTERRUPTED, job.output[-3000:]
    assert not any(line.startswith("Traceback") for line in own), job.output[-3000:]
    assert seconds < STOP_WITHIN_S, f"took {seconds:.1f} s to stop"


def test_ctrl_c_stops_generation_and_the_rerun_resumes(tmp_path: Path):
    """Ctrl-C during the Ray Data pass of `jobs/generate.py` (the pipeline's knowledge stage)."""
    from tkre.knowledge.ledger import Ledger

    model = make_tiny_causal_lm(tmp_path / "lm")
    root = tmp_path / "run"
    args = ["jobs/generate.py", "--model", str(model), "--backend", "hf", "--root", str(root),
            "--explanations-per-relation", "2", "--synthetic-per-relation", "0",
            "--max-tokens-explanation", "256", "--batch-size", "2"]
    requests = 7 * 2  # the demo data's 7 relations
    job = Job(args, tmp_path / "first.log")
    job.wait_until(lambda: re.search(rf"\[generate\] \d+/{requests} rows", job.output))
    assert_clean_stop(job, job.interrupt(signal.SIGINT))
    kept = len(Ledger(str(root)).rows)  # the ledger loads: every part file is whole
    assert 0 < kept < requests

    rerun = Job(args, tmp_path / "rerun.log").finish()
    assert f"[generate] {requests - kept} requests to the hf backend" in rerun
    assert len(Ledger(str(root)).rows) == requests
    assert (root / "knowledge" / "stats.json").exists()


def test_ctrl_c_stops_training_and_the_rerun_resumes(tmp_path: Path):
    """Ctrl-C while Ray Train trains (`jobs/finetune.py`): Ray Train's own SIGINT handler
    would turn it into a silent exit 1."""
    encoder = make_tiny_encoder(tmp_path / "encoder")
    root = tmp_path / "run"
    args = ["jobs/finetune.py", "--encoder", str(encoder), "--root", str(root), "--k", "2",
            "--epochs", "3"]
    snapshot = root / "finetune" / "checkpoint_manager_snapshot.json"  # Ray Train's record
    job = Job(args, tmp_path / "first.log")
    job.wait_until(lambda: snapshot.exists() and "checkpoint_" in snapshot.read_text())
    assert_clean_stop(job, job.interrupt(signal.SIGINT))

    rerun = Job(args, tmp_path / "rerun.log").finish()
    resumed = r"\[finetune\] resumed from the checkpoint at step [1-9]"
    assert re.search(resumed, rerun), rerun[-3000:]
    assert (root / "finetune" / "model").is_dir()
    # each line a Ray Train worker prints reaches the job's output once (Ray Train's own print
    # patch printed each twice); the rerun prints an epoch unless it resumed at the end (step 6:
    # 3 epochs of 2 steps, 14 sentences at batch 8)
    epochs = re.findall(r"\[finetune\] epoch \d+/3 .*", rerun)
    assert len(epochs) == len(set(epochs)), rerun[-3000:]
    assert epochs or re.search(r"resumed from the checkpoint at step 6\b", rerun), rerun[-3000:]


def test_sigterm_stops_a_job_like_ctrl_c(tmp_path: Path):
    """SIGTERM (`kill`, a scheduler, `ray job stop`) once the job's cluster is up: ray.init
    installs a SIGTERM handler of its own, and the job's must win. The cluster is the job's own
    although Ray's address file names a head that died without `ray stop` (joining it failed
    with "When connecting to an existing cluster, num_cpus and num_gpus must not be provided")."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
        script = tmp_path / "job.py"
        script.write_text(
            "import sys, time\n"
            "from tkre.cli import run_job\n"
            "from tkre.config import EvaluateConfig\n"
            "from tkre.train.cluster import init_ray\n"
            "def main(cfg):\n"
            "    init_ray()\n"
            "    print('cluster up', flush=True)\n"
            "    time.sleep(300)\n"
            f"sys.exit(run_job(EvaluateConfig, main, ['--root', {str(tmp_path / 'run')!r}]))\n")
        job = Job([str(script)], tmp_path / "job.log", env={"RAY_TMPDIR": str(ray_tmp)})
        job.wait_until(lambda: "cluster up" in job.output)
        assert_clean_stop(job, job.interrupt(signal.SIGTERM))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
