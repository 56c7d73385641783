"""Readers for the benchmark formats and our own (JSONL, Parquet): each returns list[Instance].

Every reader rejects bad input with a `DataError` naming the file, the record (1-based line number
for line-based files, list index for JSON lists, "P177[3]" for FewRel) and the field. Nothing is
skipped silently: a malformed record stops the read.

Conversions done here, once, at the edge:
- TACRED's inclusive entity ends become exclusive; its PTB bracket tokens (-LRB- ...) become "(".
- TACRED and FewRel tokens that are whitespace only (FewRel has some: " ", "\\xa0", "\\n") are
  dropped and the entity indices shifted; the dropped original indices go into provenance
  ("dropped_tokens").
- SemEval's <e1>/<e2> tags are removed; a tag squeezed between two visible characters ("of
  a<e2>bird") counts as a token boundary, so the entity never cuts a token.
- The text form of a record (raw text, entities as character offsets) becomes tokens and token
  spans in `record_words` and `record_span`, the one reader of that form: JSONL lines and the
  extraction service's items (`tkre.extract.wire`) both go through it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from tkre.data.text import span_from_chars, tokenize_with_offsets
from tkre.schema import DataError, Instance, Span, label_direction

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

PathLike = str | os.PathLike

PTB_BRACKETS = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{",
                "-RCB-": "}"}

_SPAN_TYPE = pa.struct([
    pa.field("start", pa.int32(), nullable=False),
    pa.field("end", pa.int32(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("type", pa.string(), nullable=True),
])
PARQUET_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("tokens", pa.list_(pa.string()), nullable=False),
    pa.field("head", _SPAN_TYPE, nullable=False),
    pa.field("tail", _SPAN_TYPE, nullable=False),
    pa.field("relation", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("provenance", pa.map_(pa.string(), pa.string()), nullable=False),
])

_SEMEVAL_SENTENCE = re.compile(r'^(\d+)\t"(.*)"$')
_SEMEVAL_LABEL = re.compile(r"^[A-Za-z]+(?:-[A-Za-z]+)*(?:\((?:e1,e2|e2,e1)\))?$")
_SEMEVAL_TAG = re.compile(r"(</?e[12]>)")
_KINDS = {int: "an integer", str: "a string", list: "a list", dict: "an object"}


# ---------------------------------------------------------------------------------------------
# shared helpers


@contextmanager
def _where(file: str, record: Any) -> Iterator[None]:
    """Add file and record to a DataError that lacks them (e.g. one from Instance validation)."""
    try:
        yield
    except DataError as exc:
        if exc.file is not None:
            raise
        record = record if exc.record is None else exc.record
        raise DataError(exc.message, file=file, record=record, field=exc.field) from exc


def _read_text(path: PathLike, filesystem: FileSystem | None = None) -> str:
    """The file's text (UTF-8, a BOM dropped), as a DataError naming the file when unreadable."""
    file = str(path)
    try:
        if filesystem is None:
            data = Path(path).read_bytes()
        else:
            with filesystem.open_input_stream(file) as stream:
                data = stream.read()
        return data.decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError("no such file", file=file) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc}", file=file) from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc}", file=file) from None


def _read_lines(path: PathLike, filesystem: FileSystem | None = None) -> list[str]:
    """Lines without their LF / CRLF ends (only "\\n" splits: JSON may hold U+2028 and such)."""
    return [line.removesuffix("\r") for line in _read_text(path, filesystem).split("\n")]


def _load_json(path: PathLike) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): "
                        f"{exc.msg}", file=str(path)) from None


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _require(obj: dict, key: str, kind: type, field: str | None = None) -> Any:
    """obj[key], which must be present and of `kind` (bool is not an integer)."""
    if key not in obj:
        raise DataError("is missing", field=field or key)
    value = obj[key]
    if not _is(value, kind):
        raise DataError(f"must be {_KINDS[kind]}, got {_short(value)}", field=field or key)
    return value


