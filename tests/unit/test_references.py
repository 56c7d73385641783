"""Run-time relations held against the trained labels' reference sentences
(tkre.extract.references): the threshold, the gate in prediction, where references come from,
and the open-set measurement of the bench."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.tiny import make_tiny_encoder
from tests.unit.test_extract import LABELS, item, make_model_root
from tkre import layout, storage
from tkre.config import DataConfig
from tkre.data import datasets
from tkre.extract import Extractor
from tkre.extract import references as references_module
from tkre.extract.references import FLIP_RATE, References


def unit(*rows: tuple[float, ...]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


# trained-label sentences: three near direction x (say, "born in"), two near z
REFERENCES = unit((1, 0.1, 0), (1, -0.1, 0), (1, 0, 0.1), (0, 0, 1), (0, 0.1, 1))
EXAMPLE = unit((1, 0.3, 0))[0]      # a new relation close to the x sentences ("died in")
UNRELATED = unit((1, 0.05, 0.02))[0]  # another x sentence: closer to the references
EXPRESSES = unit((1, 0.35, 0))[0]     # closer to the example than to any reference


def test_threshold_is_the_conformal_rank_of_the_leave_one_out_margins(monkeypatch):
    refs = References(REFERENCES, ["a", "a", "a", "b", "b"], "test")
    similarity = REFERENCES @ REFERENCES.T
    expected_nearest = torch.stack([torch.cat([row[:i], row[i + 1:]]).max()
                                    for i, row in enumerate(similarity)])
    assert torch.allclose(refs.nearest, expected_nearest)
    monkeypatch.setattr(references_module, "_CHUNK", 2)  # the chunked pass agrees
    assert torch.allclose(References(REFERENCES, ["a"] * 5, "test").nearest, expected_nearest)

    loo = (REFERENCES @ EXAMPLE - expected_nearest).sort().values
    # n = 5: ceil(6 * 0.98) = 6 > 5, so the largest; at 0.4, ceil(6 * 0.6) = 4th smallest
    assert refs.threshold(EXAMPLE) == pytest.approx(float(loo[-1]))
    assert refs.threshold(EXAMPLE, flip_rate=0.4) == pytest.approx(float(loo[3]))
    margins = refs.margins(torch.stack([UNRELATED, EXPRESSES]), EXAMPLE[None])[:, 0]
    assert margins[0] < refs.threshold(EXAMPLE) < margins[1]
    gate = refs.gate(EXAMPLE)
    assert gate == {"margin": refs.threshold(EXAMPLE), "flip_rate": FLIP_RATE, "references": 5,
                    "fingerprint": refs.fingerprint}
    with pytest.raises(ValueError, match="at least two"):
        References(REFERENCES[:1], ["a"], "test")


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture
def root(tiny_encoder: Path, tmp_path: Path) -> Path:
    return make_model_root(tmp_path / "root", tiny_encoder)


def controlled(root: Path, probabilities: dict[str, list[float]], references=REFERENCES
               ) -> Extractor:
    """The tiny model with the pair vectors above in place of its encoder's: a query's head
    word (one of the tiny vocabulary) picks its vector and its trained-label probabilities."""
    extractor = Extractor.from_root(str(root), refresh_s=0)
    extractor.references = (References(references, ["x"] * len(references), "test")
                            if references is not None else None)
    vectors = {"born": UNRELATED, "died": EXPRESSES, "buried": EXPRESSES}
    ids = {extractor.tokenizer.convert_tokens_to_ids(word): word for word in probabilities}

    def forward(tensors):  # [CLS] @ head-word @ ...
        words = [ids[int(i)] for i in tensors["input_ids"][:, 2]]
        return (torch.stack([vectors[w] for w in words]),
                torch.tensor([probabilities[w] for w in words]))

    extractor._forward = forward
    extractor.registry.embed = lambda instances: EXAMPLE[None].expand(len(instances), -1)
    return extractor


def query(word: str) -> dict:
    return {"tokens": [word, "in", "paris"], "head": {"start": 0, "end": 1},
            "tail": {"start": 2, "end": 3}}


def test_a_relation_takes_only_queries_past_its_gate(root: Path):
    # "buried": the trained model is confident it is its per:city_of_birth
    probabilities = {"born": [0.1, 0.6, 0.3], "died": [0.1, 0.6, 0.3],
                     "buried": [0.02, 0.95, 0.03]}
    extractor = controlled(root, probabilities)
    info = extractor.register("per:city_of_death", [query("paris")])
    assert info["margin_threshold"] == pytest.approx(extractor.references.threshold(EXAMPLE),
                                                     abs=1e-6)
    unrelated, expresses, confident = extractor.extract(
        [query("born"), query("died"), query("buried")], top_k=4)
    # q of the unrelated query beats its best trained label (the rule before the gate would
    # have flipped it), but it is nearer a reference than the example is: not the relation
    q_unrelated = float(extractor.calibration.probability(UNRELATED @ EXAMPLE))
    assert q_unrelated > 0.6
    assert unrelated["relation"] == "per:city_of_birth"
    assert unrelated["top_k"][-1] == {"relation": "per:city_of_death",
                                      "score": pytest.approx(q_unrelated)}
    assert expresses["relation"] == "per:city_of_death"
    assert expresses["score"] == pytest.approx(
        float(extractor.calibration.probability(EXPRESSES @ EXAMPLE)))
    assert confident["relation"] == "per:city_of_birth"  # past the gate, but q < 0.95

    # without references only the calibration gates (q >= 0.5): the unrelated query flips
    bare = controlled(root, probabilities, references=None)
    bare.register("per:city_of_death", [query("paris")])
    assert bare.relations()[-1]["margin_threshold"] is None
    assert "none" in bare.info()["references"]
    assert bare.extract([query("born")])[0]["relation"] == "per:city_of_death"


def test_references_come_from_the_model_folder_else_root_data(tiny_encoder: Path,
                                                               tmp_path: Path):
    from transformers import AutoTokenizer

    from tkre.finetune.model import ModelMeta, RelationClassifier, load_encoder, save_classifier

    bare = make_model_root(tmp_path / "bare", tiny_encoder)
    assert Extractor.from_root(str(bare)).references is None

    lazy = make_model_root(tmp_path / "lazy", tiny_encoder)
    splits = datasets.prepare(DataConfig(), str(lazy))
    from_data = Extractor.from_root(str(lazy)).references
    kept = [i for i in splits.train + splits.dev if i.relation in LABELS]
    assert from_data.labels == [i.relation for i in kept]
    assert "data" in from_data.source

    # what export writes: the same sentences, embedded by the same model
    model = RelationClassifier(load_encoder(lazy / "finetune" / "model" / "encoder"),
                               len(LABELS))
    model.load_state_dict(Extractor.from_root(str(lazy)).model.state_dict())
    meta = ModelMeta(labels=LABELS, no_relation="no_relation", typed_markers=True,
                     max_length=64)
    stored = tmp_path / "stored"
    save_classifier(model, AutoTokenizer.from_pretrained(tiny_encoder), meta,
                    stored / "finetune" / "model", references=splits.train + splits.dev)
    assert (stored / "finetune" / "model" / layout.MODEL_REFERENCE_FILE).exists()
    from_file = Extractor.from_root(str(stored)).references
    assert from_file.labels == from_data.labels and "model" in from_file.source
    assert torch.allclose(from_file.embeddings, from_data.embeddings, atol=1e-5)


def test_the_gate_is_stored_with_the_registration(tiny_encoder: Path, tmp_path: Path):
    root = make_model_root(tmp_path / "root", tiny_encoder)
    datasets.prepare(DataConfig(), str(root))
    first = Extractor.from_root(str(root), refresh_s=0)
    first.register("per:city_of_death", [item()])
    file = root / "extract" / "relations" / "per:city_of_death.json"
    gate = json.loads(file.read_text())["threshold"]
    assert gate["fingerprint"] == first.references.fingerprint
    assert gate["flip_rate"] == FLIP_RATE and math.isfinite(gate["margin"])
    assert first.relations()[-1]["margin_threshold"] == gate["margin"]

    # a restart uses the stored gate when it was set from the same references ...
    row = json.loads(file.read_text())
    row["threshold"]["margin"] = 0.123
    file.write_text(json.dumps(row))
    assert Extractor.from_root(str(root)).relations()[-1]["margin_threshold"] == 0.123
    # ... and sets it again from its own references otherwise (another model)
    row["threshold"]["fingerprint"] = "another-model"
    file.write_text(json.dumps(row))
    assert Extractor.from_root(str(root)).relations()[-1]["margin_threshold"] == pytest.approx(
        gate["margin"])
    assert storage.exists(str(file))


def test_openset_measure_and_report(tiny_encoder: Path, tmp_path: Path):
    from tkre.bench.openset import measure_openset, summarize
    from tkre.bench.report import aggregate_openset, openset_markdown

    root = make_model_root(tmp_path / "root", tiny_encoder)
    splits = datasets.prepare(DataConfig(), str(root))
    # demo relations the tiny model was not trained on play the new relations
    new = {name: [i for i in splits.test if i.relation == name]
           for name in ("per:spouse", "per:employee_of")}
    result = measure_openset(str(root), new, shots=(1, 2), queries=5)
    assert [(r["relation"], r["k"]) for r in result["rows"]] == [
        ("per:employee_of", 1), ("per:employee_of", 2), ("per:spouse", 1), ("per:spouse", 2)]
    for row in result["rows"]:
        assert row["flip_rate"] == row["flipped"] / result["test_sentences"]
        assert 0 <= row["own_recall"] <= 1 and row["queries"] == 5
    assert result["by_k"] == summarize(result["rows"])
    assert result["by_k"]["1"]["relations"] == 2
    assert not (root / "extract" / "relations").exists()  # the root's registry is untouched
    trained = measure_openset(str(root), {"per:city_of_birth": splits.test[:3]})
    assert trained["rows"] == [] and trained["left_out_trained"] == ["per:city_of_birth"]

    report = {"quality": {"openset": aggregate_openset(result)}}
    lines = openset_markdown(report)
    assert lines[0].startswith("## FewRel relations registered")
    assert len([line for line in lines if line.startswith("| 1 |") or line.startswith("| 2 |")
                ]) == 2


def test_the_bench_measures_fewrel_relations_on_the_first_draws_model(tiny_encoder: Path,
                                                                      tmp_path: Path):
    from tkre.bench.quality import data_config, fewrel_openset, variant_root
    from tkre.config import BenchConfig

    cfg = BenchConfig(root=str(tmp_path / "bench"), quick=True, data="demo", ks="4", seeds="1",
                      extra_points="", fewrel_file=str(tmp_path / "fewrel.json"))
    with pytest.raises(FileNotFoundError, match="quality part"):
        fewrel_openset(cfg)
    root = make_model_root(Path(variant_root(cfg, 4, 1, "finetune_only")), tiny_encoder)
    splits = datasets.prepare(data_config(cfg, 4, 1), str(root))
    storage.write_json(layout.finetune_metrics(str(root)), {})  # the stage's completion mark
    # FewRel's format; one relation of the model's own labels, which is not measured
    fewrel = {name: [{"tokens": list(i.tokens),
                      "h": [i.head.text, "Q1", [list(range(i.head.start, i.head.end))]],
                      "t": [i.tail.text, "Q2", [list(range(i.tail.start, i.tail.end))]]}
                     for i in splits.test if i.relation == relation]
              for name, relation in (("P26", "per:spouse"), ("P108", "per:employee_of"),
                                     ("per:city_of_birth", "per:city_of_birth"))}
    (tmp_path / "fewrel.json").write_text(json.dumps(fewrel))
    result = fewrel_openset(cfg)
    assert result["root"] == str(root) and "data" in result["references"]["source"]
    assert {row["relation"] for row in result["rows"]} == {"P26", "P108"}
    assert result["left_out_trained"] == ["per:city_of_birth"]
    assert set(result["by_k"]) == {"1", "5"}
