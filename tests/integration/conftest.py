"""One local Ray cluster for the integration tests that run in-process, a local S3 server, and
a Ray head started the README's way.

The S3 endpoint and test credentials are in the environment before Ray starts, so Ray's worker
processes (training workers writing checkpoints, markers, model exports) reach the same server.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO
from tkre.train.cluster import free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 for the whole session (stopped at its end)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
                                              "AWS_SHARED_CREDENTIALS_FILE")}
    empty = tmp_path_factory.mktemp("aws")
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL_S3=endpoint,
                      AWS_CONFIG_FILE=str(empty / "config"),
                      AWS_SHARED_CREDENTIALS_FILE=str(empty / "credentials"))
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    from tkre import storage

    name = f"tkre-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """The jobs' own local cluster (tkre.train.cluster.init_ray), for the whole session."""
    import ray

    from tkre.train.cluster import init_ray

    init_ray()
    yield
    ray.shutdown()


# The README's "On a Ray cluster" block: export line, `ray start`, `ray job submit`, `ray stop`.
README_BLOCKS = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
README_RAY_BLOCK = next(b for b in README_BLOCKS if "ray start --head" in b)
EXPORT, START, SUBMIT, STOP = README_RAY_BLOCK.strip().splitlines()
# what the README's shell gets from its export line, and nothing from ours
RAY_SETTINGS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def readme_shell_env() -> dict[str, str]:
    """The environment after the README block's export line, run by bash in the venv."""
    assert EXPORT.startswith("export ") and STOP == "ray stop"
    base = {k: v for k, v in os.environ.items() if k not in RAY_SETTINGS}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    out = subprocess.run(["bash", "-c", f"{EXPORT}\nenv -0"], env=base, cwd=REPO,
                         capture_output=True, text=True, check=True)
    return dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)


def submit(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`ray job submit ...` from the repository root, retried while the head's node agent has
    not registered yet (a few seconds after the dashboard answers)."""
    for _ in range(10):
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=900)
        if "No available agent" not in result.stderr:
            return result
        time.sleep(3)
    return result


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
    """A Ray head started with the README's export line and `ray start` flags, plus free ports
    (other Ray instances may run on this machine) and `--block`, in its own process group,
    which the test stops instead of the README's `ray stop` (that would stop every Ray instance
    on the machine). Yields (its `ray start` process, the job API's address, the shell's env)."""
    env = readme_shell_env()
    dashboard = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")
    readme_args = shlex.split(START)[2:]  # after "ray start"
    assert "--head" in readme_args and "127.0.0.1" in readme_args
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", *readme_args, "--block",
         f"--port={free_port()}", f"--dashboard-port={dashboard}",
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
        wait_for(f"{address}/api/gcs_healthz", timeout_s=120)  # public under token auth
        yield head, address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