def _optional_str(obj: dict, key: str, field: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(f"must be a string or null, got {_short(value)}", field=field)
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _token_list(obj: dict, key: str) -> list[str]:
    tokens = _require(obj, key, list)
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise DataError(f"token {i} must be a string, got {_short(token)}", field=key)
    return tokens


def _drop_blank_tokens(tokens: list[str]) -> tuple[list[str], list[int], list[int]]:
    """Strip tokens and drop whitespace-only ones: (kept tokens, kept-before counts, dropped).

    kept_before[i] is the number of kept tokens before original index i (0 <= i <= len), so an
    original span [start, end) becomes [kept_before[start], kept_before[end]).
    """
    kept, kept_before, dropped = [], [0], []
    for i, token in enumerate(tokens):
        if token.strip():
            kept.append(token.strip())
        else:
            dropped.append(i)
        kept_before.append(len(kept))
    return kept, kept_before, dropped


def _shifted(start: int, end: int, kept_before: list[int], field: str) -> tuple[int, int]:
    new_start, new_end = kept_before[start], kept_before[end]
    if new_end == new_start:
        raise DataError(f"span [{start}, {end}) holds only whitespace tokens", field=field)
    return new_start, new_end


def _provenance(name: str, record: Any, dropped: list[int]) -> dict[str, str]:
    provenance = {"file": name, "record": str(record)}
    if dropped:
        provenance["dropped_tokens"] = ",".join(map(str, dropped))
    return provenance


# ---------------------------------------------------------------------------------------------
# TACRED / TACREV / Re-TACRED


def read_tacred(path: PathLike) -> list[Instance]:
    """TACRED-style JSON: a list of objects, inclusive token ends; subject = head, object = tail."""
    rows = _load_json(path)
    if not isinstance(rows, list):
        raise DataError(f"expected a JSON list of objects, got {type(rows).__name__}",
                        file=str(path))
    out = []
    for index, row in enumerate(rows):
        with _where(str(path), index):
            out.append(_tacred_record(row, index, Path(path)))
    return out


def _tacred_record(row: Any, index: int, path: Path) -> Instance:
    if not isinstance(row, dict):
        raise DataError(f"must be a JSON object, got {_short(row)}")
    tokens = [PTB_BRACKETS.get(token, token) for token in _token_list(row, "token")]
    bounds = {}
    for role in ("subj", "obj"):
        start = _require(row, f"{role}_start", int)
        end = _require(row, f"{role}_end", int)
        if start < 0:
            raise DataError(f"must not be negative, got {start}", field=f"{role}_start")
        if end < start:
            raise DataError(f"inclusive end {end} is before start {start}", field=f"{role}_end")
        if end >= len(tokens):
            raise DataError(f"inclusive end {end} is past the last token (index "
                            f"{len(tokens) - 1})", field=f"{role}_end")
        bounds[role] = (start, end + 1, _require(row, f"{role}_type", str))
    relation = _require(row, "relation", str)
    ident = row.get("id")
    if ident is not None and not isinstance(ident, str):
        raise DataError(f"must be a string, got {_short(ident)}", field="id")
    kept, kept_before, dropped = _drop_blank_tokens(tokens)
    spans = []
    for role in ("subj", "obj"):
        start, end, kind = bounds[role]
        start, end = _shifted(start, end, kept_before, f"{role}_start")
        spans.append(Span(start, end, "", kind))
    return Instance(id=ident or f"{path.stem}-{index}", tokens=tuple(kept), head=spans[0],
                    tail=spans[1], relation=relation,
                    provenance=_provenance(path.name, index, dropped))


# ---------------------------------------------------------------------------------------------
# SemEval-2010 Task 8


def read_semeval(path: PathLike) -> list[Instance]:
    """SemEval-2010 Task 8 text: sentence line, label line, optional Comment line, blank line.

    head = e1 and tail = e2 always; the relation is the label as written (direction kept).
    """
    file, lines = str(path), _read_lines(path)
    out, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        instance, i = _semeval_block(lines, i, file, Path(path).name)
        out.append(instance)
    return out


# SemEval-2010 Task 8's nine relations as its guidelines define them: the label X-Y(e1,e2)
# says e1 plays role X and e2 role Y, (e2,e1) the reverse. A small generator cannot read
# "Cause-Effect(e2,e1)" on its own; these go into the knowledge prompts as the meaning.
SEMEVAL_RELATIONS = {
    "Cause-Effect": ("cause", "effect", "an event or object leads to an effect"),
    "Instrument-Agency": ("instrument", "agent", "an agent uses an instrument"),
    "Product-Producer": ("product", "producer", "a producer makes or brings about a product"),
    "Content-Container": ("content", "container",
                          "an object is physically kept inside a container"),
    "Entity-Origin": ("entity", "origin",
                      "an entity comes from, or is made from, an origin (a place or material)"),
    "Entity-Destination": ("entity", "destination", "an entity moves towards a destination"),
    "Component-Whole": ("component", "whole", "a component is a part of a larger whole"),
    "Member-Collection": ("member", "collection", "a member belongs to a collection or group"),
    "Message-Topic": ("message", "topic", "a written or spoken message is about a topic"),
}


def semeval_description(label: str) -> str:
    """The meaning of a SemEval label in head/tail terms ("" for Other or an unknown label)."""
    kind, direction = label_direction(label)
    if direction is None or kind not in SEMEVAL_RELATIONS:
        return ""
    first, second, gloss = SEMEVAL_RELATIONS[kind]
    head, tail = (first, second) if direction == "e1,e2" else (second, first)
    return f"{gloss}; the head entity is the {head} and the tail entity is the {tail}"


def _semeval_block(lines: list[str], i: int, file: str, name: str) -> tuple[Instance, int]:
    """Parse the block starting at lines[i]; return it and the index after it."""
    match = _SEMEVAL_SENTENCE.match(lines[i])
    if not match:
        raise DataError(f'expected a sentence line `id<TAB>"sentence"`, got {_short(lines[i])}',
                        file=file, record=i + 1, field="sentence")
    label = lines[i + 1].strip() if i + 1 < len(lines) else ""
    if not _SEMEVAL_LABEL.match(label):
        raise DataError(f"expected the relation label of the sentence on line {i + 1}, got "
                        f"{_short(label)}", file=file, record=i + 2, field="relation")
    end = i + 2
    if end < len(lines) and lines[end].startswith("Comment"):
        end += 1
    if end < len(lines) and lines[end].strip():
        raise DataError(f"expected a blank line ending the block of line {i + 1}, got "
                        f"{_short(lines[end])}", file=file, record=end + 1)
    with _where(file, i + 1):
        text, chars = _strip_semeval_tags(match.group(2))
        tokens, offsets = tokenize_with_offsets(text)
        head = span_from_chars(text, offsets, tokens, *chars["e1"], None, field="e1")
        tail = span_from_chars(text, offsets, tokens, *chars["e2"], None, field="e2")
        instance = Instance(id=match.group(1), tokens=tuple(tokens), head=head, tail=tail,
                            relation=label, provenance=_provenance(name, i + 1, []))
    return instance, end


def _strip_semeval_tags(raw: str) -> tuple[str, dict[str, tuple[int, int]]]:
    """Text without <e1>/<e2> tags, and each entity's character span [start, end) in it."""
    text, starts, ends, opening, boundary = "", {}, {}, [], False
    for k, piece in enumerate(_SEMEVAL_TAG.split(raw)):
        if k % 2:  # a tag
            name, closing = piece.strip("</>"), piece.startswith("</")
            if closing and ((name not in starts and name not in opening) or name in ends):
                raise DataError(f"{piece} without a matching <{name}> before it", field=name)
            if not closing and (name in starts or name in opening):
                raise DataError(f"<{name}> appears twice", field=name)
            if closing:
                ends[name] = len(text)
            else:
                opening.append(name)
            boundary = True
            continue
        if boundary and piece and text and not text[-1].isspace() and not piece[0].isspace():
            text += " "  # a tag between two visible characters is a token boundary
        boundary = boundary and not piece
        starts.update((name, len(text)) for name in opening)
        opening = []
        text += piece
    for name in ("e1", "e2"):
        if name not in starts or name not in ends:
            raise DataError(f"missing <{name}>...</{name}> tags", field=name)
    spans = {}
    for name in ("e1", "e2"):  # whitespace just inside the tags is not part of the entity
        start, end = starts[name], ends[name]
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        spans[name] = (start, end)
    return text, spans


# ---------------------------------------------------------------------------------------------
# FewRel


def read_fewrel(path: PathLike, pid2name: dict | None = None) -> list[Instance]:
    """FewRel JSON {relation_id: [{"tokens", "h", "t"}]}; each entity's FIRST mention is used.

    With `pid2name`, every relation id must be in it and its name goes into provenance.
    """
    file, data = str(path), _load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object of relation id -> list, got "
                        f"{type(data).__name__}", file=file)
    out = []
    for relation, rows in data.items():
        if not isinstance(rows, list):
            raise DataError(f"must be a list of instances, got {_short(rows)}", file=file,
                            record=relation)
        if pid2name is not None and relation not in pid2name:
            raise DataError(f"relation id {relation!r} is not in pid2name", file=file,
                            record=relation, field="relation")
        for index, row in enumerate(rows):
            with _where(file, f"{relation}[{index}]"):
                out.append(_fewrel_record(row, relation, index, Path(path).name, pid2name))
    return out


