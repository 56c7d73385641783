"""Readers: exact parses of small hand-written files, the error contract, and the real data."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tkre.data import readers
from tkre.data.readers import (
    read_fewrel,
    read_instances,
    read_jsonl,
    read_parquet,
    read_pid2name,
    read_semeval,
    read_tacred,
    record_span,
    record_words,
    write_parquet,
)
from tkre.schema import DataError, Instance, Span


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def check(exc: pytest.ExceptionInfo[DataError], file: Path | str, record: object,
          field: str | None) -> None:
    """The error names exactly this file, record and field, and its message says so too."""
    err = exc.value
    assert (err.file, err.record, err.field) == (str(file), record, field), str(err)
    assert str(file) in str(err)
    if field:
        assert f"'{field}'" in str(err)


# ---------------------------------------------------------------------------------------------
# TACRED


def tacred_row(**changes: object) -> dict:
    row = {
        "id": "t1", "token": ["Ada", "Lovelace", "-LRB-", "born", "1815", "-RRB-", "lived", "in",
                              "London", "."],
        "subj_start": 0, "subj_end": 1, "obj_start": 8, "obj_end": 8,
        "subj_type": "PERSON", "obj_type": "CITY", "relation": "per:cities_of_residence",
        "stanford_pos": ["NNP"] * 10,
    }
    row.update(changes)
    return row


def test_tacred_valid(tmp_path: Path) -> None:
    second = tacred_row(token=["Bo", "met", "-LSB-", "Cy", "-RSB-", "-LCB-", "x", "-RCB-"],
                        subj_start=0, subj_end=0, obj_start=3, obj_end=3, relation="no_relation",
                        subj_type="PERSON", obj_type="PERSON")
    del second["id"]
    path = write_json(tmp_path / "dev.json", [tacred_row(), second])
    first, other = read_tacred(path)
    assert first == Instance(
        id="t1", tokens=("Ada", "Lovelace", "(", "born", "1815", ")", "lived", "in", "London",
                         "."),
        head=Span(0, 2, "Ada Lovelace", "PERSON"), tail=Span(8, 9, "London", "CITY"),
        relation="per:cities_of_residence")
    assert first.provenance == {"file": "dev.json", "record": "0"}
    assert other.id == "dev-1"
    assert other.tokens == ("Bo", "met", "[", "Cy", "]", "{", "x", "}")
    assert (other.head, other.tail) == (Span(0, 1, "Bo", "PERSON"), Span(3, 4, "Cy", "PERSON"))
    assert other.relation == "no_relation"


def test_tacred_whitespace_tokens_dropped(tmp_path: Path) -> None:
    row = tacred_row(token=["Ada", "\xa0", "visited", " ", "Paris"], subj_start=0, subj_end=0,
                     obj_start=4, obj_end=4)
    [inst] = read_tacred(write_json(tmp_path / "ws.json", [row]))
    assert inst.tokens == ("Ada", "visited", "Paris")
    assert (inst.head.start, inst.head.end, inst.tail.start, inst.tail.end) == (0, 1, 2, 3)
    assert inst.provenance["dropped_tokens"] == "1,3"


@pytest.mark.parametrize(("changes", "field", "needle"), [
    ({"obj_type": None}, "obj_type", "must be a string"),
    ({"subj_end": 10}, "subj_end", "past the last token"),
    ({"obj_start": 9, "obj_end": 8}, "obj_end", "before start"),
    ({"obj_start": "8"}, "obj_start", "must be an integer"),
    ({"obj_start": True}, "obj_start", "must be an integer"),
    ({"token": "Ada Lovelace"}, "token", "must be a list"),
    ({"token": ["Ada", 3]}, "token", "token 1 must be a string"),
    ({"obj_start": 1, "obj_end": 2}, "tail.start", "overlap"),
    ({"relation": ""}, "relation", "non-empty"),
    ({"id": 7}, "id", "must be a string"),
])
def test_tacred_errors(tmp_path: Path, changes: dict, field: str, needle: str) -> None:
    path = write_json(tmp_path / "bad.json", [tacred_row(id="ok"), tacred_row(**changes)])
    with pytest.raises(DataError, match=needle) as exc:
        read_tacred(path)
    check(exc, path, 1, field)


def test_tacred_missing_field(tmp_path: Path) -> None:
    row = tacred_row()
    del row["relation"]
    path = write_json(tmp_path / "bad.json", [tacred_row(), tacred_row(), row])
    with pytest.raises(DataError, match="is missing") as exc:
        read_tacred(path)
    check(exc, path, 2, "relation")


def test_tacred_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file") as exc:
        read_tacred(tmp_path / "absent.json")
    check(exc, tmp_path / "absent.json", None, None)
    broken = write(tmp_path / "broken.json", '[{"id": "a",\n  "token": [}]')
    with pytest.raises(DataError, match=r"invalid JSON at line 2 column 13") as exc:
        read_tacred(broken)
    check(exc, broken, None, None)
    not_list = write_json(tmp_path / "obj.json", {"id": "a"})
    with pytest.raises(DataError, match="expected a JSON list"):
        read_tacred(not_list)
    not_obj = write_json(tmp_path / "items.json", [tacred_row(), "oops"])
    with pytest.raises(DataError, match="must be a JSON object") as exc:
        read_tacred(not_obj)
    check(exc, not_obj, 1, None)


# ---------------------------------------------------------------------------------------------
# SemEval-2010 Task 8

SEMEVAL = """\
41\t"The <e1>kettle</e1> sat on a shelf in the <e2>pantry</e2>."
Entity-Location(e1,e2)
Comment: a made-up line.

