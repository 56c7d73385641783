"""tkre.extract: the wire format, the extractor (trained + registered relations) and the
registry on disk/S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tiny import make_tiny_encoder
from tkre import storage
from tkre.extract import Extractor
from tkre.extract.extractor import TrainedLabelError
from tkre.extract.prototypes import Calibration
from tkre.extract.wire import RequestLimits, limits_from, load_json, parse_item, parse_items
from tkre.finetune.model import (
    ModelMeta,
    RelationClassifier,
    load_encoder,
    predict_proba,
    save_classifier,
)
from tkre.schema import DataError

LABELS = ["no_relation", "per:city_of_birth", "org:founded_by"]
TEXT = "John Smith was born in Paris ."  # John Smith = [0, 10), Paris = [23, 28)


def item(text=TEXT, head=(0, 10), tail=(23, 28), **extra) -> dict:
    return {"text": text, "head": {"start": head[0], "end": head[1]},
            "tail": {"start": tail[0], "end": tail[1]}, **extra}


def make_model_root(root: Path, encoder_dir: Path, labels: list[str] = LABELS,
                    typed: bool = True) -> Path:
    """ROOT/finetune/model with a tiny random encoder and head (what jobs/finetune.py writes)."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = RelationClassifier(load_encoder(encoder_dir), len(labels))
    meta = ModelMeta(labels=labels, no_relation="no_relation", typed_markers=typed,
                     max_length=64, encoder_source=str(encoder_dir))
    save_classifier(model, AutoTokenizer.from_pretrained(encoder_dir), meta,
                    root / "finetune" / "model")
    return root


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    encoder = make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))
    return make_model_root(tmp_path_factory.mktemp("root"), encoder)


@pytest.fixture
def root(model_root: Path, tmp_path: Path) -> Path:
    """A fresh copy per test, so registrations do not leak between tests."""
    storage.download_dir(model_root, tmp_path / "root")
    return tmp_path / "root"


# --- the wire format ------------------------------------------------------------------------

def test_text_item_becomes_token_spans():
    (inst,) = parse_item(item() | {"head": {"start": 0, "end": 10, "type": "person"}}).instances
    assert inst.tokens == ("John", "Smith", "was", "born", "in", "Paris", ".")
    assert (inst.head.start, inst.head.end, inst.head.text, inst.head.type) == (
        0, 2, "John Smith", "person")
    assert (inst.tail.start, inst.tail.end, inst.tail.type) == (5, 6, None)


def test_token_item_and_entities_yield_every_ordered_pair():
    parsed = parse_item({"tokens": ["Ada", "met", "Bob", "in", "Rome"],
                         "entities": [{"start": 0, "end": 1}, {"start": 2, "end": 3},
                                      {"start": 4, "end": 5}]})
    assert parsed.pairs == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert [(i.head.text, i.tail.text) for i in parsed.instances][:2] == [
        ("Ada", "Bob"), ("Ada", "Rome")]


@pytest.mark.parametrize(("bad", "field"), [
    ({"text": "", "head": {"start": 0, "end": 1}, "tail": {"start": 1, "end": 2}}, "item.text"),
    ({"text": "   ", "head": {"start": 0, "end": 1}, "tail": {"start": 1, "end": 2}},
     "item.text"),
    (item(tail=(23, 40)), "item.tail"),                      # past the end of the text
    (item(tail=(40, 45)), "item.tail.start"),                # starts past the end
    (item(head=(1, 10)), "item.head"),                       # cuts the token "John"
    (item(tail=(0, 10)), "item.tail.start"),                 # identical to the head
    (item(tail=(24, 28)), "item.tail"),                      # cuts the token "Paris"
    ({"text": TEXT, "head": {"start": 0, "end": 10}}, "item.tail"),
    (item(entities=[{"start": 0, "end": 4}, {"start": 23, "end": 28}]), "item.entities"),
    ({"text": TEXT, "entities": [{"start": 0, "end": 10}]}, "item.entities"),
    ({"text": TEXT, "entities": [{"start": 0, "end": 10}, {"start": 5, "end": 10}]},
     "item.entities[1]"),
    ({"tokens": ["a", " b"], "head": {"start": 0, "end": 1}, "tail": {"start": 1, "end": 2}},
     "item.tokens"),
    ({"tokens": ["a", "b"], "head": {"start": 0, "end": 1}, "tail": {"start": 1, "end": 3}},
     "item.tail.start"),
    ({"text": TEXT, "tokens": ["a"], "head": {"start": 0, "end": 1},
      "tail": {"start": 1, "end": 2}}, "item.tokens"),
    (item() | {"head": {"start": 0, "end": 10, "type": "x" * 65}}, "item.head.type"),
    (item() | {"head": {"start": "0", "end": 4}}, "item.head.start"),
    ("not an object", "item"),
])
def test_bad_items_name_the_field(bad, field):
    with pytest.raises(DataError) as err:
        parse_item(bad)
    assert err.value.field == field or err.value.field.startswith(field), err.value


