"""The extractor service over real HTTP on 127.0.0.1: a Serve instance started here, tiny model.

Deployments are reconfigured between tests only when a test needs other options, so the
module runs a handful of deploys; serve.shutdown() at the end stops everything it started.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.tiny import make_tiny_encoder
from tests.unit.test_extract import LABELS, TEXT, item, make_model_root
from tests.unit.test_serve_app import HOSTILE, check_answer
from tkre.extract.deployment import REPLICA_HEADER, AppArgs, ExtractorDeployment

pytestmark = pytest.mark.integration
CPU = {"num_cpus": 0.25}  # replicas fit beside other actors in the 4-CPU test cluster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    encoder = make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))
    return make_model_root(tmp_path_factory.mktemp("serve-root"), encoder)


class Service:
    """One Serve instance; `deploy` (re)deploys the app only when the wanted setup changes."""

    def __init__(self, url: str, root: Path):
        self.url, self.root, self.current = url, root, None

    def deploy(self, options: dict | None = None, **args) -> str:
        from ray import serve

        options = {"ray_actor_options": CPU, **(options or {})}
        wanted = json.dumps([options, args], sort_keys=True)
        if wanted != self.current:
            app = ExtractorDeployment.options(**options).bind(
                AppArgs(root=str(self.root), **args).model_dump())
            serve.run(app, name="extractor", route_prefix="/")
            self.current = wanted
        return self.url

    def post(self, path: str, body, **kwargs) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def service(ray_cluster, model_root):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield Service(f"http://127.0.0.1:{port}", model_root)
    finally:
        serve.shutdown()


def test_extract_round_trip_and_read_routes(service: Service):
    url = service.deploy()
    answer = service.post("/v1/extract", {"items": [item(), {"text": TEXT, "entities": [
        {"start": 0, "end": 10, "type": "person"}, {"start": 23, "end": 28}]}], "top_k": 2})
    assert answer.status_code == 200, answer.text
    single, pairs = answer.json()["results"]
    assert single["relation"] in LABELS and 0 < single["score"] <= 1
    assert [r["relation"] for r in single["top_k"]][0] == single["relation"]
    assert len(single["top_k"]) == 2 and "pairs" not in single
    assert [(p["head"], p["tail"]) for p in pairs["pairs"]] == [(0, 1), (1, 0)]
    model = requests.get(f"{url}/v1/model", timeout=10).json()
    assert model["labels"] == LABELS and model["serving"]["batching"] is True
    assert model["limits"]["max_items"] == 64
    relations = requests.get(f"{url}/v1/relations", timeout=10).json()["relations"]
    assert [r["name"] for r in relations] == LABELS
    assert requests.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
    schema = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert {"/v1/extract", "/v1/relations", "/v1/relations/{name}", "/v1/model",
            "/healthz"} <= set(schema["paths"])


BAD_REQUESTS = [  # (body, status, field the message must name)
    ("{not json", 422, "body"),
    ([1, 2], 422, "body"),
    ({"items": [item(tail=(23, 99))]}, 422, "items[0].tail"),
    ({"items": [item(head=(-1, 4))]}, 422, "items[0].head.start"),
    ({"items": [item(head=(1, 10))]}, 422, "items[0].head"),
    ({"items": [item(text="", head=(0, 1), tail=(1, 2))]}, 422, "items[0].text"),
    ({"items": [item(tail=(0, 10))]}, 422, "items[0].tail.start"),
    ({"items": [item(tail=(5, 28))]}, 422, "items[0].tail.start"),
    ({"items": [item(text="word " * 1001, head=(0, 4), tail=(5, 9))]}, 422, "items[0].text"),
    ({"items": [item()] * 65}, 422, "items"),
    ({"items": []}, 422, "items"),
    ({"items": [item()], "top_k": 0}, 422, "top_k"),
    ({"items": [item()], "top_k": 11}, 422, "top_k"),
    ({"items": [{"text": TEXT, "head": {"start": 0, "end": 10}}]}, 422, "items[0].tail"),
    ({"items": [item(color="red")]}, 422, "color"),
    ({"items": [{"text": TEXT, "entities": [{"start": 0, "end": 10},
                                            {"start": 5, "end": 10}]}]}, 422,
     "items[0].entities[1]"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_REQUESTS,
                         ids=[f"case{i}" for i in range(len(BAD_REQUESTS))])
def test_bad_input_is_a_4xx_naming_the_field(service: Service, body, status, field):
    url = service.deploy()
    data = body if isinstance(body, str) else json.dumps(body)
    answer = requests.post(f"{url}/v1/extract", data=data, timeout=30,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert field in json.dumps(detail) or field in _dotted(detail), detail


def _dotted(detail) -> str:
    """FastAPI's loc lists as dotted names: ['body', 'items', 0, 'tail'] -> items[0].tail."""
    out = []
    for error in detail if isinstance(detail, list) else []:
        parts = [p for p in error.get("loc", []) if p != "body"]
        out.append("".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)[1:])
    return " ".join(out)


def test_hostile_input_over_http_is_a_4xx_naming_the_field(service: Service):
    """The in-process cases of tests/unit/test_serve_app.py through Serve's proxy: NaN, wrong
    types, non-JSON and oversized bodies, names no file may have."""
    url = service.deploy()
    for case in HOSTILE:
        answer = requests.request(case.method, url + case.path, headers=dict(case.headers),
                                  data=None if case.body is None else case.data(), timeout=30)
        check_answer(case, answer.status_code, answer.text)
    assert service.post("/v1/extract", {"items": [item()]}).status_code == 200


