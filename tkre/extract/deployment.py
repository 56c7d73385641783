"""The extractor as a Ray Serve deployment with a FastAPI ingress (`serve/app.py` exposes it).

A request goes route -> `Extractor.prepare` (parse, check, encode) -> the `@serve.batch`
method -> `Extractor.predict` (one forward pass for the pairs of concurrent requests) ->
`Extractor.results`; the deployment adds HTTP, batching and counters, nothing of extraction.

POST /v1/extract takes `items` (given entity pairs: a relation ranking each), or raw text,
`text` or `documents` (spaCy's candidates, or the caller's `entities`: triples with character
offsets, `Extractor.prepare_texts` -> the same batch -> `Extractor.text_results`; spaCy runs in
a worker thread and is loaded when the replica starts).

Routes: POST /v1/extract, GET|POST /v1/relations, DELETE /v1/relations/{name}, GET /v1/model,
GET /healthz; the OpenAPI schema at /openapi.json, its UI at /docs.

- Batching: each entity pair of each request goes through one `@serve.batch` method, so pairs
  of concurrent requests share a forward pass (up to `max_batch_size`, waiting at most
  `batch_wait_timeout_s` to fill a batch). The forward pass runs in a worker thread, so the
  replica's event loop keeps accepting requests and answering health checks meanwhile.
- Load bounds: `max_ongoing_requests` per replica and `max_queued_requests` per caller (the
  deployment options, set in serve/config.yaml): past them the proxy answers 503 at once.
- Input safety: every request is parsed and checked (`Extractor.prepare`) before it
  joins a batch; a bad one gets 422 with the field named ("items[1].head") and never reaches the
  model, so it cannot fail other requests' batch or the replica. A body is read at most
  `limits.max_body_bytes` far (413 past it) and must be UTF-8 JSON with finite numbers only
  (`wire.load_json`); integers are strict (no booleans, numeric strings or 2.0); every other size
  a request controls has a limit (`wire.RequestLimits`, `args.limits` in the config) whose
  name and value the 422 gives (413 for the raw-text limits: nothing is truncated).
- API key: when $TKRE_API_KEY is set in the replica's environment, every route but /healthz
  needs `X-API-Key: <key>` or `Authorization: Bearer <key>`, else 401.
- Retries: /v1/extract is idempotent, so clients may retry 503 and 5xx with backoff.
- `batching=False` (benchmarks only) runs one model call per request, as OpenNRE's `infer`
  does, for comparison.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import asdict
from importlib.util import find_spec
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt
from ray import serve

from tkre.extract.candidates import CandidateConfig
from tkre.extract.extractor import Extractor, TrainedLabelError
from tkre.extract.wire import (
    Prediction,
    RequestLimits,
    TooLarge,
    limits_from,
    load_json,
    over_limit,
)
from tkre.finetune.markers import Encoded
from tkre.resources import ResourceError
from tkre.schema import DataError

ROOT_ENV = "TKRE_ROOT"
API_KEY_ENV = "TKRE_API_KEY"
OPEN_PATHS = {"/healthz"}
REPLICA_HEADER = "X-Tkre-Replica"
MAX_ERRORS = 20  # validation errors listed in one 422
log = logging.getLogger(__name__)


# --- the wire format -----------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Entity(_Strict):
    start: StrictInt = Field(description="first character (text) or token (tokens) of the "
                                         "mention")
    end: StrictInt = Field(description="one past the last character or token (end exclusive)")
    type: str | None = Field(None, description="entity type, e.g. person; optional")


class Item(_Strict):
    """Raw text with character offsets, or tokens with token spans; head and tail, or a list
    of entities (every ordered pair is scored)."""

    text: str | None = None
    tokens: list[str] | None = None
    head: Entity | None = None
    tail: Entity | None = None
    entities: list[Entity] | None = None


class TextDocument(_Strict):
    """A raw text; its candidate entities are spaCy's unless `entities` gives them."""

    text: str
    entities: list[Entity] | None = Field(None, description="character offsets, end exclusive")


class ExtractRequest(_Strict):
    """Exactly one of `items` (given entity pairs), `text` or `documents` (raw text: every
    candidate pair of every sentence, triples back)."""

    items: list[Item] | None = None
    top_k: StrictInt = Field(3, description="ranked relations returned per pair (items)")
    text: str | None = Field(None, description="one raw text")
    entities: list[Entity] | None = Field(None, description="the entities of `text` (default: "
                                                            "spaCy's entities and noun chunks)")
    documents: list[str | TextDocument] | None = Field(None, description="raw texts")
    thresholds: dict[str, StrictFloat | StrictInt] | None = Field(
        None, description="raw text: the score a relation needs, per relation ('*': the "
                          "others); default: the threshold fitted on the dev set")