@pytest.mark.parametrize("row", [
    {"text": "Tomas O'Neil moved to Port-au-Prince in 2004.",
     "head": {"start": 0, "end": 12, "type": "PERSON", "text": "Tomas O'Neil"},
     "tail": {"start": 22, "end": 36}},
    {"tokens": ["Mira", "founded", "Acme", "Labs", "."],
     "head": {"start": 0, "end": 1, "type": "PERSON"}, "tail": {"start": 2, "end": 4}},
])
def test_a_wire_item_reads_as_the_same_jsonl_line(row: dict, tmp_path: Path):
    """One reader of the text/token form: a request item and a JSONL line with the same text
    and offsets give the same tokens and spans, and the same error for the same bad span."""
    from tkre.data.readers import read_jsonl

    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(row | {"relation": "r"}) + "\n")
    (line,) = read_jsonl(path)
    (wire,) = parse_item(row, relation="r").instances
    assert (wire.tokens, wire.head, wire.tail) == (line.tokens, line.head, line.tail)
    bad = row | {"tail": {"start": row["tail"]["start"], "end": 99}}
    path.write_text(json.dumps(bad | {"relation": "r"}) + "\n")
    with pytest.raises(DataError) as from_file:
        read_jsonl(path)
    with pytest.raises(DataError) as from_wire:
        parse_item(bad, "items[3]")
    assert from_wire.value.message == from_file.value.message
    assert from_wire.value.field == f"items[3].{from_file.value.field}"


def test_overlapping_head_and_tail_is_rejected():
    with pytest.raises(DataError, match="overlap") as err:
        parse_item(item(head=(0, 10), tail=(5, 10)))
    assert err.value.field.startswith("item.")
    with pytest.raises(DataError, match="overlap"):
        parse_item({"tokens": ["a", "b", "c"], "head": {"start": 0, "end": 2},
                    "tail": {"start": 1, "end": 3}})


def test_request_limits():
    limits = RequestLimits(max_items=2, max_text_chars=20, max_pairs=3)
    with pytest.raises(DataError, match="limit is 2") as err:
        parse_items([item()] * 3, limits)
    assert err.value.field == "items"
    with pytest.raises(DataError, match="limit is 20") as err:
        parse_items([item()], limits)
    assert err.value.field == "items[0].text"
    short = {"text": "A met B in C .", "entities": [{"start": 0, "end": 1},
                                                   {"start": 6, "end": 7},
                                                   {"start": 11, "end": 12}]}
    with pytest.raises(DataError, match="6 entity pairs"):
        parse_items([short], limits)
    with pytest.raises(DataError) as err:
        parse_items([], limits)
    assert err.value.field == "items"
    assert limits_from({"max_items": "2"}) == RequestLimits(max_items=2)
    with pytest.raises(ValueError, match="unknown limits: max_itms"):
        limits_from({"max_itms": 2})
    with pytest.raises(ValueError, match="limits.max_body_bytes must be a positive integer"):
        limits_from({"max_body_bytes": 0})
    with pytest.raises(DataError, match=r"limit is 20 \(max_example_chars\)") as err:
        parse_item(item(), "examples[0]", RequestLimits(max_example_chars=20),
                   size_limit="max_example_chars")
    assert err.value.field == "examples[0].text"