def _fewrel_record(row: Any, relation: str, index: int, name: str,
                   pid2name: dict | None) -> Instance:
    if not isinstance(row, dict):
        raise DataError(f"must be a JSON object, got {_short(row)}")
    tokens = _token_list(row, "tokens")
    kept, kept_before, dropped = _drop_blank_tokens(tokens)
    provenance = _provenance(name, f"{relation}[{index}]", dropped)
    spans = []
    for key, role in (("h", "head"), ("t", "tail")):
        entity = _require(row, key, list)
        if len(entity) < 3 or not isinstance(entity[2], list) or not entity[2]:
            raise DataError("expected [name, id, [[token indices], ...]]", field=key)
        start, end = _fewrel_mention(entity[2][0], len(tokens), f"{key}[2][0]")
        spans.append(Span(*_shifted(start, end, kept_before, f"{key}[2][0]"), ""))
        if isinstance(entity[1], str):
            provenance[f"{role}_id"] = entity[1]
    if pid2name is not None:
        provenance["relation_name"] = str(pid2name[relation][0])
    return Instance(id=f"{relation}-{index}", tokens=tuple(kept), head=spans[0], tail=spans[1],
                    relation=relation, provenance=provenance)


def _fewrel_mention(indices: Any, n_tokens: int, field: str) -> tuple[int, int]:
    """[start, end) of a mention given as contiguous ascending token indices."""
    if not isinstance(indices, list) or not indices or not all(_is(i, int) for i in indices):
        raise DataError(f"must be a non-empty list of token indices, got {_short(indices)}",
                        field=field)
    start = indices[0]
    if indices != list(range(start, start + len(indices))):
        raise DataError(f"token indices {_short(indices)} are not contiguous ascending",
                        field=field)
    if start < 0 or indices[-1] >= n_tokens:
        raise DataError(f"token indices {_short(indices)} are outside the {n_tokens} tokens",
                        field=field)
    return start, indices[-1] + 1