42\t"A <e1>flock</e1> of<e2>geese</e2> crossed the lake's north shore."
Member-Collection(e2,e1)
Comment:

43\t"Her <e1>well-worn</e1> <e2>boots</e2> (size 6) stood by the door."
Other
Comment:
"""


def test_semeval_valid_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "mini.txt", SEMEVAL, newline="\r\n")
    a, b, c = read_semeval(path)
    assert a == Instance(
        id="41", tokens=("The", "kettle", "sat", "on", "a", "shelf", "in", "the", "pantry", "."),
        head=Span(1, 2, "kettle"), tail=Span(8, 9, "pantry"), relation="Entity-Location(e1,e2)")
    assert a.provenance == {"file": "mini.txt", "record": "1"}
    # a tag squeezed between two words is a token boundary
    assert b.tokens == ("A", "flock", "of", "geese", "crossed", "the", "lake's", "north", "shore",
                        ".")
    assert (b.head, b.tail) == (Span(1, 2, "flock"), Span(3, 4, "geese"))
    assert b.relation == "Member-Collection(e2,e1)"
    assert (b.id, b.provenance["record"]) == ("42", "5")
    assert c.tokens[:4] == ("Her", "well-worn", "boots", "(")
    assert (c.head, c.tail, c.relation) == (Span(1, 2, "well-worn"), Span(2, 3, "boots"), "Other")
    assert a.head.type is None and a.tail.type is None


def test_semeval_lf_and_no_trailing_blank(tmp_path: Path) -> None:
    path = write(tmp_path / "mini.txt", SEMEVAL.rstrip("\n"))
    assert [inst.id for inst in read_semeval(path)] == ["41", "42", "43"]


@pytest.mark.parametrize(("text", "record", "field", "needle"), [
    # block without its label line: the Comment line stands where the label should be
    ('7\t"A <e1>cat</e1> in a <e2>box</e2>."\nComment:\n\n', 2, "relation", "relation label"),
    ('7\t"A <e1>cat</e1> in a <e2>box</e2>."\n', 2, "relation", "relation label"),
    ('7\t"A <e1>cat</e1> in a box."\nOther\nComment:\n\n', 1, "e2", "missing <e2>"),
    ('7\t"A <e1>cat</e1> in a <e1>box</e1>."\nOther\n\n', 1, "e1", "appears twice"),
    ('7\t"A </e1>cat<e1> in a <e2>box</e2>."\nOther\n\n', 1, "e1", "without a matching"),
    ('7\t"A <e1>cat</e1> in <e2>a <e1>box</e2>."\nOther\n\n', 1, "e1", "appears twice"),
    ('7\t"A <e1>big <e2>cat</e2></e1>."\nOther\n\n', 1, "tail.start", "overlap"),
    ('7 "A <e1>cat</e1> in a <e2>box</e2>."\nOther\n\n', 1, "sentence", "sentence line"),
    ('7\t"A <e1>cat</e1> in a <e2>box</e2>."\nOther\nComment:\nstray\n', 4, None, "blank line"),
])
def test_semeval_errors(tmp_path: Path, text: str, record: int, field: str | None,
                        needle: str) -> None:
    good = '1\t"The <e1>sun</e1> warms the <e2>stone</e2>."\nOther\nComment:\n\n'
    path = write(tmp_path / "bad.txt", good + text, newline="\r\n")
    with pytest.raises(DataError, match=needle) as exc:
        read_semeval(path)
    check(exc, path, record + 4, field)


def test_semeval_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file") as exc:
        read_semeval(tmp_path / "nope.txt")
    check(exc, tmp_path / "nope.txt", None, None)


# ---------------------------------------------------------------------------------------------
# FewRel

def fewrel_row(tokens: list[str], h: list, t: list) -> dict:
    return {"tokens": tokens, "h": ["head name", "Q1", h], "t": ["tail name", "Q2", t]}


def fewrel_data() -> dict:
    return {
        "P131": [
            fewrel_row(["Oakvale", "lies", "in", "Brenton", "County", "."], [[0]], [[3, 4]]),
            fewrel_row(["The", "Brenton", "County", "seat", ",", "Oakvale", ",", "Oakvale"],
                       [[5], [7]], [[1, 2]]),
        ],
        "P17": [fewrel_row(["Lake", "\xa0", "Mirren", "is", "in", "\n", "Norland"],
                           [[0, 1, 2]], [[6]])],
    }


def test_fewrel_valid(tmp_path: Path) -> None:
    path = write_json(tmp_path / "val.json", fewrel_data())
    a, b, c = read_fewrel(path)
    assert a == Instance(id="P131-0", tokens=("Oakvale", "lies", "in", "Brenton", "County", "."),
                         head=Span(0, 1, "Oakvale"), tail=Span(3, 5, "Brenton County"),
                         relation="P131")
    assert a.provenance == {"file": "val.json", "record": "P131[0]", "head_id": "Q1",
                            "tail_id": "Q2"}
    assert (b.id, b.head, b.tail) == ("P131-1", Span(5, 6, "Oakvale"), Span(1, 3, "Brenton County"))
    # whitespace-only tokens are dropped, indices shifted, the drop recorded
    assert c.tokens == ("Lake", "Mirren", "is", "in", "Norland")
    assert (c.id, c.relation, c.head, c.tail) == ("P17-0", "P17", Span(0, 2, "Lake Mirren"),
                                                  Span(4, 5, "Norland"))
    assert c.provenance["dropped_tokens"] == "1,5"
    assert c.head.type is None and c.tail.type is None


def test_fewrel_with_pid2name(tmp_path: Path) -> None:
    path = write_json(tmp_path / "val.json", fewrel_data())
    names = {"P131": ("located in", "region"), "P17": ("country", "sovereign state")}
    assert read_fewrel(path, names)[2].provenance["relation_name"] == "country"
    with pytest.raises(DataError, match="not in pid2name") as exc:
        read_fewrel(path, {"P131": ("located in", "region")})
    check(exc, path, "P17", "relation")


@pytest.mark.parametrize(("row", "field", "needle"), [
    (fewrel_row(["a", "b", "c", "d"], [[0, 2]], [[3]]), "h[2][0]", "not contiguous"),
    (fewrel_row(["a", "b", "c", "d"], [[1, 0]], [[3]]), "h[2][0]", "not contiguous"),
    (fewrel_row(["a", "b", "c", "d"], [[0]], [[3, 4]]), "t[2][0]", "outside the 4 tokens"),
    (fewrel_row(["a", "b", "c", "d"], [[0]], [[]]), "t[2][0]", "non-empty list"),
    (fewrel_row(["a", "b", "c", "d"], [["0"]], [[3]]), "h[2][0]", "token indices"),
    (fewrel_row(["a", "b", "c", "d"], [], [[3]]), "h", r"\[name, id"),
    (fewrel_row(["a", "b", "c", "d"], [[1]], [[0, 1]]), "tail.start", "overlap"),
    (fewrel_row(["a", " ", "c", "d"], [[1]], [[3]]), "h[2][0]", "only whitespace"),
    (fewrel_row("a b c d", [[0]], [[3]]), "tokens", "must be a list"),
    ({"tokens": ["a", "b"], "h": ["x", "Q1", [[0]]]}, "t", "is missing"),
])
def test_fewrel_errors(tmp_path: Path, row: dict, field: str, needle: str) -> None:
    data = fewrel_data()
    data["P131"].append(row)
    path = write_json(tmp_path / "bad.json", data)
    with pytest.raises(DataError, match=needle) as exc:
        read_fewrel(path)
    check(exc, path, "P131[2]", field)


def test_fewrel_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_fewrel(tmp_path / "absent.json")
    path = write(tmp_path / "broken.json", '{"P1": [')
    with pytest.raises(DataError, match="invalid JSON at line 1 column 9") as exc:
        read_fewrel(path)
    check(exc, path, None, None)
    path = write_json(tmp_path / "list.json", [])
    with pytest.raises(DataError, match="expected a JSON object"):
        read_fewrel(path)


def test_pid2name(tmp_path: Path) -> None:
    path = write_json(tmp_path / "pid2name.json", {"P17": ["country", "sovereign state"]})
    assert read_pid2name(path) == {"P17": ("country", "sovereign state")}
    bad = write_json(tmp_path / "bad.json", {"P17": ["country", "x"], "P18": ["image"]})
    with pytest.raises(DataError, match=r"expected \[name, description\]") as exc:
        read_pid2name(bad)
    check(exc, bad, "P18", None)


# ---------------------------------------------------------------------------------------------
# JSONL (our own format)

TOKEN_ROW = {"id": "a1", "tokens": ["Mira", "founded", "Acme", "Labs", "."],
             "head": {"start": 0, "end": 1, "type": "PERSON", "text": "Mira"},
             "tail": {"start": 2, "end": 4, "type": "ORG"},
             "relation": "org:founded_by", "source": "llm", "provenance": {"model": "m1"}}
TEXT_ROW = {"text": "Tomas O'Neil moved to Port-au-Prince in 2004.",
            "head": {"start": 0, "end": 12, "type": "PERSON", "text": "Tomas O'Neil"},
            "tail": {"start": 22, "end": 36},
            "relation": "per:cities_of_residence"}


def write_jsonl(path: Path, rows: list, blank: bool = False) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    return write(path, ("\n\n" if blank else "\n").join(lines) + "\n")


def test_jsonl_valid(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mix.jsonl", [TOKEN_ROW, TEXT_ROW], blank=True)
    a, b = read_jsonl(path)
    assert a == Instance(id="a1", tokens=("Mira", "founded", "Acme", "Labs", "."),
                         head=Span(0, 1, "Mira", "PERSON"), tail=Span(2, 4, "Acme Labs", "ORG"),
                         relation="org:founded_by", source="llm")
    assert a.provenance == {"model": "m1"}
    # text form: character offsets become token spans; missing id -> stem-line (line 3)
    assert b == Instance(id="mix-3",
                         tokens=("Tomas", "O'Neil", "moved", "to", "Port-au-Prince", "in", "2004",
                                 "."),
                         head=Span(0, 2, "Tomas O'Neil", "PERSON"),
                         tail=Span(4, 5, "Port-au-Prince", None),
                         relation="per:cities_of_residence")
    assert (b.source, b.provenance) == ("gold", {"file": "mix.jsonl", "record": "3"})
    assert read_instances(path) == [a, b]


def without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def with_span(row: dict, role: str, **span: object) -> dict:
    return {**row, role: {**row[role], **span}}


@pytest.mark.parametrize(("row", "field", "needle"), [
    ('{"id": "x", "tokens": ["a", "b"],', None, "invalid JSON"),
    ("[1, 2]", None, "must be a JSON object"),
    (without(TOKEN_ROW, "relation"), "relation", "is missing"),
    (without(TOKEN_ROW, "tokens"), "tokens", "exactly one of tokens"),
    ({**TOKEN_ROW, "text": "Mira founded Acme Labs."}, "tokens", "exactly one of tokens"),
    (with_span(TOKEN_ROW, "head", start="0"), "head.start", "must be an integer"),
    (without(TOKEN_ROW, "tail"), "tail", "is missing"),
    ({**TOKEN_ROW, "head": [0, 1]}, "head", "must be an object"),
    (with_span(TOKEN_ROW, "tail", end=6), "tail.start", "not inside the 5 tokens"),
    (with_span(TOKEN_ROW, "tail", start=0, end=2), "tail.start", "overlap"),
    (with_span(TOKEN_ROW, "head", text="Mina"), "head.text", "does not match"),
    (with_span(TOKEN_ROW, "head", type=3), "head.type", "string or null"),
    ({**TOKEN_ROW, "tokens": ["Mira", "founded", "Acme", "Labs", ""]}, "tokens", "non-empty"),
    ({**TOKEN_ROW, "source": "robot"}, "source", "must be one of"),
    ({**TOKEN_ROW, "provenance": {"n": 1}}, "provenance", "object of strings"),
    (with_span(TEXT_ROW, "head", end=3), "head.end", "not at the end of a token"),
    (with_span(TEXT_ROW, "tail", start=23), "tail.start", "not at the start of a token"),
    (with_span(TEXT_ROW, "tail", end=99), "tail.end", "past the text"),
    (with_span(TEXT_ROW, "tail", start=5, end=5), "tail.start", "empty or negative"),
    (with_span(TEXT_ROW, "head", text="Tomas"), "head.text", "does not match"),
])
def test_jsonl_errors(tmp_path: Path, row: object, field: str | None, needle: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [TOKEN_ROW, TEXT_ROW, row], blank=True)
    with pytest.raises(DataError, match=needle) as exc:
        read_jsonl(path)
    check(exc, path, 5, field)  # third record, blank lines between: line 5


def test_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file") as exc:
        read_instances(tmp_path / "absent.jsonl")
    check(exc, tmp_path / "absent.jsonl", None, None)


# ---------------------------------------------------------------------------------------------
# the text / token form of one record (JSONL lines and the service's items share it)


def test_record_words_and_span_text_form() -> None:
    text, tokens, offsets = record_words(TEXT_ROW)
    assert text == TEXT_ROW["text"]
    assert tokens == ["Tomas", "O'Neil", "moved", "to", "Port-au-Prince", "in", "2004", "."]
    assert offsets[4] == (22, 36)
    assert record_span(TEXT_ROW["head"], "head", text, tokens, offsets) == Span(
        0, 2, "Tomas O'Neil", "PERSON")
    assert record_span({"start": 22, "end": 36, "type": ""}, "tail", text, tokens,
                       offsets) == Span(4, 5, "Port-au-Prince", None)  # "" type: none


def test_record_words_and_span_token_form() -> None:
    text, tokens, offsets = record_words(TOKEN_ROW)
    assert (text, tokens, offsets) == (None, TOKEN_ROW["tokens"], [])
    assert record_span(TOKEN_ROW["tail"], "tail", text, tokens, offsets) == Span(
        2, 4, "Acme Labs", "ORG")


@pytest.mark.parametrize(("row", "value", "field", "needle"), [
    ({"text": "a b", "tokens": ["a", "b"]}, None, "items[0].tokens", "exactly one of tokens"),
    ({}, None, "items[0].tokens", "exactly one of tokens"),
    ({"text": "  "}, None, "items[0].text", "non-empty string"),
    ({"text": " \u00a0 "}, None, "items[0].text", "non-empty string"),
    ({"tokens": []}, None, "items[0].tokens", "non-empty list"),
    ({"tokens": ["a", 3]}, None, "items[0].tokens", "token 1 must be a string"),
    ({"tokens": ["a", "b "]}, None, "items[0].tokens", "surrounding whitespace"),
    ({"text": "Ada met Bob ."}, [0, 3], "items[0].head", "must be an object"),
    ({"text": "Ada met Bob ."}, None, "items[0].head", "is missing"),
    ({"text": "Ada met Bob ."}, {"start": 0}, "items[0].head.end", "is missing"),
    ({"text": "Ada met Bob ."}, {"start": 20, "end": 23}, "items[0].head.start", "outside"),
    ({"text": "Ada met Bob ."}, {"start": 0, "end": 23}, "items[0].head.end", "past the text"),
    ({"text": "Ada met Bob ."}, {"start": 1, "end": 3}, "items[0].head.start", "start of a"),
    ({"text": "Ada met Bob ."}, {"start": 0, "end": 2}, "items[0].head.end", "end of a token"),
    ({"text": "Ada met Bob ."}, {"start": 3, "end": 3}, "items[0].head.start", "empty"),
    ({"text": "Ada met Bob ."}, {"start": 0, "end": 3, "text": "Bob"}, "items[0].head.text",
     "does not match characters"),
    ({"tokens": ["Ada", "met"]}, {"start": 1, "end": 3}, "items[0].head.start",
     "not inside the 2 tokens"),
    ({"tokens": ["Ada", "met"]}, {"start": 0, "end": 1, "text": "met"}, "items[0].head.text",
     "does not match the tokens"),
    ({"tokens": ["Ada", "met"]}, {"start": 0, "end": 1, "type": 7}, "items[0].head.type",
     "string or null"),
])
def test_record_errors_name_the_field_under_where(row: dict, value: object, field: str,
                                                  needle: str) -> None:
    with pytest.raises(DataError, match=needle) as exc:
        words = record_words(row, "items[0]")
        record_span(value, "items[0].head", *words)
    assert exc.value.field == field, exc.value


# ---------------------------------------------------------------------------------------------
# Parquet


def sample_instances() -> list[Instance]:
    return [
        Instance(id="p1", tokens=("Mira", "founded", "Acme", "Labs", "."),
                 head=Span(0, 1, "Mira", "PERSON"), tail=Span(2, 4, "Acme Labs", None),
                 relation="org:founded_by", source="llm",
                 provenance={"model": "m1", "prompt": "7"}),
        Instance(id="p2", tokens=("x", "y"), head=Span(0, 1, ""), tail=Span(1, 2, ""),
                 relation="Other"),
    ]


def test_parquet_round_trip(tmp_path: Path) -> None:
    instances = sample_instances()
    path = tmp_path / "out" / "train.parquet"
    write_parquet(instances, path)
    back = read_parquet(path)
    assert back == instances
    assert [inst.provenance for inst in back] == [{"model": "m1", "prompt": "7"}, {}]
    assert back[0].tail.type is None and back[1].head.type is None
    assert back[1].head.text == "x"
    assert read_instances(path) == instances
    schema = pq.read_schema(path)
    provenance = schema.field("provenance").type
    assert isinstance(provenance, pa.MapType)
    assert (provenance.key_type, provenance.item_type) == (pa.string(), pa.string())
    assert str(schema.field("head").type.field("start").type) == "int32"


def test_parquet_filesystem_and_empty(tmp_path: Path) -> None:
    filesystem = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    filesystem.create_dir("bucket")
    write_parquet(sample_instances(), "bucket/key.parquet", filesystem=filesystem)
    assert read_instances("bucket/key.parquet", filesystem=filesystem) == sample_instances()
    write_parquet([], tmp_path / "empty.parquet")
    assert read_parquet(tmp_path / "empty.parquet") == []


def test_parquet_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file") as exc:
        read_parquet(tmp_path / "absent.parquet")
    check(exc, tmp_path / "absent.parquet", None, None)
    junk = write(tmp_path / "junk.parquet", "not parquet")
    with pytest.raises(DataError, match="cannot read as Parquet") as exc:
        read_parquet(junk)
    check(exc, junk, None, None)
    path = tmp_path / "one.parquet"
    write_parquet(sample_instances(), path)
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["relation"]), tmp_path / "norel.parquet")
    with pytest.raises(DataError, match="column is missing") as exc:
        read_parquet(tmp_path / "norel.parquet")
    check(exc, tmp_path / "norel.parquet", None, "relation")
    span64 = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("text", pa.string()),
                        ("type", pa.string())])
    wide = table.set_column(2, "head", table.column("head").cast(span64))
    pq.write_table(wide, tmp_path / "int64.parquet")  # e.g. another writer's int64 offsets
    assert read_parquet(tmp_path / "int64.parquet") == sample_instances()
    pq.write_table(table.set_column(1, "tokens", pa.array(["a b", "c d"])),
                   tmp_path / "flat.parquet")
    with pytest.raises(DataError, match="does not convert") as exc:
        read_parquet(tmp_path / "flat.parquet")
    check(exc, tmp_path / "flat.parquet", None, "tokens")
    nulls = table.set_column(4, "relation", pa.array(["r", None], pa.string()))
    pq.write_table(nulls, tmp_path / "nulls.parquet")
    with pytest.raises(DataError, match="is null") as exc:
        read_parquet(tmp_path / "nulls.parquet")
    check(exc, tmp_path / "nulls.parquet", 1, "relation")
    with pytest.raises(DataError, match="unknown suffix") as exc:
        read_instances(tmp_path / "data.csv")
    check(exc, tmp_path / "data.csv", None, None)


# ---------------------------------------------------------------------------------------------
# real data (skips when /work/shared/data is absent)


def test_real_semeval(shared_data: Path) -> None:
    folder = shared_data / "semeval2010_task8"
    train = read_semeval(folder / "TRAIN_FILE.TXT")
    assert len(train) == 8000
    assert len({inst.relation for inst in train}) == 19
    assert [inst.id for inst in train[:3]] == ["1", "2", "3"]
    assert len({inst.id for inst in train}) == 8000
    test = read_semeval(folder / "TEST_FILE_FULL.TXT")
    assert len(test) == 2717
    assert {inst.relation for inst in test} <= {inst.relation for inst in train}


def test_real_fewrel(shared_data: Path) -> None:
    folder = shared_data / "fewrel"
    names = read_pid2name(folder / "pid2name.json")
    instances = read_fewrel(folder / "val_wiki.json", names)
    assert len(instances) == 16 * 700
    relations = {inst.relation for inst in instances}
    assert len(relations) == 16
    assert all(sum(inst.relation == r for inst in instances) == 700 for r in relations)
    assert all(names[r][0] for r in relations)


def test_semeval_descriptions_follow_direction() -> None:
    # the label's (e1,e2) / (e2,e1) decides which role the head plays; Other has no meaning
    forward = readers.semeval_description("Cause-Effect(e1,e2)")
    backward = readers.semeval_description("Cause-Effect(e2,e1)")
    assert "head entity is the cause and the tail entity is the effect" in forward
    assert "head entity is the effect and the tail entity is the cause" in backward
    assert readers.semeval_description("Other") == ""
    assert readers.semeval_description("Made-Up(e1,e2)") == ""
    assert all(readers.semeval_description(f"{name}(e2,e1)") for name in readers.SEMEVAL_RELATIONS)
