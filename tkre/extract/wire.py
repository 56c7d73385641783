"""The wire format of an extraction request: items in, checked against the request limits, and
results out.

An item is raw text with character offsets (end exclusive) or tokens with token spans, and a
head and a tail, or a list of `entities` that yields every ordered pair:

    {"text": "Ada Lovelace was born in London .",
     "head": {"start": 0, "end": 12, "type": "person"}, "tail": {"start": 25, "end": 31}}

The text and the entities are read by `tkre.data.readers.record_words` / `record_span`, the
reader JSONL files go through too, so a sentence means the same in a file and in a request.
Raw text (`{"text": ...}` or `{"documents": [...]}`, `Extractor.prepare_texts`) has limits
of its own, `max_documents`, `max_document_chars` and `max_text_pairs`; past one the request is
refused whole (`TooLarge`, a 413), never truncated.

What only a request has lives here: its size limits, the `entities` form, the reading of a
body (`load_json`: UTF-8 JSON with finite numbers only) and field names that say where in the
request a bad value is ("items[2].head.start"). `parse_item` raises a DataError for a bad item,
so a service answers 4xx and never fails a batch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from tkre.data.readers import record_span, record_words
from tkre.schema import DataError, Instance, Span

QUERY_LABEL = "?"  # the relation of a query Instance: unknown, and never read
MAX_TYPE_CHARS = 64
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # how JSON spells a UTF-16 surrogate


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for; anything larger is rejected with the field and the limit
    named (the field names here are the config keys: `args.limits` in serve/config.yaml)."""

    max_items: int = 64             # items per extract request
    max_text_chars: int = 5000      # characters of one item's text (or its tokens)
    max_entities: int = 16          # entities of one `entities` item
    max_pairs: int = 256            # entity pairs per extract request
    max_top_k: int = 10
    max_examples: int = 64          # examples per registration
    max_example_chars: int = 2000   # characters of one example's text (or its tokens)
    max_description_chars: int = 2000
    max_relations: int = 256        # registered run-time relations, all replicas together
    max_body_bytes: int = 1 << 20   # bytes of a request body (413 past it)
    max_documents: int = 64         # documents of a text request (413 past it)
    max_document_chars: int = 1_000_000  # characters of one document (413 past it)
    max_text_pairs: int = 50_000    # candidate pairs of a text request, type variants counted

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"limits.{f.name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = RequestLimits()