@pytest.mark.parametrize(("body", "field", "message"), [
    (b'{"a": [1, {"b": NaN}]}', "a[1].b", "finite number, got NaN"),
    (b'{"a": 1e999}', "a", "got Infinity"),
    (b'[0, -Infinity]', "body[1]", "got -Infinity"),
    (b'{"t": ["ok", "\\ud800"]}', "t[1]", "lone surrogate"),
    (b'{"t": "\xff"}', "body", "not UTF-8"),
    (b"[" * 100_000, "body", "nested too deeply"),
    (b'{"a": ' + b"1" * 5000 + b"}", "body", "4300 digits"),
    (b"{", "body", "not valid JSON"),
    (b"", "body", "not valid JSON"),
])
def test_load_json_names_the_field_of_a_bad_body(body: bytes, field: str, message: str):
    with pytest.raises(DataError, match=message) as err:
        load_json(body)
    assert err.value.field == field


def test_load_json_reads_ordinary_json():
    assert load_json(b'{"t": "\\ud83d\\ude00 \\u00e9", "n": [1.5, -2, 1e300, null, true]}'
                     ) == {"t": "\U0001F600 \u00e9", "n": [1.5, -2, 1e300, None, True]}


# --- prediction and run-time relations ------------------------------------------------------

def test_without_registrations_predictions_are_the_trained_models(root: Path):
    extractor = Extractor.from_root(str(root))
    (result,) = extractor.extract([item()], top_k=3)
    parsed = parse_items([item()])
    probs = predict_proba(extractor.model, extractor.tokenizer, extractor.meta,
                          parsed[0].instances)[0]
    assert result["relation"] == LABELS[int(probs.argmax())]
    assert result["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert [r["relation"] for r in result["top_k"]] == [LABELS[i] for i in
                                                        probs.argsort(descending=True)]
    assert sum(r["score"] for r in result["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_entities_item_answers_every_pair(root: Path):
    extractor = Extractor.from_root(str(root))
    (result,) = extractor.extract([{"text": TEXT, "entities": [
        {"start": 0, "end": 10}, {"start": 23, "end": 28}]}], top_k=1)
    assert [(p["head"], p["tail"]) for p in result["pairs"]] == [(0, 1), (1, 0)]
    assert all(len(p["top_k"]) == 1 and p["relation"] in LABELS for p in result["pairs"])


def test_registered_relation_competes_with_trained_labels(root: Path):
    extractor = Extractor.from_root(str(root))
    info = extractor.register("born_in", [item(), item(text="Mary Jones was born in Rome .",
                                                       head=(0, 10), tail=(23, 27))],
                              description="person -> birthplace")
    assert info == {"name": "born_in", "kind": "registered", "description":
                    "person -> birthplace", "examples": 2, "no_relation": False,
                    "margin_threshold": None}  # the tiny root has no reference sentences
    # the query is one of the examples: cosine to the prototype is high, so q beats softmax
    (result,) = extractor.extract([item()], top_k=4)
    assert result["relation"] == "born_in"
    names = [r["relation"] for r in result["top_k"]]
    assert set(names) == {"born_in", *LABELS}
    embedding = extractor.pair_encoder.embed(parse_items([item()])[0].instances)
    prototype = extractor.registry.snapshot()[1]
    expected = extractor.calibration.probability(embedding @ prototype.T)
    assert result["score"] == pytest.approx(float(expected), abs=1e-5)

    # a threshold no cosine reaches: q ~ 0, the trained label wins again, scores unchanged
    extractor.calibration = Calibration(threshold=2.0, temperature=0.05)
    (again,) = extractor.extract([item()], top_k=4)
    assert again["relation"] in LABELS and again["top_k"][-1]["relation"] == "born_in"
    assert again["top_k"][-1]["score"] < 1e-6


def test_register_rejects_bad_requests(root: Path):
    extractor = Extractor.from_root(str(root))
    for name, examples, field in [
            ("no_relation", [item()], "name"),        # a trained label
            ("bad name!", [item()], "name"),
            ("", [item()], "name"),
            ("abc\n", [item()], "name"),             # became the file "abc\n.json"
            ("ok", [], "examples"),
            ("ok", [item(tail=(23, 29))], "examples[0].tail.end"),
            ("ok", [{"text": TEXT, "entities": [{"start": 0, "end": 10},
                                                {"start": 23, "end": 28}]}],
             "examples[0].head")]:
        with pytest.raises(DataError) as err:
            extractor.register(name, examples)
        assert err.value.field == field, err.value
    assert storage.list_files(root / "extract") == []


def test_a_registration_is_embedded_once(root: Path, monkeypatch):
    """register embeds the examples; the refreshes after it find its own file unchanged."""
    extractor = Extractor.from_root(str(root), refresh_s=0)
    calls: list[int] = []
    embed = extractor.registry.embed
    monkeypatch.setattr(extractor.registry, "embed",
                        lambda instances: calls.append(len(instances)) or embed(instances))
    extractor.register("born_in", [item(), item(text="Mary Jones was born in Rome .",
                                                  head=(0, 10), tail=(23, 27))])
    assert extractor.extract([item()])[0]["relation"] == "born_in"
    assert [r["name"] for r in extractor.relations()][-1] == "born_in"
    assert calls == [2]
    extractor.register("born_in", [item()], description="replaced")  # new content: embedded
    other = Extractor.from_root(str(root), refresh_s=0)  # another replica embeds it itself
    assert [r["description"] for r in other.relations()][-1] == "replaced"
    assert calls == [2, 1]


def test_register_limits_and_unregister_names(root: Path):
    extractor = Extractor.from_root(str(root))
    limits = RequestLimits(max_examples=2, max_description_chars=5, max_relations=1)
    for name, examples, description, field, limit in [
            ("r", [item()] * 3, "", "examples", "max_examples"),
            ("r", [item()], "x" * 6, "description", "max_description_chars")]:
        with pytest.raises(DataError, match=f"\\({limit}\\)") as err:
            extractor.register(name, examples, description, limits)
        assert err.value.field == field
    extractor.register("r", [item()], "", limits)
    extractor.register("r", [item()] * 2, "again", limits)  # a replacement is not one more
    with pytest.raises(DataError, match=r"limit is 1 \(max_relations\)") as err:
        extractor.register("s", [item()], "", limits)
    assert err.value.field == "name"
    for bad in ("../r", "r/x", "a\x00", "-r"):
        with pytest.raises(DataError) as err:
            extractor.unregister(bad)
        assert err.value.field == "name"


def test_registry_skips_files_that_no_relation_name_can_have(root: Path):
    extractor = Extractor.from_root(str(root), refresh_s=0)
    extractor.register("born_in", [item()])
    folder = root / "extract" / "relations"
    row = json.loads((folder / "born_in.json").read_text())
    for file in ("abc\n.json", "-x.json", "a b.json"):
        (folder / file).write_text(json.dumps(row))
    assert [r["name"] for r in extractor.relations() if r["kind"] == "registered"] == [
        "born_in"]


def test_registrations_persist_and_reach_other_extractors(root: Path):
    first = Extractor.from_root(str(root), refresh_s=0)
    second = Extractor.from_root(str(root), refresh_s=0)
    first.register("born_in", [item()])
    assert storage.list_files(root / "extract" / "relations") == ["born_in.json"]
    assert second.extract([item()])[0]["relation"] == "born_in"
    restarted = Extractor.from_root(str(root))
    assert [r["name"] for r in restarted.relations() if r["kind"] == "registered"] == [
        "born_in"]
    assert second.unregister("born_in") and not second.unregister("born_in")
    assert first.extract([item()])[0]["relation"] in LABELS
    assert [r["kind"] for r in first.relations()] == ["trained"] * len(LABELS)
    with pytest.raises(TrainedLabelError, match="trained label"):
        first.unregister("no_relation")


def test_extract_is_prepare_predict_results(root: Path):
    """The three steps the Serve deployment calls one by one give extract's answer; predict
    scores the pairs of several requests together (one batch) as each alone."""
    extractor = Extractor.from_root(str(root))
    requests = [[item()], [{"text": TEXT, "entities": [{"start": 0, "end": 10},
                                                       {"start": 23, "end": 28}]}]]
    prepared = [extractor.prepare(items, top_k=2) for items in requests]
    pooled = extractor.predict([e for _, encoded in prepared for e in encoded], top_k=10,
                               batch_size=8)
    assert len(pooled) == 3
    answers = [extractor.results(prepared[0][0], pooled[:1], 2),
               extractor.results(prepared[1][0], pooled[1:], 2)]
    for items, answer in zip(requests, answers, strict=True):
        names, scores = _flat(answer)
        expected_names, expected_scores = _flat(extractor.extract(items, top_k=2))
        assert names == expected_names  # padding differs between the batches: scores ~equal
        assert scores == pytest.approx(expected_scores, abs=1e-5)


def _flat(results: list[dict]) -> tuple[list, list[float]]:
    """(every relation name and pair index, every score) of extract's results, in order."""
    rows = [pair for result in results for pair in result.get("pairs", [result])]
    names = [(r.get("head"), r.get("tail"), r["relation"], [t["relation"] for t in r["top_k"]])
             for r in rows]
    return names, [s for r in rows for s in (r["score"], *(t["score"] for t in r["top_k"]))]


def test_a_registry_storage_error_keeps_predictions_going(root: Path, monkeypatch, caplog):
    extractor = Extractor.from_root(str(root), refresh_s=0)
    extractor.register("born_in", [item()])

    def broken(*_, **__):
        raise OSError("storage is down")

    monkeypatch.setattr(extractor.registry, "_listing", broken)
    (result,) = extractor.extract([item()], top_k=4)
    assert result["relation"] == "born_in"  # the relations already known are still used
    assert "relation registry refresh failed" in caplog.text


def test_extract_checks_top_k_and_entities_that_cannot_fit(root: Path):
    extractor = Extractor.from_root(str(root))
    with pytest.raises(DataError) as err:
        extractor.extract([item()], top_k=0)
    assert err.value.field == "top_k"
    far = "A " + "word " * 80 + "B ."  # the model's max_length is 64 sub-tokens
    with pytest.raises(DataError, match="sub-tokens apart") as err:
        extractor.extract([{"text": far, "head": {"start": 0, "end": 1},
                            "tail": {"start": len(far) - 3, "end": len(far) - 2}}])
    assert err.value.field == "items[0].tail"
    extractor.self_check()


# --- an s3:// root ----------------------------------------------------------------------------

def test_s3_root_model_download_and_shared_registry(model_root: Path, bucket: str,
                                                    tmp_path: Path):
    root = f"s3://{bucket}/runs/demo"
    storage.upload_dir(model_root, root)
    storage.write_json(storage.join(root, "extract", "calibration.json"),
                       {"threshold": 0.5, "temperature": 0.1})
    first = Extractor.from_root(root, refresh_s=0)
    assert str(first.pair_encoder.encoder.name_or_path).startswith(str(tmp_path / "cache"))
    assert first.calibration == Calibration(0.5, 0.1)
    second = Extractor.from_root(root, refresh_s=0)
    first.register("born_in", [item()])
    assert storage.list_files(storage.join(root, "extract", "relations")) == ["born_in.json"]
    assert any(r["name"] == "born_in" for r in second.relations())
    assert second.unregister("born_in")
    assert not storage.exists(storage.join(root, "extract", "relations", "born_in.json"))
    assert [r["kind"] for r in first.relations()] == ["trained"] * len(LABELS)


# --- raw text -> triples ----------------------------------------------------------------------

STORY = ("Amara Nwosu practices medicine in Nigeria, where she has lived since 1998.  "
         "Felix Drummond was turned down by Halvard College.\n")
NO_RELATION_TEXT = "Felix Drummond was turned down by Halvard College."


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder-text"))


def never_no_relation(extractor: Extractor) -> Extractor:
    """The tiny model with its no-relation logit pushed down: every pair gets a relation."""
    with torch.no_grad():
        extractor.model.head[-1].bias[LABELS.index("no_relation")] = -30.0
    return extractor


def check_triples(text: str, found: list[dict]) -> None:
    for triple in found:
        assert set(triple) == {"head", "tail", "relation", "score", "sentence"}
        for role in ("head", "tail"):
            arg = triple[role]
            assert set(arg) == {"text", "start", "end", "type"}
            assert text[arg["start"]:arg["end"]] == arg["text"] and arg["text"].strip()


def test_extract_text_gives_triples_with_offsets_into_the_text(root: Path):
    extractor = never_no_relation(Extractor.load(str(root)))
    found = extractor.extract_text(STORY)
    check_triples(STORY, found)
    second = STORY.index("Felix")
    assert {t["sentence"] for t in found} == {0, 1}
    assert all((t["head"]["start"] >= second) == (t["sentence"] == 1) for t in found)
    pair = next(t for t in found if t["head"]["text"] == "Amara Nwosu"
                and t["tail"]["text"] == "Nigeria")
    assert pair["tail"]["type"] == "GPE"  # untyped data: the NER label (spaCy's guess)
    assert pair["relation"] in LABELS[1:] and 0 < pair["score"] <= 1
    # the batched form: the same triples, document by document
    batched = extractor.extract_texts([STORY, "", "No names here.", STORY], batch_size=3)
    assert [len(b) for b in batched] == [len(found), 0, 0, len(found)]
    for got in (batched[0], batched[3]):
        assert [{**t, "score": 0} for t in got] == [{**t, "score": 0} for t in found]
        assert [t["score"] for t in got] == pytest.approx([t["score"] for t in found],
                                                          abs=1e-5)
    from tkre import Extractor as exported

    assert exported is Extractor and Extractor.load(
        str(root / "finetune" / "model")).registry is None  # a model folder loads too


def test_types_of_a_typed_data_set_filter_and_label_the_pairs(root: Path):
    """Demo-like schema: an NER label becomes the schema types it may stand for, and a pair is
    scored once per (head, tail) type pair some relation allows."""
    from tkre.extract.candidates import TypeFilter
    from tkre.schema import RelationSchema

    extractor = never_no_relation(Extractor.load(str(root)))
    extractor.types = TypeFilter.from_schemas([
        RelationSchema("per:city_of_birth", head_types=("person",), tail_types=("city",)),
        RelationSchema("org:founded_by", head_types=("organization",),
                       tail_types=("person",))])
    text = "John Smith was born in Paris. Acme Corp was founded by John Smith."
    plan, encoded = extractor.prepare_texts([text])
    scored = {(c.head.text, c.head.type, c.tail.text, c.tail.type) for c in plan.candidates}
    assert ("John Smith", "person", "Paris", "city") in scored
    assert all((h, t) in {("person", "city"), ("organization", "person")}
               for _, h, _, t in scored)
    assert len(encoded) == len(plan.candidates)
    found = extractor.extract_text(text, thresholds={"*": 0.0})
    check_triples(text, found)
    for t in found:
        assert extractor.types.allows(t["relation"], t["head"]["type"], t["tail"]["type"])


def test_a_long_document_is_read_by_sentence_and_offsets_map_back(root: Path):
    """100 kB and more (several spaCy blocks), with paragraphs, odd spacing and non-ASCII
    names: every triple's offsets point at its text in the original document. Most sentences
    hold no candidate (pronouns only), so the model sees few pairs."""
    extractor = never_no_relation(Extractor.load(str(root)))
    named = ["Zoë Ångström was born in São Paulo in 1970.",
             "Mr.  Ben Carter joined Acme Corp. in the U.S. last May."]
    filler = "It rained and it rained again, so they stayed there. " * 20
    paragraphs, i = [], 0
    while sum(map(len, paragraphs)) < 100_000:
        paragraphs.append(f"{filler}{named[i % 2]}\t{filler.strip()}")
        i += 1
    text = "\n\n".join(paragraphs)
    assert len(text) >= 100_000 > extractor.candidate_config.block_chars * 4
    found = extractor.extract_text(text)
    check_triples(text, found)
    heads = {t["head"]["text"] for t in found}
    assert {"Zoë Ångström", "São Paulo", "Ben Carter"} <= heads
    last = named[(i - 1) % 2]
    assert found[-1]["head"]["start"] > text.rindex(last) - 1 > 99_000 - len(filler)
    assert found[-1]["sentence"] > 40 * i  # every filler sentence counted
    assert [t["sentence"] for t in found] == sorted(t["sentence"] for t in found)


def test_thresholds_are_checked_and_applied(root: Path):
    extractor = never_no_relation(Extractor.load(str(root)))
    everything = extractor.extract_text(STORY)
    relations = {t["relation"] for t in everything}
    assert everything and extractor.extract_text(STORY, {"*": 1.0}) == []
    dropped = sorted(relations)[0]
    rest = extractor.extract_text(STORY, {dropped: 1.0})
    assert rest == [t for t in everything if t["relation"] != dropped]
    for bad, field in [({"born": 0.5}, "thresholds.born"), ({"*": 1.5}, "thresholds.*"),
                       ({LABELS[1]: "0.5"}, f"thresholds.{LABELS[1]}"),
                       ({LABELS[1]: True}, f"thresholds.{LABELS[1]}"), ([0.5], "thresholds")]:
        with pytest.raises(DataError) as err:
            extractor.extract_text(STORY, bad)
        assert err.value.field == field, (bad, err.value)
    extractor.register("born_in", [item()])  # a run-time relation takes a threshold too
    assert "born_in" not in {t["relation"] for t in extractor.extract_text(STORY,
                                                                          {"born_in": 1.0})}


def test_best_threshold_maximises_dev_f1():
    from tkre.extract.thresholds import best_threshold

    # 2 positives: one right at 0.9, one wrong at 0.5; negatives kept at 0.7 and 0.3
    kept = [(0.9, True), (0.7, False), (0.5, False), (0.3, False)]
    threshold, f1, at_zero = best_threshold(kept, positives=2)
    assert threshold == pytest.approx(0.8) and f1 == pytest.approx(2 / 3)
    assert at_zero == pytest.approx(2 / (2 + 3 + 1))
    assert best_threshold([(0.9, True), (0.8, True)], positives=2) == (0.0, 1.0, 1.0)
    assert best_threshold([], positives=3) == (0.0, 0.0, 0.0)
    # equal scores are kept or dropped together; a tie in F1 goes to the lower threshold
    assert best_threshold([(0.6, True), (0.6, False), (0.2, True)], positives=2)[0] == 0.0


def rule_model(labels: list[str], gold: tuple[str, str], hit: list[float], miss: list[float]):
    """A stand-in for the classifier's forward pass: `hit` for the pair whose head and tail
    start with the words `gold`, `miss` for every other pair (untyped markers)."""
    def forward(self, tensors):
        vocab = self.tokenizer.get_vocab()
        ids, rows = tensors["input_ids"], torch.arange(len(tensors["input_ids"]))
        is_gold = ((ids[rows, tensors["head_pos"] + 1] == vocab[gold[0]])
                   & (ids[rows, tensors["tail_pos"] + 1] == vocab[gold[1]]))
        probs = torch.where(is_gold[:, None], torch.tensor(hit), torch.tensor(miss))
        return torch.zeros(len(ids), 4), probs

    return forward


def test_no_relation_threshold_fitted_on_dev_makes_unrelated_pairs_yield_nothing(
        tiny_encoder: Path, tmp_path: Path, monkeypatch):
    """A model trained without a no-relation label (FewRel-like) gives every pair a relation;
    the threshold fitted on the dev set (gold pair vs. the other candidate pairs of the dev
    sentences) keeps the related pair and drops the rest."""
    from tkre import layout
    from tkre.data.text import tokenize_with_offsets
    from tkre.extract.candidates import CandidateFinder
    from tkre.extract.thresholds import fit_text_settings
    from tkre.schema import Instance, Span

    labels = ["per:country_of_residence", "per:employee_of"]
    root = make_model_root(tmp_path / "root", tiny_encoder, labels, typed=False)
    monkeypatch.setattr(Extractor, "_forward",
                        rule_model(labels, ("amara", "nigeria"), [0.9, 0.1], [0.6, 0.4]))
    sentence = STORY.split("  ")[0]
    tokens, _ = tokenize_with_offsets(sentence)
    dev = [Instance("dev-1", tuple(tokens), Span(0, 2, ""), Span(5, 6, ""), labels[0])]
    settings = fit_text_settings(str(root), dev, CandidateFinder())
    assert settings["threshold"] == pytest.approx(0.75)  # halfway between 0.9 and 0.6
    assert settings["fit"]["positives"] == 1 and settings["fit"]["candidate_pairs"] >= 4
    assert settings["fit"]["dev_micro_f1"] == 1.0 > settings["fit"][
        "dev_micro_f1_without_threshold"]
    stored = storage.read_json(layout.text_extraction(layout.finetune_model(str(root))))
    assert stored == settings
    extractor = Extractor.load(str(root))
    assert extractor.no_relation_threshold == pytest.approx(0.75)
    [triple] = extractor.extract_text(STORY)
    assert (triple["head"]["text"], triple["tail"]["text"], triple["relation"]) == (
        "Amara Nwosu", "Nigeria", labels[0])
    assert extractor.extract_text(NO_RELATION_TEXT) == []
    assert len(extractor.extract_text(NO_RELATION_TEXT, {"*": 0.0})) >= 2  # without it


def test_a_no_relation_label_yields_nothing(tiny_encoder: Path, tmp_path: Path, monkeypatch):
    root = make_model_root(tmp_path / "root", tiny_encoder, typed=False)
    monkeypatch.setattr(Extractor, "_forward",
                        rule_model(LABELS, ("amara", "nigeria"), [0.05, 0.9, 0.05],
                                   [0.8, 0.1, 0.1]))
    extractor = Extractor.load(str(root))
    assert extractor.extract_text(NO_RELATION_TEXT, {"*": 0.0}) == []
    [triple] = extractor.extract_text(STORY, {"*": 0.0})
    assert (triple["head"]["text"], triple["relation"], triple["score"]) == (
        "Amara Nwosu", LABELS[1], pytest.approx(0.9))


def test_evaluation_fits_the_text_settings_on_the_demo_dev_set(tiny_encoder: Path,
                                                                tmp_path: Path):
    """jobs/evaluate.py's path: test-set metrics, then text_extraction.json in the model
    folder, with the demo's relation types and a threshold fitted on its dev split."""
    from tkre import layout
    from tkre.config import DataConfig, EvaluateConfig
    from tkre.data import datasets
    from tkre.extract.thresholds import evaluate_and_fit

    root = make_model_root(tmp_path / "root", tiny_encoder)
    splits = datasets.prepare(DataConfig(k=4), str(root))
    storage.write_json(layout.finetune_metrics(str(root)), {})
    metrics = evaluate_and_fit(EvaluateConfig(root=str(root), data=DataConfig(k=4),
                                              plot=False))
    settings = storage.read_json(layout.text_extraction(layout.finetune_model(str(root))))
    assert metrics["no_relation_threshold"] == settings["threshold"]
    assert 0.0 <= settings["threshold"] <= 1.0
    assert settings["relation_types"]["per:city_of_birth"] == {"head": ["person"],
                                                              "tail": ["city"]}
    assert "no_relation" not in settings["relation_types"]
    fit = settings["fit"]
    assert fit["positives"] == sum(i.relation in LABELS[1:] for i in splits.dev)
    assert fit["no_relation_instances"] == sum(i.relation == "no_relation" for i in splits.dev)
    assert fit["candidate_pairs"] > 0 and fit["candidates"]["model_version"] == "3.8.0"
    extractor = Extractor.load(str(root))
    assert extractor.types.typed and extractor.no_relation_threshold == settings["threshold"]
