"""Ray start-up and interruption without a cluster: a dead address is one line at once, the
local cluster's private token, and run_job's exit 130 on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tkre.cli import run_job
from tkre.config import EvaluateConfig
from tkre.train import cluster

INTERRUPTED = "interrupted; re-run the same command to resume"


# run in a fresh interpreter: in the whole suite a session-scoped cluster of the integration
# tests may still be up in this process, and init_ray (rightly) reuses a connected Ray
DEAD_ADDRESS = """
import sys, time
import ray
from tkre.config import ConfigError
from tkre.train import cluster
assert not ray.is_initialized()
how, address = sys.argv[1], sys.argv[2]
started = time.monotonic()
try:
    cluster.init_ray(address if how == "argument" else None)
except ConfigError as err:
    print(f"{time.monotonic() - started:.1f}")
    print(err)
    sys.exit(0 if not ray.is_initialized() else 3)
sys.exit(4)
"""


@pytest.mark.parametrize("how", ["argument", "RAY_ADDRESS"])
def test_dead_address_is_one_line_at_once(how):
    """A head that died without `ray stop`: no 30 s of retries, one line saying what to do."""
    address = f"127.0.0.1:{cluster.free_port()}"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if how == "RAY_ADDRESS":
        env["RAY_ADDRESS"] = address
    done = subprocess.run([sys.executable, "-c", DEAD_ADDRESS, how, address], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    seconds, message = done.stdout.rstrip("\n").split("\n")
    assert float(seconds) < 10
    assert message.startswith("ray_address:")
    assert address in message and "unset both" in message


@pytest.fixture
def no_auth_env(monkeypatch, tmp_path):
    """None of Ray's authentication variables (restored after the test), an empty home."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, "")  # recorded, so whatever the test sets is undone
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.mark.parametrize("env, expect_fresh", [
    ({}, True),
    ({"RAY_AUTH_MODE": "token"}, True),
    ({"RAY_AUTH_MODE": "disabled"}, False),  # the user's opt-out
    ({"RAY_AUTH_TOKEN": "mine"}, False),  # the user's token
    ({"RAY_AUTH_TOKEN_PATH": "/somewhere/token"}, False),
])
def test_local_cluster_token_is_private(env, expect_fresh, no_auth_env, monkeypatch, tmp_path):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cluster.private_auth_token()
    token = os.environ.get("RAY_AUTH_TOKEN")
    if expect_fresh:
        assert token is not None and len(token) == 64 and int(token, 16) >= 0
    else:
        assert token == env.get("RAY_AUTH_TOKEN")
    assert not (tmp_path / ".ray").exists()  # nothing on disk


def test_token_file_of_the_user_is_kept(no_auth_env, tmp_path):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("mine")
    cluster.private_auth_token()
    assert "RAY_AUTH_TOKEN" not in os.environ


def run_interrupted(tmp_path, capsys, main) -> tuple[int, str]:
    """The exit code and what run_job itself wrote to stderr (in the whole suite, a cluster of
    the integration tests may still be up and forward its workers' logs, "(Actor pid=...) ...",
    to this process's stderr)."""
    code = run_job(EvaluateConfig, main, ["--root", str(tmp_path / "run")])
    lines = capsys.readouterr().err.splitlines(keepends=True)
    return code, "".join(line for line in lines if "pid=" not in line)


def test_ctrl_c_is_exit_130_with_one_line(tmp_path, capsys):
    def main(cfg):
        raise KeyboardInterrupt

    code, err = run_interrupted(tmp_path, capsys, main)
    assert code == 130 and err == INTERRUPTED + "\n"


def test_sigterm_is_exit_130_and_the_handler_is_restored(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)

    def main(cfg):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts this
        raise AssertionError("SIGTERM did not stop the job")

    code, err = run_interrupted(tmp_path, capsys, main)
    assert code == 130 and err == INTERRUPTED + "\n"
    assert signal.getsignal(signal.SIGTERM) is before