def read_pid2name(path: PathLike) -> dict[str, tuple[str, str]]:
    """FewRel's pid2name.json: {pid: [name, description]} -> {pid: (name, description)}."""
    file, data = str(path), _load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object, got {type(data).__name__}", file=file)
    out = {}
    for pid, value in data.items():
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(part, str) for part in value)):
            raise DataError(f"expected [name, description], got {_short(value)}", file=file,
                            record=pid)
        out[pid] = (value[0], value[1])
    return out


# ---------------------------------------------------------------------------------------------
# the text / token form of one record: a JSONL line, and an item of the extraction service
# (tkre.extract.wire), read by these two functions only, so both accept the same thing


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def record_words(row: dict, where: str = "") -> tuple[str | None, list[str], list[tuple[int, int]]]:
    """(text or None, tokens, character offsets) of a record in text form ("text": raw text,
    tokenised here) or token form ("tokens"); errors name the field under `where`."""
    if ("tokens" in row) == ("text" in row):
        raise DataError("give exactly one of tokens (token spans) or text (character offsets)",
                        field=_at(where, "tokens"))
    if "text" in row:
        text = row["text"]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"must be a non-empty string, got {_short(text)}",
                            field=_at(where, "text"))
        tokens, offsets = tokenize_with_offsets(text)
        if not tokens:
            raise DataError("holds no word or punctuation token", field=_at(where, "text"))
        return text, tokens, offsets
    tokens = row["tokens"]
    if not isinstance(tokens, list) or not tokens:
        raise DataError(f"must be a non-empty list of strings, got {_short(tokens)}",
                        field=_at(where, "tokens"))
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise DataError(f"token {i} must be a string, got {_short(token)}",
                            field=_at(where, "tokens"))
        if not token or token != token.strip():
            raise DataError(f"token {i} must be a non-empty string without surrounding "
                            f"whitespace, got {token!r}", field=_at(where, "tokens"))
    return None, list(tokens), []


