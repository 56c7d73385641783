"""The Instance schema every stage speaks, and the one error type readers raise.

An Instance is a tokenised sentence with two entity spans (token indices, end exclusive) and a
relation label. Readers that see raw text with character offsets convert them once, at the edge
(`tkre.data.text`), and validate here; nothing downstream re-checks.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

SOURCES = ("gold", "llm")
# a directed label, SemEval's "Cause-Effect(e2,e1)": the relation type and which argument is e1
_DIRECTED = re.compile(r"^(?P<type>.+)\((?P<dir>e1,e2|e2,e1)\)$")


def label_direction(label: str) -> tuple[str, str | None]:
    """("Cause-Effect", "e2,e1") for "Cause-Effect(e2,e1)"; (label, None) when undirected."""
    match = _DIRECTED.match(label)
    return (match.group("type"), match.group("dir")) if match else (label, None)


class DataError(ValueError):
    """Bad input, with where it is: file, record (line or index) and field."""

    def __init__(self, message: str, *, file: str | None = None, record: Any = None,
                 field: str | None = None):
        self.message, self.file, self.record, self.field = message, file, record, field
        where = ", ".join(
            part for part in (
                f"file {file}" if file else "",
                f"record {record}" if record is not None else "",
                f"field '{field}'" if field else "",
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class Span:
    """An entity mention: tokens[start:end] (end exclusive), its type (or None) and text."""

    start: int
    end: int
    text: str
    type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "text": self.text, "type": self.type}


@dataclass(frozen=True)
class Instance:
    """One labelled relation mention. `source` is "gold" or "llm"; `provenance` says where from."""

    id: str
    tokens: tuple[str, ...]
    head: Span
    tail: Span
    relation: str
    source: str = "gold"
    provenance: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(self.tokens))
        validate(self)
        for name in ("head", "tail"):  # an empty span text is filled from the tokens
            span = getattr(self, name)
            if not span.text:
                text = " ".join(self.tokens[span.start:span.end])
                object.__setattr__(self, name, replace(span, text=text))

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["tokens"] = list(self.tokens)
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Instance:
        """Build from the dict form written by `to_dict` (and by the Parquet writer)."""
        provenance = row.get("provenance") or {}
        if isinstance(provenance, list):  # pyarrow map columns read back as key/value pairs
            provenance = dict(provenance)
        return cls(
            id=str(row["id"]),
            tokens=tuple(row["tokens"]),
            head=_span(row["head"], "head"),
            tail=_span(row["tail"], "tail"),
            relation=row["relation"],
            source=row.get("source") or "gold",
            provenance={str(k): str(v) for k, v in provenance.items()},
        )


def _span(value: Any, name: str) -> Span:
    if not isinstance(value, dict):
        raise DataError(f"expected an object with start/end/text/type, got {value!r}", field=name)
    missing = [key for key in ("start", "end") if key not in value]
    if missing:
        raise DataError(f"missing {', '.join(missing)}", field=f"{name}.{missing[0]}")
    for key in ("start", "end"):
        if isinstance(value[key], bool) or not isinstance(value[key], int):
            raise DataError(f"must be an integer, got {value[key]!r}", field=f"{name}.{key}")
    return Span(start=value["start"], end=value["end"], text=value.get("text") or "",
                type=value.get("type") or None)


def validate(inst: Instance) -> None:
    """Raise DataError naming the field when the instance is inconsistent."""
    if not inst.id:
        raise DataError("must be a non-empty string", field="id")
    n = len(inst.tokens)
    if n == 0:
        raise DataError("must hold at least one token", field="tokens")
    for i, token in enumerate(inst.tokens):
        if not isinstance(token, str) or not token or token != token.strip():
            raise DataError(f"token {i} must be a non-empty string without surrounding "
                            f"whitespace, got {token!r}", field="tokens")
    for name, span in (("head", inst.head), ("tail", inst.tail)):
        if not 0 <= span.start < span.end <= n:
            raise DataError(f"span [{span.start}, {span.end}) is not inside the {n} tokens "
                            "(end is exclusive and must exceed start)", field=f"{name}.start")
        expected = " ".join(inst.tokens[span.start:span.end])
        if span.text and span.text != expected:
            raise DataError(f"text {span.text!r} does not match the tokens {expected!r}",
                            field=f"{name}.text")
    if inst.head.start < inst.tail.end and inst.tail.start < inst.head.end:
        raise DataError("head and tail spans overlap", field="tail.start")
    if not isinstance(inst.relation, str) or not inst.relation:
        raise DataError("must be a non-empty string", field="relation")
    if inst.source not in SOURCES:
        raise DataError(f"must be one of {SOURCES}, got {inst.source!r}", field="source")


@dataclass(frozen=True)
class RelationSchema:
    """What a relation allows: its name, a description, and the entity types of head and tail.

    Empty type tuples mean the data set has no entity types (SemEval, FewRel): no type check.
    """

    name: str
    description: str = ""
    head_types: tuple[str, ...] = ()
    tail_types: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "head_types": list(self.head_types), "tail_types": list(self.tail_types)}


def derive_schemas(instances: list[Instance], descriptions: dict[str, str] | None = None,
                   overrides: dict[str, dict[str, Any]] | None = None
                   ) -> dict[str, RelationSchema]:
    """One schema per relation: types seen in the data unless `overrides` names them."""
    descriptions, overrides = descriptions or {}, overrides or {}
    head_types: dict[str, set[str]] = {}
    tail_types: dict[str, set[str]] = {}
    for inst in instances:
        head_types.setdefault(inst.relation, set())
        tail_types.setdefault(inst.relation, set())
        if inst.head.type:
            head_types[inst.relation].add(inst.head.type)
        if inst.tail.type:
            tail_types[inst.relation].add(inst.tail.type)
    schemas = {}
    for name in sorted(head_types):
        given = overrides.get(name, {})
        schemas[name] = RelationSchema(
            name=name,
            description=given.get("description") or descriptions.get(name, ""),
            head_types=tuple(given.get("head_types") or sorted(head_types[name])),
            tail_types=tuple(given.get("tail_types") or sorted(tail_types[name])))
    return schemas