def limits_from(values: dict[str, Any] | None) -> RequestLimits:
    """RequestLimits from a config mapping; unknown keys are an error naming them."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(asdict(DEFAULT_LIMITS)))
    if unknown:
        raise ValueError(f"unknown limits: {', '.join(unknown)}")
    return RequestLimits(**{k: int(v) for k, v in values.items()})


def field_error(message: str, field: str) -> DataError:
    return DataError(message, field=field)


def over_limit(field: str, what: str, limit: str, limits: RequestLimits) -> DataError:
    """'field 'items': has 65 items; the limit is 64 (max_items)'."""
    return DataError(f"{what}; the limit is {getattr(limits, limit)} ({limit})", field=field)


class TooLarge(DataError):
    """A text request past one of its size limits: the service answers 413."""


def too_large(field: str, what: str, limit: str, limits: RequestLimits) -> TooLarge:
    """Like `over_limit`, for the limits of raw text (nothing is truncated: the request is
    refused)."""
    return TooLarge(f"{what}; the limit is {getattr(limits, limit)} ({limit})", field=field)


# --- the request body ------------------------------------------------------------------------

def load_json(data: bytes) -> Any:
    """A request body: UTF-8 JSON whose numbers are finite and whose strings are valid Unicode.

    Python's json reads NaN, Infinity and 1e999 as floats and "\\ud800" as a lone surrogate;
    both would fail later (the answer's JSON, the tokenizer), so they are refused here with
    their field named. DataError with field "body" when the body is not JSON at all."""
    suspect = False  # a non-finite number was read: find its field

    def number(literal: str) -> float:
        nonlocal suspect
        value = float(literal)
        suspect = suspect or not math.isfinite(value)
        return value

    try:
        text = data.decode("utf-8")
        tree = json.loads(text, parse_float=number, parse_constant=number)
    except UnicodeDecodeError as err:
        raise field_error(f"is not UTF-8: byte {err.start} is invalid", "body") from None
    except json.JSONDecodeError as err:
        raise field_error(f"is not valid JSON: {err.msg} at line {err.lineno} column "
                          f"{err.colno}", "body") from None
    except RecursionError:
        raise field_error("is nested too deeply", "body") from None
    except ValueError as err:  # an integer of more than sys.get_int_max_str_digits() digits
        raise field_error(f"is not valid JSON: {str(err).split(':')[0]}", "body") from None
    if suspect or _SURROGATE_ESCAPE.search(text):  # the walk only when there may be a culprit
        _check_values(tree)
    return tree


def _check_values(tree: Any) -> None:
    """DataError at the first non-finite number or invalid string, in document order."""
    stack: list[tuple[str, Any]] = [("body", tree)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise field_error(f"must be a finite number, got {json.dumps(value)}", where)
        if isinstance(value, str) and not _is_unicode(value):
            raise field_error("holds a lone surrogate (\\ud800-\\udfff): not valid Unicode",
                              where)
        if isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
        elif isinstance(value, dict):
            for key in value:
                if not _is_unicode(key):
                    raise field_error("holds a key that is not valid Unicode", where)
            prefix = "" if where == "body" else f"{where}."
            stack.extend((f"{prefix}{k}", v) for k, v in reversed(value.items()))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class ParsedItem:
    """The Instances of one item, where it is ("items[2]"), and for an `entities` item the
    (head, tail) entity indices of each Instance."""

    instances: list[Instance]
    where: str
    pairs: list[tuple[int, int]] | None = None


def _check_size(item: dict, where: str, limits: RequestLimits, limit: str) -> None:
    """The request limit on text length (`limit` names it), checked before tokenising."""
    text, tokens = item.get("text"), item.get("tokens")
    if isinstance(text, str) and len(text) > getattr(limits, limit):
        raise over_limit(f"{where}.text", f"has {len(text)} characters", limit, limits)
    if isinstance(tokens, list):
        chars = sum(len(t) + 1 for t in tokens if isinstance(t, str))
        if chars > getattr(limits, limit):
            raise over_limit(f"{where}.tokens", f"has {chars} characters with spaces", limit,
                             limits)


def _entity(value: Any, field: str, words: tuple[str | None, list[str], list[tuple[int, int]]]
            ) -> Span:
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(kind, str) and len(kind) > MAX_TYPE_CHARS:
        raise field_error(f"must be a string of at most {MAX_TYPE_CHARS} characters or null",
                          f"{field}.type")
    return record_span(value, field, *words)


def _instance(ident: str, tokens: list[str], head: Span, tail: Span, relation: str,
              where: str) -> Instance:
    try:
        return Instance(id=ident, tokens=tuple(tokens), head=head, tail=tail, relation=relation)
    except DataError as err:  # e.g. overlapping spans: name the item's field
        raise field_error(err.message, f"{where}.{err.field}" if err.field else where) from None


def parse_item(item: Any, where: str = "item", limits: RequestLimits = DEFAULT_LIMITS,
               allow_entities: bool = True, relation: str = QUERY_LABEL,
               size_limit: str = "max_text_chars") -> ParsedItem:
    """One wire-format item -> its Instances; DataError (field = where + path) when bad.
    `size_limit` names the limit on its length (max_example_chars for an example)."""
    if not isinstance(item, dict):
        raise field_error(f"must be an object, got {type(item).__name__}", where)
    item = {key: value for key, value in item.items() if value is not None}
    _check_size(item, where, limits, size_limit)
    words = record_words(item, where)
    tokens = words[1]
    if "entities" in item and ("head" in item or "tail" in item):
        raise field_error("give head and tail, or entities, not both", f"{where}.entities")
    if "entities" not in item or not allow_entities:
        for role in ("head", "tail"):
            if role not in item:
                raise field_error("is required" + (" (or give entities)" if allow_entities else ""),
                                  f"{where}.{role}")
        head = _entity(item["head"], f"{where}.head", words)
        tail = _entity(item["tail"], f"{where}.tail", words)
        return ParsedItem([_instance(where, tokens, head, tail, relation, where)], where)
    entities = item["entities"]
    if not isinstance(entities, list) or not 2 <= len(entities) <= limits.max_entities:
        raise field_error(f"must be a list of 2 to {limits.max_entities} entities "
                          "(max_entities)",
                          f"{where}.entities")
    spans = [_entity(e, f"{where}.entities[{i}]", words) for i, e in enumerate(entities)]
    for j, b in enumerate(spans):
        for i, a in enumerate(spans[:j]):
            if a.start < b.end and b.start < a.end:
                raise field_error(f"overlaps entity {i}", f"{where}.entities[{j}]")
    pairs = [(i, j) for i in range(len(spans)) for j in range(len(spans)) if i != j]
    return ParsedItem([_instance(f"{where}[{i},{j}]", tokens, spans[i], spans[j], relation,
                                 where) for i, j in pairs], where, pairs)


def parse_items(items: Any, limits: RequestLimits = DEFAULT_LIMITS) -> list[ParsedItem]:
    """The `items` of an extract request, with the request-wide limits checked."""
    if not isinstance(items, list) or not items:
        raise field_error("must be a non-empty list", "items")
    if len(items) > limits.max_items:
        raise over_limit("items", f"has {len(items)} items", "max_items", limits)
    parsed = [parse_item(item, f"items[{i}]", limits) for i, item in enumerate(items)]
    pairs = sum(len(p.instances) for p in parsed)
    if pairs > limits.max_pairs:
        raise over_limit("items", f"ask for {pairs} entity pairs", "max_pairs", limits)
    return parsed


# --- results -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    """The best relation of one entity pair, its score, and the ranked candidates."""

    relation: str
    score: float
    top_k: list[tuple[str, float]]

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        ranked = self.top_k[:top_k] if top_k is not None else self.top_k
        return {"relation": self.relation, "score": self.score,
                "top_k": [{"relation": r, "score": s} for r, s in ranked]}


def format_results(parsed: list[ParsedItem], predictions: list[Prediction], top_k: int
                   ) -> list[dict[str, Any]]:
    """One result per item: a prediction, or for an entities item one per ordered pair."""
    results, cursor = [], 0
    for item in parsed:
        chunk = predictions[cursor:cursor + len(item.instances)]
        cursor += len(item.instances)
        if item.pairs is None:
            results.append(chunk[0].to_dict(top_k))
        else:
            results.append({"pairs": [{"head": h, "tail": t, **p.to_dict(top_k)}
                                      for (h, t), p in zip(item.pairs, chunk, strict=True)]})
    return results
