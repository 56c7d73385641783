"""The service's FastAPI app in-process (no Ray cluster): every hostile input gets a 4xx whose
message names the field or the limit, never a 5xx. The same cases run over real HTTP in
tests/integration/test_serve.py.

Serve hands the routes their `self` through its replica context; here that context is a stand-in
holding an `ExtractorService` built on the tiny model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.tiny import make_tiny_encoder
from tests.unit.test_extract import LABELS, TEXT, item, make_model_root
from tkre.extract.deployment import ExtractorService, api

EXTRACT, RELATIONS = "/v1/extract", "/v1/relations"
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Hostile:
    """A request, the status it must get, and what its message must name."""

    name: str
    path: str
    body: Any  # bytes as they are; anything else as JSON (NaN and Infinity allowed)
    status: int
    names: tuple[str, ...]
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)

    def data(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def _extract(**item_fields) -> dict:
    return {"items": [item() | item_fields]}


def _register(**fields) -> dict:
    return {"name": "born_in", "description": "birthplace", "examples": [item()]} | fields


GOOD = json.dumps({"items": [item()]})
NAN, INF = float("nan"), float("inf")
HOSTILE = [
    # non-finite numbers, wherever they are
    Hostile("nan-top-k", EXTRACT, {"items": [item()], "top_k": NAN}, 422, ("'top_k'", "NaN")),
    Hostile("infinity-offset", EXTRACT, _extract(head={"start": INF, "end": 10}), 422,
            ("'items[0].head.start'", "Infinity")),
    Hostile("minus-infinity-offset", EXTRACT, _extract(tail={"start": 23, "end": -INF}), 422,
            ("'items[0].tail.end'",)),
    Hostile("1e999", EXTRACT, GOOD[:-1].encode() + b', "top_k": 1e999}', 422, ("'top_k'",)),
    Hostile("nan-unknown-field", EXTRACT, {"items": [item()], "junk": [1, {"x": NAN}]}, 422,
            ("'junk[1].x'",)),
    Hostile("nan-description", RELATIONS, _register(description=NAN), 422, ("'description'",)),
    Hostile("nan-example", RELATIONS, _register(examples=[item(tail=(NAN, 28))]), 422,
            ("'examples[0].tail.start'",)),
    # wrong JSON types
    Hostile("bool-offset", EXTRACT, _extract(head={"start": True, "end": 10}), 422,
            ("'items[0].head.start'",)),
    Hostile("string-offset", EXTRACT, _extract(head={"start": "0", "end": 10}), 422,
            ("'items[0].head.start'",)),
    Hostile("float-offset", EXTRACT, _extract(tail={"start": 23.0, "end": 28}), 422,
            ("'items[0].tail.start'",)),
    Hostile("bool-top-k", EXTRACT, {"items": [item()], "top_k": True}, 422, ("'top_k'",)),
    Hostile("string-top-k", EXTRACT, {"items": [item()], "top_k": "3"}, 422, ("'top_k'",)),
    Hostile("items-object", EXTRACT, {"items": {"0": item()}}, 422, ("'items'",)),
    Hostile("entities-object", EXTRACT, {"items": [{"text": TEXT, "entities": {
        "a": {"start": 0, "end": 10}}}]}, 422, ("'items[0].entities'",)),
    Hostile("tokens-string", EXTRACT, {"items": [{"tokens": "John Smith", "head": {
        "start": 0, "end": 1}, "tail": {"start": 1, "end": 2}}]}, 422, ("'items[0].tokens'",)),
    Hostile("nested-junk", EXTRACT, {"items": [[[[[{"a": [None, {}]}]]]]]}, 422,
            ("'items[0]'",)),
    Hostile("examples-object", RELATIONS, _register(examples={"0": item()}), 422,
            ("'examples'",)),
    Hostile("example-bool-offset", RELATIONS, _register(examples=[item(head=(False, 10))]),
            422, ("'examples[0].head.start'",)),
    Hostile("description-number", RELATIONS, _register(description=7), 422,
            ("'description'",)),
    Hostile("name-number", RELATIONS, _register(name=7), 422, ("'name'",)),
    # bodies that are not JSON, or not UTF-8, or not an object
    Hostile("not-json", EXTRACT, b"{not json", 422, ("'body'", "not valid JSON")),
    Hostile("empty", EXTRACT, b"", 422, ("'body'",)),
    Hostile("empty-registration", RELATIONS, b"", 422, ("'body'",)),
    Hostile("array", EXTRACT, b"[1, 2]", 422, ("'body'",)),
    Hostile("invalid-utf8", EXTRACT, b'{"items": [{"text": "\xff\xfe"}]}', 422,
            ("'body'", "UTF-8")),
    Hostile("invalid-utf8-registration", RELATIONS, b'{"name": "\xc3("}', 422, ("'body'",)),
    Hostile("lone-surrogate", EXTRACT, _extract(text="\ud800" + TEXT[1:]), 422,
            ("'items[0].text'", "surrogate")),
    Hostile("deep-nesting", EXTRACT, b"[" * 100_000, 422, ("'body'", "nested")),
    Hostile("huge-integer", EXTRACT, GOOD[:-1].encode() + b', "top_k": ' + b"9" * 5000 + b"}",
            422, ("'body'",)),
    Hostile("text-plain-bytes", EXTRACT, b"\xff\xfe\x00junk", 422, ("'body'",),
            headers=(("Content-Type", "text/plain"),)),
    Hostile("no-content-type", EXTRACT, GOOD.encode(), 422, ("'body'",), headers=()),
    # sizes past a limit
    Hostile("body-too-large", EXTRACT, b" " * (1 << 20) + GOOD.encode(), 413,
            ("'body'", "max_body_bytes", "1048576")),
    Hostile("registration-too-large", RELATIONS,
            _register(description="x" * (1 << 20)), 413, ("max_body_bytes",)),
    Hostile("too-many-items", EXTRACT, {"items": [item()] * 65}, 422,
            ("'items'", "max_items", "64")),
    Hostile("text-too-long", EXTRACT, _extract(text=TEXT + " x" * 2500), 422,
            ("'items[0].text'", "max_text_chars", "5000")),
    Hostile("too-many-entities", EXTRACT, {"items": [{"text": "a " * 17, "entities": [
        {"start": 2 * i, "end": 2 * i + 1} for i in range(17)]}]}, 422,
            ("'items[0].entities'", "max_entities")),
    Hostile("top-k-too-large", EXTRACT, {"items": [item()], "top_k": 11}, 422,
            ("'top_k'", "max_top_k", "10")),
    Hostile("huge-description", RELATIONS, _register(description="d" * 2001), 422,
            ("'description'", "max_description_chars", "2000")),
    Hostile("too-many-examples", RELATIONS, _register(examples=[item()] * 65), 422,
            ("'examples'", "max_examples", "64")),
    Hostile("example-too-long", RELATIONS, _register(examples=[item(text=TEXT + " x" * 1000)]),
            422, ("'examples[0].text'", "max_example_chars", "2000")),
    # raw text
    Hostile("items-and-text", EXTRACT, {"items": [item()], "text": TEXT}, 422,
            ("'body'", "exactly one of items, text or documents")),
    Hostile("no-input", EXTRACT, {"top_k": 3}, 422, ("'body'", "exactly one")),
    Hostile("entities-without-text", EXTRACT, {"documents": [TEXT], "entities": [
        {"start": 0, "end": 4}]}, 422, ("'entities'",)),
    Hostile("thresholds-with-items", EXTRACT, {"items": [item()], "thresholds": {"*": 0.5}},
            422, ("'thresholds'",)),
    Hostile("unknown-threshold", EXTRACT, {"text": TEXT, "thresholds": {"born": 0.5}}, 422,
            ("'thresholds.born'", "not a relation")),
    Hostile("threshold-above-one", EXTRACT, {"text": TEXT, "thresholds": {"*": 2}}, 422,
            ("'thresholds.*'", "between 0 and 1")),
    Hostile("threshold-string", EXTRACT, {"text": TEXT, "thresholds": {"*": "0.5"}}, 422,
            ("'thresholds.*",)),
    Hostile("nan-threshold", EXTRACT, {"text": TEXT, "thresholds": {"*": NAN}}, 422,
            ("'thresholds.*'", "NaN")),
    Hostile("text-number", EXTRACT, {"text": 7}, 422, ("'text'",)),
    Hostile("document-number", EXTRACT, {"documents": [TEXT, 3]}, 422, ("'documents[1]",)),
    Hostile("text-entity-outside", EXTRACT, {"text": TEXT, "entities": [{"start": 5,
                                                                         "end": 99}]},
            422, ("'entities[0].start'", "inside the text")),
    Hostile("document-entity-outside", EXTRACT, {"documents": [{"text": TEXT, "entities": [
        {"start": 0, "end": 99}]}]}, 422, ("'documents[0].entities[0].start'",)),
    Hostile("document-junk-field", EXTRACT, {"documents": [{"text": TEXT, "junk": 1}]}, 422,
            ("'documents[0]",)),
    Hostile("too-many-documents", EXTRACT, {"documents": ["a"] * 65}, 413,
            ("'documents'", "max_documents", "64")),
    # relation names that are no file name
    Hostile("name-slash", RELATIONS, _register(name="a/b"), 422, ("'name'",)),
    Hostile("name-traversal", RELATIONS, _register(name="../../etc/x"), 422, ("'name'",)),
    Hostile("name-newline", RELATIONS, _register(name="abc\n"), 422, ("'name'",)),
    Hostile("name-nul", RELATIONS, _register(name="a\u0000b"), 422, ("'name'",)),
    Hostile("name-too-long", RELATIONS, _register(name="a" * 65), 422, ("'name'",)),
    Hostile("delete-nul", RELATIONS + "/a%00b", None, 422, ("'name'",), method="DELETE"),
    Hostile("delete-space", RELATIONS + "/a%20b", None, 422, ("'name'",), method="DELETE"),
    Hostile("delete-dash", RELATIONS + "/-x", None, 422, ("'name'",), method="DELETE"),
    Hostile("delete-too-long", RELATIONS + "/" + "a" * 65, None, 422, ("'name'",),
            method="DELETE"),
]
GET_ROUTES = ["/v1/relations", "/v1/model", "/healthz"]


def check_answer(case: Hostile, status: int, text: str) -> None:
    """The status the case must get, and a message naming its field and limit."""
    assert status == case.status, (case.name, status, text)
    detail = json.loads(text)["detail"]
    assert isinstance(detail, list) and detail and all(
        isinstance(e["msg"], str) for e in detail), text
    for name in case.names:
        assert name in text, (case.name, name, text)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """The app on a tiny model; at most 2 registered relations."""
    import ray.serve

    root = make_model_root(tmp_path_factory.mktemp("root"),
                           make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder")))
    context = SimpleNamespace(replica_id=SimpleNamespace(unique_id="replica-0"),
                              servable_object=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray.serve, "get_replica_context", lambda: context)
        context.servable_object = ExtractorService({
            "root": str(root), "batching": False, "limits": {"max_relations": 2}})
        with TestClient(api, raise_server_exceptions=False) as test_client:
            yield test_client


@pytest.mark.parametrize("case", HOSTILE, ids=[case.name for case in HOSTILE])
def test_hostile_input_is_a_4xx_naming_the_field(client: TestClient, case: Hostile):
    answer = client.request(case.method, case.path, headers=dict(case.headers),
                            content=None if case.body is None else case.data())
    check_answer(case, answer.status_code, answer.text)


def test_a_streamed_body_is_cut_at_the_limit(client: TestClient):
    """Without Content-Length the body is counted as it arrives."""
    def chunks():
        for _ in range(20):
            yield b" " * 65536
        yield GOOD.encode()

    answer = client.post(EXTRACT, content=chunks(), headers=JSON)
    assert answer.status_code == 413 and "max_body_bytes" in answer.text, answer.text


def test_read_routes_ignore_a_body(client: TestClient):
    for path in GET_ROUTES:
        answer = client.request("GET", path, content=b"\xff" + b"[" * 100_000, headers=JSON)
        assert answer.status_code == 200, (path, answer.text)


def test_good_requests_and_the_relation_limit(client: TestClient):
    answer = client.post(EXTRACT, content=GOOD, headers=JSON)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["relation"] in LABELS
    for name in ("born_in", "died_in"):
        created = client.post(RELATIONS, json=_register(name=name))
        assert created.status_code == 201, created.text
    third = client.post(RELATIONS, json=_register(name="lives_in"))
    assert third.status_code == 422 and "max_relations" in third.text, third.text
    again = client.post(RELATIONS, json=_register(name="born_in", description="replaced"))
    assert again.status_code == 201 and again.json()["description"] == "replaced", again.text
    listed = {r["name"]: r for r in client.get(RELATIONS).json()["relations"]}
    assert "margin_threshold" in listed["born_in"]  # the gate's threshold is shown
    assert client.delete(RELATIONS + "/died_in").status_code == 200
    assert client.post(RELATIONS, json=_register(name="lives_in")).status_code == 201
    assert client.delete(RELATIONS + "/lives_in").status_code == 200
    assert client.delete(RELATIONS + "/lives_in").status_code == 404
    assert client.delete(RELATIONS + "/no_relation").status_code == 409
    assert client.delete(RELATIONS + "/born_in").status_code == 200
    limits = client.get("/v1/model").json()["limits"]
    assert limits["max_relations"] == 2 and limits["max_body_bytes"] == 1 << 20


def test_config_and_readme_list_every_limit():
    """serve/config.yaml sets every limit (at its default) and the README names each."""
    from dataclasses import asdict

    import yaml

    from tests.conftest import REPO
    from tkre.extract.wire import DEFAULT_LIMITS

    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    assert config["applications"][0]["args"]["limits"] == asdict(DEFAULT_LIMITS)
    readme = (REPO / "README.md").read_text()
    assert [key for key in asdict(DEFAULT_LIMITS) if f"`{key}`" not in readme] == []


# --- raw text -----------------------------------------------------------------------------

STORY = ("Amara Nwosu practices medicine in Nigeria, where she has lived since 1998. "
         "Felix Drummond was turned down by Halvard College.")


@pytest.fixture
def service(client: TestClient):
    """The client's service, its no-relation logit pushed down (every pair gets a relation)
    for the test and restored after."""
    import ray.serve
    import torch

    served = ray.serve.get_replica_context().servable_object
    bias = served.extractor.model.head[-1].bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias[LABELS.index("no_relation")] = -30.0
    yield served
    with torch.no_grad():
        bias.copy_(saved)


def test_text_and_documents_answer_the_python_triples(client: TestClient, service):
    expected = service.extractor.extract_text(STORY)
    assert expected
    answer = client.post(EXTRACT, json={"text": STORY})
    assert answer.status_code == 200, answer.text
    assert answer.json()["skipped_pairs"] == 0
    assert_same_triples(answer.json()["triples"], expected)
    given = {"text": TEXT, "entities": [{"start": 0, "end": 10, "type": "person"},
                                        {"start": 23, "end": 28}]}
    answer = client.post(EXTRACT, json={"documents": [STORY, given, ""],
                                        "thresholds": {"*": 0.0, LABELS[1]: 1.0}})
    assert answer.status_code == 200, answer.text
    first, second, empty = answer.json()["documents"]
    assert_same_triples(first["triples"], service.extractor.extract_text(
        STORY, {"*": 0.0, LABELS[1]: 1.0}))
    assert {(t["head"]["text"], t["tail"]["text"]) for t in second["triples"]} <= {
        ("John Smith", "Paris"), ("Paris", "John Smith")}
    assert all(t["relation"] != LABELS[1] for t in first["triples"] + second["triples"])
    assert empty == {"triples": [], "skipped_pairs": 0}


def assert_same_triples(got: list[dict], expected: list[dict]) -> None:
    """Equal but for float noise in the scores (the batches are padded differently)."""
    assert [{**t, "score": 0} for t in got] == [{**t, "score": 0} for t in expected]
    assert [t["score"] for t in got] == pytest.approx([t["score"] for t in expected], abs=1e-5)


def test_text_past_a_limit_is_413_naming_it(client: TestClient, service, monkeypatch):
    from tkre.extract.wire import RequestLimits

    monkeypatch.setattr(service, "limits", RequestLimits(max_documents=1,
                                                         max_document_chars=100,
                                                         max_text_pairs=3))
    for body, names in [
            ({"documents": ["a", "b"]}, ("'documents'", "max_documents", "1")),
            ({"text": STORY}, ("'text'", "has 125 characters", "max_document_chars", "100")),
            ({"documents": [STORY[:74]]}, ("'documents'", "candidate pairs", "max_text_pairs"))]:
        answer = client.post(EXTRACT, json=body)
        assert answer.status_code == 413, answer.text
        for name in names:
            assert name in answer.text, (name, answer.text)