def record_span(value: Any, field: str, text: str | None, tokens: list[str],
                offsets: list[tuple[int, int]]) -> Span:
    """One entity {"start", "end", "type"?, "text"?} of a record read by `record_words`: token
    indices in token form, character offsets (end exclusive) in text form, which must fall on
    token boundaries. A mention text, when given, must be what the span covers."""
    if value is None:
        raise DataError("is missing", field=field)
    if not isinstance(value, dict):
        raise DataError(f"must be an object with start and end, got {_short(value)}",
                        field=field)
    start = _require(value, "start", int, f"{field}.start")
    end = _require(value, "end", int, f"{field}.end")
    kind = _optional_str(value, "type", f"{field}.type") or None
    mention = _optional_str(value, "text", f"{field}.text")
    if text is None:
        if not 0 <= start < end <= len(tokens):
            raise DataError(f"token span [{start}, {end}) is not inside the {len(tokens)} tokens "
                            "(end is exclusive and must exceed start)", field=f"{field}.start")
        span = Span(start, end, " ".join(tokens[start:end]), kind)
        if mention and mention != span.text:
            raise DataError(f"text {mention!r} does not match the tokens {span.text!r}",
                            field=f"{field}.text")
        return span
    _check_char_span(start, end, text, offsets, field)
    if mention and mention != text[start:end]:
        raise DataError(f"text {mention!r} does not match characters {text[start:end]!r}",
                        field=f"{field}.text")
    return span_from_chars(text, offsets, tokens, start, end, kind, field=field)


def _check_char_span(start: int, end: int, text: str, offsets: list[tuple[int, int]],
                     field: str) -> None:
    """Characters [start, end) must lie in the text and begin and end on token boundaries;
    the error names whichever offset is wrong."""
    if not 0 <= start < end:
        raise DataError(f"character span [{start}, {end}) is empty or negative",
                        field=f"{field}.start")
    if start >= len(text):
        raise DataError(f"character offset {start} is outside the text's {len(text)} characters",
                        field=f"{field}.start")
    if end > len(text):
        raise DataError(f"character offset {end} is past the text's {len(text)} characters",
                        field=f"{field}.end")
    if start not in {s for s, _ in offsets}:
        raise DataError(f"character offset {start} is not at the start of a token",
                        field=f"{field}.start")
    if end not in {e for _, e in offsets}:
        raise DataError(f"character offset {end} is not at the end of a token",
                        field=f"{field}.end")


# ---------------------------------------------------------------------------------------------
# our own formats: JSONL and Parquet


