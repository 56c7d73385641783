"""Ray start-up and interruption without a cluster: a dead address is one line at once, the
local cluster's private token, and run_job's exit 130 on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tkre.cli import run_job
from tkre.config import ConfigError, EvaluateConfig
from tkre.train import cluster

INTERRUPTED = "interrupted; re-run the same command to resume"


@pytest.mark.parametrize("how", ["argument", "RAY_ADDRESS"])
def test_dead_address_is_one_line_at_once(how, monkeypatch):
    """A head that died without `ray stop`: no 30 s of retries, one line saying what to do."""
    import ray

    assert not ray.is_initialized()
    address = f"127.0.0.1:{cluster.free_port()}"  # nothing listens there
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if how == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        cluster.init_ray(address if how == "argument" else None)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "\n" not in message and message.startswith("ray_address:")
    assert address in message and "unset both" in message
    assert not ray.is_initialized()


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
    code = run_job(EvaluateConfig, main, ["--root", str(tmp_path / "run")])
    return code, capsys.readouterr().err


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