class Scored(BaseModel):
    relation: str
    score: float


class PairResult(Scored):
    head: int
    tail: int
    top_k: list[Scored]


class Result(BaseModel):
    relation: str | None = None
    score: float | None = None
    top_k: list[Scored] | None = None
    pairs: list[PairResult] | None = None


class Argument(BaseModel):
    text: str
    start: int = Field(description="first character in the text")
    end: int = Field(description="one past the last character (end exclusive)")
    type: str | None


class Triple(BaseModel):
    head: Argument
    tail: Argument
    relation: str
    score: float
    sentence: int = Field(description="index of the sentence in its text, from 0")


class DocumentResult(BaseModel):
    triples: list[Triple]
    skipped_pairs: int = Field(description="candidate pairs too far apart for the model")


class ExtractResponse(BaseModel):
    results: list[Result] | None = Field(None, description="items: one per item")
    triples: list[Triple] | None = Field(None, description="text: its triples")
    skipped_pairs: int | None = None
    documents: list[DocumentResult] | None = Field(None, description="documents: one each")


class RelationRequest(_Strict):
    name: str
    description: str = ""
    examples: list[Item] = Field(description="items with head and tail that express it")


class RelationInfo(BaseModel):
    name: str
    kind: Literal["trained", "registered"]
    description: str
    examples: int | None
    no_relation: bool
    margin_threshold: float | None = Field(
        None, description="registered relations: how much closer a query must be to this "
                          "relation's examples than to any trained label's reference sentence")


class RelationList(BaseModel):
    relations: list[RelationInfo]


class AppArgs(_Strict):
    """The application's arguments (`args:` in serve/config.yaml)."""

    root: str | None = Field(None, description=f"run root; default: ${ROOT_ENV}")
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    registry_refresh_s: float = Field(1.0, ge=0)
    batching: bool = True
    device: str | None = None
    limits: dict[str, int] = Field(default_factory=dict)
    candidates: dict[str, Any] = Field(
        default_factory=dict, description="raw text: CandidateConfig fields (nominals, window, "
                                          "block_chars, batch_size)")


class CheckedRequest(Request):
    """A request whose body is read at most `limits.max_body_bytes` far (413 past it, without
    reading the rest) and whose JSON is read by `wire.load_json` (422 naming the field of a
    NaN)."""

    def __init__(self, request: Request, limits: RequestLimits):
        super().__init__(request.scope, request.receive)
        self.limits = limits

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            limit = self.limits.max_body_bytes
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise self._too_large(f"has {declared} bytes")
            chunks, size = [], 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > limit:
                    raise self._too_large(f"has more than {limit} bytes")
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            with _client_errors():
                self._json = load_json(await self.body())
        return self._json

    def _too_large(self, what: str) -> HTTPException:
        return _http_error(over_limit("body", what, "max_body_bytes", self.limits), 413)


class CheckedRoute(APIRoute):
    """A route that reads its body through CheckedRequest, under its replica's limits
    (the route class of `api`, so every route is one)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            # the replica's own object: how Serve hands `self` to the routes too
            limits: RequestLimits = serve.get_replica_context().servable_object.limits
            return await handler(CheckedRequest(request, limits))

        return checked


api = FastAPI(title="tkre relation extractor", version="1",
              description="Few-shot relation extraction; relations can be added from examples "
                          "at run time (POST /v1/relations).")
api.router.route_class = CheckedRoute


@api.middleware("http")
async def require_api_key(request: Request, call_next):
    expected = os.environ.get(API_KEY_ENV)
    if expected and request.url.path not in OPEN_PATHS:
        bearer = request.headers.get("authorization", "")
        given = request.headers.get("x-api-key") or (
            bearer[7:] if bearer.lower().startswith("bearer ") else "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return JSONResponse({"detail": "missing or wrong API key: send X-API-Key or "
                                           "Authorization: Bearer"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
    return await call_next(request)


@api.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 with each message naming its field, and without the input echoed back
    (bytes that are not UTF-8 made that answer itself fail with a 500)."""
    errors = exc.errors()
    detail = [{"loc": list(e["loc"]), "msg": f"field '{_dotted(e['loc'])}': {e['msg']}",
               "type": e["type"]} for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        detail.append({"loc": ["body"], "msg": f"and {len(errors) - MAX_ERRORS} more errors",
                       "type": "value_error"})
    return JSONResponse({"detail": detail}, status_code=422)


def _dotted(loc: tuple | list) -> str:
    """FastAPI's loc as a field name: ('body', 'items', 0, 'tail') -> 'items[0].tail'."""
    parts = loc[1:] if loc and loc[0] in ("body", "path", "query", "header") else loc
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return name or str(loc[0] if loc else "body")


def _loc(field: str | None, source: str = "body") -> list[str | int]:
    """'items[2].head.start' -> ['body', 'items', 2, 'head', 'start'] (FastAPI's loc form);
    'body' -> ['body'], 'body[1]' -> ['body', 1]."""
    parts: list[str | int] = [source]
    field = field or ""
    if field == "body" or field.startswith("body["):  # the body itself, or its items
        field = field[len("body"):]
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field):
        parts.append(int(index) if index else name)
    return parts