def read_jsonl(path: PathLike, filesystem: FileSystem | None = None) -> list[Instance]:
    """One JSON object a line (blank lines skipped), in token form or text form.

    Token form: "tokens" and head/tail token spans (end exclusive). Text form: "text" and
    head/tail CHARACTER spans (end exclusive), tokenised here. Missing id -> "<stem>-<line>".
    """
    file, name = str(path), PurePosixPath(str(path)).name
    stem = PurePosixPath(name).stem
    out = []
    for number, line in enumerate(_read_lines(path, filesystem), start=1):
        if not line.strip():
            continue
        with _where(file, number):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON at column {exc.colno}: {exc.msg}") from None
            out.append(_jsonl_record(row, f"{stem}-{number}", name, number))
    return out


def _jsonl_record(row: Any, default_id: str, name: str, number: int) -> Instance:
    if not isinstance(row, dict):
        raise DataError(f"must be a JSON object, got {_short(row)}")
    text, tokens, offsets = record_words(row)
    relation = _require(row, "relation", str)
    ident = row.get("id", default_id)
    if not _is(ident, str) and not _is(ident, int):
        raise DataError(f"must be a string, got {_short(ident)}", field="id")
    source = row.get("source", "gold")
    if not isinstance(source, str):
        raise DataError(f"must be a string, got {_short(source)}", field="source")
    provenance = row.get("provenance")
    if provenance is None:
        provenance = {"file": name, "record": str(number)}
    elif not isinstance(provenance, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in provenance.items()):
        raise DataError("must be an object of strings", field="provenance")
    head, tail = (record_span(row.get(role), role, text, tokens, offsets)
                  for role in ("head", "tail"))
    return Instance(id=str(ident), tokens=tuple(tokens), head=head, tail=tail, relation=relation,
                    source=source, provenance=dict(provenance))


def write_parquet(instances: list[Instance], path: PathLike,
                  filesystem: FileSystem | None = None) -> None:
    """Write instances with the fixed PARQUET_SCHEMA (the parent folder is created)."""
    rows = [{
        "id": inst.id, "tokens": list(inst.tokens), "head": inst.head.to_dict(),
        "tail": inst.tail.to_dict(), "relation": inst.relation, "source": inst.source,
        "provenance": list(inst.provenance.items()),
    } for inst in instances]
    table = pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA)
    if filesystem is None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    else:
        filesystem.create_dir(Path(str(path)).parent.as_posix(), recursive=True)
    pq.write_table(table, str(path), filesystem=filesystem)


def read_parquet(path: PathLike, filesystem: FileSystem | None = None) -> list[Instance]:
    """Read instances written by `write_parquet`; columns must convert to PARQUET_SCHEMA."""
    file = str(path)
    try:
        table = pq.read_table(file, filesystem=filesystem)
    except FileNotFoundError:
        raise DataError("no such file", file=file) from None
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read as Parquet: {exc}", file=file) from None
    columns = []
    for column in PARQUET_SCHEMA:
        if column.name not in table.column_names:
            raise DataError("column is missing", file=file, field=column.name)
        try:  # safe casts only (e.g. int64 -> int32 when every value fits)
            columns.append(table.column(column.name).cast(column.type))
        except pa.ArrowException as exc:
            raise DataError(f"column type {table.schema.field(column.name).type} does not "
                            f"convert to {column.type}: {exc}", file=file,
                            field=column.name) from None
    out = []
    for index, row in enumerate(pa.table(columns, names=PARQUET_SCHEMA.names).to_pylist()):
        with _where(file, index):
            for column in ("id", "tokens", "head", "tail", "relation"):
                if row[column] is None:
                    raise DataError("is null", field=column)
            out.append(Instance.from_dict(row))
    return out


def read_instances(path: PathLike, filesystem: FileSystem | None = None) -> list[Instance]:
    """Read our own formats, by suffix: .jsonl -> read_jsonl, .parquet -> read_parquet."""
    suffix = PurePosixPath(str(path)).suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path, filesystem=filesystem)
    if suffix == ".parquet":
        return read_parquet(path, filesystem=filesystem)
    raise DataError(f"unknown suffix {suffix!r}: expected .jsonl or .parquet", file=str(path))
