"""serve/config.yaml and its GPU variant: valid for Serve, and `serve run` really serves."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

from tests.integration.conftest import RAY_SETTINGS, README_BLOCKS
from tests.integration.test_loopback import assert_loopback_only, listeners
from tests.integration.test_serve import free_port
from tests.tiny import make_tiny_encoder
from tests.unit.test_extract import item, make_model_root
from tkre.extract.deployment import AppArgs

REPO = Path(__file__).resolve().parents[2]
CONFIGS = [REPO / "serve" / "config.yaml", REPO / "serve" / "config-gpu.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_against_serves_schema(path: Path):
    raw = yaml.safe_load(path.read_text())
    (app,) = ServeDeploySchema.model_validate(raw).applications
    assert (app.name, app.route_prefix, app.import_path) == ("extractor", "/", "serve.app:app")
    (deployment,) = app.deployments
    assert deployment.name == "Extractor"
    assert deployment.autoscaling_config["min_replicas"] >= 1
    assert deployment.max_queued_requests > 0 and deployment.max_ongoing_requests > 0
    assert raw["http_options"]["port"] == 8000
    AppArgs.model_validate(app.args)  # the builder accepts the args
    # Serve's schema lets unknown keys through; a misspelt option would be silently ignored
    (raw_app,) = raw["applications"]
    assert set(raw_app) <= set(ServeApplicationSchema.model_fields)
    assert set(raw_app["deployments"][0]) <= set(DeploymentSchema.model_fields)
    gpus = deployment.ray_actor_options.num_gpus or 0
    assert (gpus >= 1) == (path.name == "config-gpu.yaml")


def readme_serve_run_env() -> dict[str, str]:
    """The variables the README's `serve run` line sets (TKRE_ROOT left to the test)."""
    [line] = [line for block in README_BLOCKS for line in block.splitlines()
              if "serve run serve/config.yaml" in line]
    words = shlex.split(line)
    assert words[words.index("serve"):] == ["serve", "run", "serve/config.yaml"]
    settings = dict(word.split("=", 1) for word in words[:words.index("serve")])
    assert settings.pop("TKRE_ROOT") == "runs/demo"
    return settings


@pytest.mark.integration
def test_serve_run_config_serves_healthz(tmp_path: Path):
    """`serve run serve/config.yaml` as the README runs it, on a free port, model root from
    TKRE_ROOT: it serves, listens on loopback only (but for Ray's known exceptions) with token
    authentication on, and Ctrl-C stops it within seconds."""
    root = make_model_root(tmp_path / "root", make_tiny_encoder(tmp_path / "encoder"))
    config = yaml.safe_load(CONFIGS[0].read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["deployments"][0]["ray_actor_options"]["num_cpus"] = 0.5
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # none of the suite's Ray settings, the README's, a home of its own for Ray's token file;
    # RAY_ADDRESS=local: a cluster of its own, never one another process started
    (tmp_path / "home").mkdir()
    env = {**{k: v for k, v in os.environ.items() if k not in RAY_SETTINGS},
           **readme_serve_run_env(), "TKRE_ROOT": str(root), "RAY_ADDRESS": "local",
           "HOME": str(tmp_path / "home")}
    serve_cli = Path(sys.executable).with_name("serve")
    log = (tmp_path / "serve-run.log").open("w")
    process = subprocess.Popen([str(serve_cli), "run", str(config_path)], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, answer = time.monotonic() + 90, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = requests.get(f"{url}/healthz", timeout=2)
                if answer.status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # still starting
                pass
            time.sleep(0.5)
        assert answer is not None and answer.status_code == 200, (
            "serve run never got healthy:\n" + (tmp_path / "serve-run.log").read_text()[-3000:])
        extracted = requests.post(f"{url}/v1/extract", json={"items": [item()]}, timeout=30)
        assert extracted.status_code == 200, extracted.text
        assert_loopback_only(listeners(process.pid))
        assert (tmp_path / "home" / ".ray" / "auth_token").exists()  # token auth was on
    finally:
        stopping = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: serve run tears the app and cluster down
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    assert time.monotonic() - stopping < 20, "serve run took long to stop on Ctrl-C"