def _http_error(err: DataError, status: int = 422, source: str = "body") -> HTTPException:
    return HTTPException(status, detail=[{"loc": _loc(err.field, source), "msg": str(err),
                                          "type": "value_error"}])


@contextmanager
def _client_errors(source: str = "body"):
    """A DataError becomes 422 in FastAPI's error form, its message naming the field of the
    body (or of the path)."""
    try:
        yield
    except DataError as err:
        raise _http_error(err, source=source) from None


def _check_form(body: ExtractRequest) -> None:
    """Exactly one of items, text, documents; entities with text; thresholds with raw text."""
    given = [name for name in ("items", "text", "documents") if getattr(body, name) is not None]
    if len(given) != 1:
        raise DataError("give exactly one of items, text or documents"
                        + (f", not {' and '.join(given)}" if given else ""), field="body")
    if body.entities is not None and body.text is None:
        raise DataError("goes with text (an item gives its own entities; a document too)",
                        field="entities")
    if body.thresholds is not None and body.items is not None:
        raise DataError("apply to text and documents only", field="thresholds")


# --- the deployment ------------------------------------------------------------------------

class ExtractorService:
    """The routes and one replica's state; `ExtractorDeployment` is this class as a Serve
    deployment (kept apart so that tests can run the FastAPI app in-process)."""

    def __init__(self, args: dict[str, Any] | None = None):
        cfg = AppArgs.model_validate(args or {})
        root = cfg.root or os.environ.get(ROOT_ENV)
        if not root:
            raise ValueError(f"no model root: set the app's `root` argument or ${ROOT_ENV}")
        self.extractor = Extractor.from_root(root, cfg.device, refresh_s=cfg.registry_refresh_s)
        self.extractor.candidate_config = CandidateConfig(**cfg.candidates)
        self.limits: RequestLimits = limits_from(cfg.limits)
        self.batching = cfg.batching
        self._predict_batch.set_max_batch_size(cfg.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.batch_settings = {"max_batch_size": cfg.max_batch_size,
                               "batch_wait_timeout_s": cfg.batch_wait_timeout_s}
        self.stats = {"requests": 0, "batches": 0, "batched_pairs": 0, "largest_batch": 0}
        self.replica = serve.get_replica_context().replica_id.unique_id
        if find_spec("spacy") is not None:  # raw text: load spaCy now, not on a request
            try:
                self.extractor.candidate_finder()
            except ResourceError as err:
                log.warning("raw-text requests will get 501: %s", err)

    # -- prediction

    def _predict(self, encoded: list[Encoded]) -> list[Prediction]:
        # every pair is ranked to the largest top_k; each request's results cut its own
        return self.extractor.predict(encoded, self.limits.max_top_k,
                                      batch_size=max(1, len(encoded)))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _predict_batch(self, encoded: list[Encoded]) -> list[Prediction]:
        self.stats["batches"] += 1
        self.stats["batched_pairs"] += len(encoded)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(encoded))
        return await asyncio.to_thread(self._predict, encoded)

    async def _predictions(self, encoded: list[Encoded]) -> list[Prediction]:
        if self.batching:
            return list(await asyncio.gather(*(self._predict_batch(e) for e in encoded)))
        return await asyncio.to_thread(self._predict, encoded)

    @api.post("/v1/extract", response_model=ExtractResponse, response_model_exclude_none=True)
    async def extract(self, body: ExtractRequest, response: Response) -> Any:
        """Items: the best relation, its score and the top k for each item (each pair of
        entities). Text or documents: the triples of every sentence (head, tail, relation,
        score, sentence; character offsets into the text)."""
        response.headers[REPLICA_HEADER] = self.replica
        self.stats["requests"] += 1
        with _client_errors():
            _check_form(body)
        if body.items is None:
            return await self._extract_texts(body)
        with _client_errors():
            parsed, encoded = self.extractor.prepare(
                [item.model_dump(exclude_none=True) for item in body.items], body.top_k,
                self.limits)
        predictions = await self._predictions(encoded)
        return {"results": self.extractor.results(parsed, predictions, body.top_k)}

    async def _extract_texts(self, body: ExtractRequest) -> JSONResponse:
        """Raw text: spaCy and the pairing in a worker thread, the pairs through the batch.
        The answer is built here (not by the response model) so that a null type stays."""
        with _client_errors():
            thresholds = self.extractor.check_thresholds(body.thresholds)
        if body.text is not None:
            where, texts = "text", [body.text]
            entities = [None if body.entities is None else
                        [e.model_dump() for e in body.entities]]
        else:
            where = "documents"
            texts = [d if isinstance(d, str) else d.text for d in body.documents or []]
            entities = [None if isinstance(d, str) or d.entities is None else
                        [e.model_dump() for e in d.entities] for d in body.documents or []]
        try:
            plan, encoded = await asyncio.to_thread(self.extractor.prepare_texts, texts,
                                                    entities, self.limits, where)
        except TooLarge as err:
            raise _http_error(err, 413) from None
        except DataError as err:
            raise _http_error(err) from None
        except ResourceError as err:
            raise HTTPException(501, detail=str(err)) from None
        found = self.extractor.text_results(plan, await self._predictions(encoded), thresholds)
        headers = {REPLICA_HEADER: self.replica}
        if body.text is not None:
            return JSONResponse({"triples": found[0], "skipped_pairs": plan.skipped[0]},
                                headers=headers)
        return JSONResponse({"documents": [{"triples": t, "skipped_pairs": n} for t, n in
                                           zip(found, plan.skipped, strict=True)]},
                            headers=headers)

    # -- run-time relations

    @api.get("/v1/relations", response_model=RelationList)
    async def relations(self) -> dict[str, Any]:
        """Trained labels and registered relations."""
        return {"relations": await asyncio.to_thread(self.extractor.relations)}

    @api.post("/v1/relations", response_model=RelationInfo, status_code=201)
    async def register(self, body: RelationRequest, response: Response) -> dict[str, Any]:
        """Add (or replace) a relation from examples; every replica uses it from then on."""
        response.headers[REPLICA_HEADER] = self.replica
        examples = [e.model_dump(exclude_none=True) for e in body.examples]
        with _client_errors():
            return await asyncio.to_thread(self.extractor.register, body.name, examples,
                                           body.description, self.limits)

    @api.delete("/v1/relations/{name}")
    async def unregister(self, name: str) -> dict[str, str]:
        """Remove a registered relation (trained labels cannot be removed)."""
        try:
            with _client_errors("path"):
                removed = await asyncio.to_thread(self.extractor.unregister, name)
        except TrainedLabelError as err:
            raise HTTPException(409, detail=str(err)) from None
        if not removed:
            raise HTTPException(404, detail=f"no registered relation {name!r}")
        return {"deleted": name}

    # -- model and health

    @api.get("/v1/model")
    async def model(self) -> dict[str, Any]:
        """The served model, the limits and this replica's batching counters."""
        return self.extractor.info() | {
            "limits": asdict(self.limits),
            "serving": {"replica": self.replica, "batching": self.batching,
                        **self.batch_settings, **self.stats}}

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok", "replica": self.replica}

    async def check_health(self) -> None:
        """Serve's health probe: the model must still answer a probe sentence sensibly."""
        await asyncio.to_thread(self.extractor.self_check)


ExtractorDeployment = serve.deployment(
    name="Extractor", max_ongoing_requests=32, max_queued_requests=128,
    health_check_period_s=10, health_check_timeout_s=30, ray_actor_options={"num_cpus": 1},
)(serve.ingress(api)(ExtractorService))


def app(args: dict[str, Any]) -> serve.Application:
    """Serve's application builder: `import_path: serve.app:app`, `args:` from the config
    (checked here, so a misspelt argument or limit fails the deploy, not the replicas)."""
    checked = AppArgs.model_validate(args)
    limits_from(checked.limits)
    CandidateConfig(**checked.candidates)
    return ExtractorDeployment.bind(checked.model_dump())