def test_replica_survives_bad_input(service: Service):
    url = service.deploy()
    for body, *_ in BAD_REQUESTS:
        requests.post(f"{url}/v1/extract", data=body if isinstance(body, str) else
                      json.dumps(body), timeout=30)
    assert service.post("/v1/extract", {"items": [item()]}).status_code == 200


# --- property-based fuzzing of the OpenAPI schema -------------------------------------------

# schemathesis' own pytest plugin (from_fixture) does not run under pytest 9, so each
# operation's hypothesis strategy is driven here directly.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_never_get_a_5xx(service: Service, mode):
    url = service.deploy()
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    seen: list[int] = []

    @given(data=st.data())
    @settings(max_examples=120, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(data):
        operation = data.draw(st.sampled_from(operations))
        case = data.draw(operation.as_strategy(generation_mode=mode))
        response = case.call(base_url=url, timeout=30)
        seen.append(response.status_code)
        assert response.status_code < 500, (case.as_curl_command(), response.text)

    fuzz()
    assert any(400 <= code < 500 for code in seen)


def test_service_healthy_after_fuzzing(service: Service):
    url = service.deploy()
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    assert service.post("/v1/extract", {"items": [item()]}).status_code == 200


# --- batching, overload, API key, replicas --------------------------------------------------

def test_batching_groups_concurrent_requests(service: Service):
    url = service.deploy(max_batch_size=16, batch_wait_timeout_s=0.5)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: service.post("/v1/extract", {"items": [item()]}),
                                range(8)))
    assert all(a.status_code == 200 for a in answers)
    stats = requests.get(f"{url}/v1/model", timeout=10).json()["serving"]
    assert stats["batched_pairs"] == 8 and stats["largest_batch"] >= 4, stats
    assert stats["batches"] < 8  # grouped: fewer forward passes than requests


def test_overload_gets_503_not_a_hang(service: Service):
    # each request waits 1 s for a batch to fill; one in flight and one queued at most
    service.deploy(options={"max_ongoing_requests": 1, "max_queued_requests": 1},
                   max_batch_size=64, batch_wait_timeout_s=1.0)
    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: service.post("/v1/extract",
                                                     {"items": [item()]}).status_code,
                              range(12)))
    assert set(codes) == {200, 503} and codes.count(503) >= 6, codes
    assert time.monotonic() - started < 20
    assert service.post("/v1/extract", {"items": [item()]}).status_code == 200


def test_api_key_when_set(service: Service):
    options = {"ray_actor_options": {**CPU, "runtime_env": {"env_vars": {
        "TKRE_API_KEY": "s3cret"}}}}
    url = service.deploy(options=options)
    body = {"items": [item()]}
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    for path in ("/v1/model", "/v1/relations", "/openapi.json"):
        assert requests.get(url + path, timeout=10).status_code == 401, path
    assert service.post("/v1/extract", body).status_code == 401
    assert service.post("/v1/extract", body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert service.post("/v1/extract", body, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert service.post("/v1/extract", body, headers={
        "Authorization": "Bearer s3cret"}).status_code == 200
    assert requests.delete(f"{url}/v1/relations/x", timeout=10).status_code == 401
    # and off again: no key needed
    url = service.deploy()
    assert service.post("/v1/extract", body).status_code == 200


def test_registration_is_used_by_every_replica(service: Service, tmp_path: Path):
    url = service.deploy(options={"num_replicas": 2}, registry_refresh_s=0.1)
    example = item(text="Mary Jones was born in Rome .", head=(0, 10), tail=(23, 27))
    created = service.post("/v1/relations", {"name": "born_in", "description": "birthplace",
                                             "examples": [item(), example]})
    assert created.status_code == 201, created.text
    assert created.json()["examples"] == 2
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (len(seen) < 2 or set(seen.values()) != {"born_in"}):
        answer = service.post("/v1/extract", {"items": [item()]})
        seen[answer.headers[REPLICA_HEADER]] = answer.json()["results"][0]["relation"]
    assert len(seen) == 2 and set(seen.values()) == {"born_in"}, seen
    names = [r["name"] for r in requests.get(f"{url}/v1/relations", timeout=10).json()[
        "relations"]]
    assert names == [*LABELS, "born_in"]
    bad = service.post("/v1/relations", {"name": "no_relation", "examples": [item()]})
    assert bad.status_code == 422 and "name" in bad.text
    assert requests.delete(f"{url}/v1/relations/no_relation", timeout=10).status_code == 409
    assert requests.delete(f"{url}/v1/relations/born_in", timeout=10).status_code == 200
    assert requests.delete(f"{url}/v1/relations/born_in", timeout=10).status_code == 404
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and seen and set(seen.values()) != set():
        answer = service.post("/v1/extract", {"items": [item()]})
        if answer.json()["results"][0]["relation"] in LABELS:
            seen.pop(answer.headers[REPLICA_HEADER], None)
    assert not seen, f"replicas still predicting the deleted relation: {seen}"


def test_readme_curl_commands(service: Service):
    """Every curl command of the README's serving section, against this instance."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    commands = re.findall(r"^curl -s 127\.0\.0\.1:8000(\S+) .*? -d '(.*)'$", readme, flags=re.M)
    assert [path for path, _ in commands] == ["/v1/extract", "/v1/extract", "/v1/relations"]
    service.deploy()
    for path, body in commands:
        answer = service.post(path, json.loads(body))
        assert answer.ok, (path, answer.status_code, answer.text)
    registered = json.loads(commands[-1][1])["name"]
    assert registered in [r["name"] for r in requests.get(
        service.url + "/v1/relations", timeout=30).json()["relations"]]
    assert requests.delete(f"{service.url}/v1/relations/{registered}", timeout=30).ok
