"""The wire format of an extraction request: items in, checked against the request limits, and
results out.

An item is raw text with character offsets (end exclusive) or tokens with token spans, and a
head and a tail, or a list of `entities` that yields every ordered pair:

    {"text": "Ada Lovelace was born in London .",
     "head": {"start": 0, "end": 12, "type": "person"}, "tail": {"start": 25, "end": 31}}

The text and the entities are read by `tkre.data.readers.record_words` / `record_span`, the
reader JSONL files go through too, so a sentence means the same in a file and in a request.
What only a request has lives here: its size limits, the `entities` form, and field names that
say where in the request a bad value is ("items[2].head.start"). `parse_item` raises a
DataError for a bad item, so a service answers 4xx and never fails a batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tkre.data.readers import record_span, record_words
from tkre.schema import DataError, Instance, Span

QUERY_LABEL = "?"  # the relation of a query Instance: unknown, and never read
MAX_TYPE_CHARS = 64


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for; anything larger is rejected with the field named."""

    max_items: int = 64
    max_text_chars: int = 5000
    max_entities: int = 16
    max_pairs: int = 256
    max_top_k: int = 10
    max_examples: int = 64


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


@dataclass(frozen=True)
class ParsedItem:
    """The Instances of one item, where it is ("items[2]"), and for an `entities` item the
    (head, tail) entity indices of each Instance."""

    instances: list[Instance]
    where: str
    pairs: list[tuple[int, int]] | None = None


def _check_size(item: dict, where: str, limits: RequestLimits) -> None:
    """The request limit on text length, checked before the text is tokenised."""
    text, tokens = item.get("text"), item.get("tokens")
    if isinstance(text, str) and len(text) > limits.max_text_chars:
        raise field_error(f"has {len(text)} characters; the limit is {limits.max_text_chars}",
                          f"{where}.text")
    if (isinstance(tokens, list)
            and sum(len(t) + 1 for t in tokens if isinstance(t, str)) > limits.max_text_chars):
        raise field_error(f"the tokens exceed {limits.max_text_chars} characters",
                          f"{where}.tokens")


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
               allow_entities: bool = True, relation: str = QUERY_LABEL) -> ParsedItem:
    """One wire-format item -> its Instances; DataError (field = where + path) when bad."""
    if not isinstance(item, dict):
        raise field_error(f"must be an object, got {type(item).__name__}", where)
    item = {key: value for key, value in item.items() if value is not None}
    _check_size(item, where, limits)
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
        raise field_error(f"must be a list of 2 to {limits.max_entities} entities",
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
        raise field_error(f"has {len(items)} items; the limit is {limits.max_items}", "items")
    parsed = [parse_item(item, f"items[{i}]", limits) for i, item in enumerate(items)]
    pairs = sum(len(p.instances) for p in parsed)
    if pairs > limits.max_pairs:
        raise field_error(f"ask for {pairs} entity pairs; the limit is {limits.max_pairs}", "items")
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
