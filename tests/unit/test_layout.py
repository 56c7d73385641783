"""The run-root contract (tkre.layout) and the house rules it exists for."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO
from tkre import layout, storage
from tkre.config import DataConfig, PretrainConfig
from tkre.data import datasets
from tkre.resources import BUNDLED_ENCODER, resolve_model
from tkre.schema import DataError

PACKAGE = REPO / "tkre"
STAGE_PACKAGES = ("knowledge", "pretrain", "finetune")


def touch(path: str) -> None:
    storage.write_json(path, {})


def test_each_stage_is_complete_only_once_its_last_file_exists(tmp_path: Path):
    root = str(tmp_path)
    assert not any(done(root) for done in layout.STAGE_DONE.values())
    touch(layout.explanations(root))
    assert not layout.knowledge_done(root)  # stats.json, written last, is the mark
    touch(layout.knowledge_stats(root))
    assert layout.knowledge_done(root)
    touch(f"{layout.pretrain_model(root, 'mslm')}/config.json")
    assert not layout.pretrain_done(root, "mslm")  # the export without its metrics
    touch(layout.pretrain_metrics(root, "mslm"))
    assert layout.STAGE_DONE["mslm"](root) and not layout.STAGE_DONE["scl"](root)
    touch(layout.finetune_metrics(root))
    assert not layout.finetune_done(root)
    touch(f"{layout.finetune_model(root)}/{layout.MODEL_META_FILE}")
    assert layout.finetune_done(root)


def test_a_missing_input_names_the_job_that_writes_it(tmp_path: Path):
    with pytest.raises(DataError, match="jobs/generate.py"):
        layout.require(str(tmp_path), "knowledge", "pre-training")
    with pytest.raises(DataError, match=r"jobs/pretrain.py --stage mslm"):
        layout.pretrain_start(str(tmp_path), "scl", BUNDLED_ENCODER)


def test_pretraining_refuses_a_root_without_knowledge(tmp_path: Path):
    """Pre-training no longer runs the knowledge job: the pipeline orders the stages."""
    from tkre.pretrain.run import run_pretrain

    with pytest.raises(DataError, match="knowledge.*jobs/generate.py"):
        run_pretrain(PretrainConfig(root=str(tmp_path)))


def test_start_encoders(tmp_path: Path):
    root = str(tmp_path)
    assert layout.pretrain_start(root, "mslm", BUNDLED_ENCODER) == resolve_model(BUNDLED_ENCODER)
    assert layout.pretrain_start(root, "scl", "x", scl_init="encoder") == "x"
    assert layout.finetune_start(root, "auto") == resolve_model(BUNDLED_ENCODER)
    touch(f"{layout.pretrain_model(root, 'mslm')}/config.json")
    touch(layout.pretrain_metrics(root, "mslm"))
    assert layout.pretrain_start(root, "scl", BUNDLED_ENCODER) == layout.pretrain_model(
        root, "mslm")
    assert layout.finetune_start(root, "auto") == layout.pretrain_model(root, "mslm")
    touch(f"{layout.pretrain_model(root, 'scl')}/config.json")
    assert layout.finetune_start(root, "auto") == layout.pretrain_model(root, "mslm")  # unfinished
    touch(layout.pretrain_metrics(root, "scl"))
    assert layout.finetune_start(root, "auto") == layout.pretrain_model(root, "scl")


def test_prepared_data_lives_where_the_layout_says(tmp_path: Path):
    datasets.prepare(DataConfig(), str(tmp_path))
    assert layout.data_done(str(tmp_path))
    for name in layout.SPLITS:
        assert Path(layout.data_split(str(tmp_path), name)).is_file()


# --- house rules ---------------------------------------------------------------------------

def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


# artifact names that only tkre/layout.py may spell, as string literals
ARTIFACT = re.compile(r"""["'](knowledge|pretrain|finetune|eval|extract|bench|ledger|"""
                      r"""explanations\.parquet|synthetic\.parquet|stats\.json|metrics\.json|"""
                      r"""calibration\.json|pipeline\.json|meta\.json|units|relations)["'/]""")


def test_only_the_layout_spells_artifact_paths():
    offenders = []
    for path in modules():
        if path.name == "layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "join"
                    and getattr(node.func.value, "id", "") == "storage"):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and ARTIFACT.match(repr(arg.value)):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_import_rules():
    """Stage packages never import each other; nothing in tkre imports jobs/ or serve/;
    nothing outside tkre/bench imports the bench."""
    broken = []
    for path in modules():
        parts = path.relative_to(PACKAGE).parts
        for name in imported(path):
            if name.split(".")[0] in ("jobs", "serve"):
                broken.append(f"{path.name} imports {name}")
            target = name.split(".")[1] if name.startswith("tkre.") else None
            if parts[0] in STAGE_PACKAGES and target in STAGE_PACKAGES and target != parts[0]:
                broken.append(f"{'/'.join(parts)} imports {name}")
            if target == "bench" and parts[0] != "bench":
                broken.append(f"{'/'.join(parts)} imports {name}")
    assert not broken, broken


def test_the_top_level_holds_only_shared_modules_and_the_pipeline():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "cli", "config", "layout", "pipeline", "resources", "schema",
                   "storage"}


def test_a_root_holding_another_draw_is_refused(tmp_path: Path):
    """One run never mixes two K-shot draws (every stage prepares the data first)."""
    datasets.prepare(DataConfig(k=8, seed=42), str(tmp_path))
    assert datasets.prepare(DataConfig(k=8, seed=42), str(tmp_path)).train
    with pytest.raises(DataError, match="already holds data drawn with"):
        datasets.prepare(DataConfig(k=4, seed=42), str(tmp_path))


def test_an_empty_training_set_is_refused_and_short_relations_are_named(tmp_path: Path, capsys):
    """An empty train.jsonl trained and exported a model with dev F1 0.0 (issue 14)."""
    import json

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("")
    line = {"tokens": ["Ann", "works", "for", "Acme"], "head": {"start": 0, "end": 1},
            "tail": {"start": 3, "end": 4}, "relation": "per:employee_of"}
    (folder / "test.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError, match="no training examples") as err:
        datasets.prepare(DataConfig(data="jsonl", data_dir=str(folder)), str(tmp_path / "r1"))
    assert err.value.field == "train" and str(folder) in str(err.value)
    # one example of a relation at K=8: trained, with a warning naming the relation
    (folder / "train.jsonl").write_text("\n".join(
        [json.dumps(line)] + [json.dumps({**line, "id": f"o{i}", "relation": "other"})
                              for i in range(20)]) + "\n")
    datasets.prepare(DataConfig(data="jsonl", data_dir=str(folder), k=8), str(tmp_path / "r2"))
    out = capsys.readouterr().out
    assert "fewer than k=8" in out and "per:employee_of (1)" in out and "other (" not in out


# --- prepared data is never stale; records the model cannot encode (issue 14) -------------

LINE = {"tokens": ["Ann", "works", "for", "Acme"], "head": {"start": 0, "end": 1},
        "tail": {"start": 3, "end": 4}, "relation": "per:employee_of"}
# 300 words between the entities: more than the classifier's 256 sub-tokens
FAR = {"tokens": ["Ann", *["word"] * 300, "Acme"], "head": {"start": 0, "end": 1},
       "tail": {"start": 301, "end": 302}, "relation": "per:employee_of"}


def write_rows(path: Path, rows: list[dict]) -> None:
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def jsonl_data(folder: Path, train: list[dict], test: list[dict]) -> DataConfig:
    folder.mkdir(exist_ok=True)
    write_rows(folder / "train.jsonl", train)
    write_rows(folder / "test.jsonl", test)
    return DataConfig(data="jsonl", data_dir=str(folder), k=2)


def test_prepared_data_is_drawn_again_when_its_input_files_change(tmp_path: Path, capsys):
    """An edited test.jsonl or a relabelled train.jsonl used to be ignored on re-runs."""
    train = ([LINE | {"id": f"e{i}"} for i in range(4)]
             + [LINE | {"id": f"o{i}", "relation": "other"} for i in range(4)])
    test = [LINE | {"id": f"t{i}"} for i in range(20)]
    cfg, root = jsonl_data(tmp_path / "data", train, test), str(tmp_path / "run")
    first = datasets.prepare(cfg, root)
    assert len(first.test) == 20 and datasets.prepare(cfg, root).train == first.train
    capsys.readouterr()

    write_rows(tmp_path / "data" / "test.jsonl", test[:10])  # cut to 10 lines
    assert len(datasets.prepare(cfg, root).test) == 10
    assert "test.jsonl changed" in capsys.readouterr().out

    touch(layout.finetune_metrics(root))  # a model trained on the old K-shot set
    touch(storage.join(layout.finetune_model(root), layout.MODEL_META_FILE))
    relabelled = [row | {"relation": "employer"} if row["relation"] != "other" else row
                  for row in train]
    write_rows(tmp_path / "data" / "train.jsonl", relabelled)
    splits = datasets.prepare(cfg, root)
    assert {inst.relation for inst in splits.train} == {"employer", "other"}
    assert datasets.load_prepared(root).train == splits.train
    out = capsys.readouterr().out
    assert "train.jsonl changed" in out and "still holds finetune" in out
    with pytest.raises(DataError, match="already holds data drawn with"):  # another draw
        datasets.prepare(DataConfig(data="jsonl", data_dir=cfg.data_dir, k=3), root)


def test_records_the_model_cannot_encode_are_dropped_with_a_warning(tmp_path: Path, capsys):
    from tkre.finetune.markers import EncoderWindow

    folder = tmp_path / "data"
    train = ([LINE | {"id": f"e{i}"} for i in range(2)] + [FAR | {"id": "far-train"}]
             + [LINE | {"id": f"o{i}", "relation": "other"} for i in range(2)])
    test = [LINE | {"id": "t0"}, FAR | {"id": "far-test"}, LINE | {"id": "t1"}]
    cfg = jsonl_data(folder, train, test)
    window = EncoderWindow.load(resolve_model(BUNDLED_ENCODER), 256, typed=True)
    splits = datasets.prepare(cfg, str(tmp_path / "r1"), window)
    ids = {inst.id for part in (splits.train, splits.dev, splits.test) for inst in part}
    assert "far-train" not in ids and "far-test" not in ids and {"t0", "t1"} <= ids
    out = capsys.readouterr().out
    assert f"{folder / 'train.jsonl'}: dropped 1 record(s)" in out and "records 3" in out
    assert f"{folder / 'test.jsonl'}: dropped 1 record(s)" in out and "records 2" in out

    # data prepared without a window (by jobs/generate.py, say) is checked when one comes
    assert "far-test" in {inst.id for inst in datasets.prepare(cfg, str(tmp_path / "r2")).test}
    assert "far-test" not in {i.id for i in datasets.prepare(cfg, str(tmp_path / "r2"),
                                                             window).test}
    # a relation left with no example it can encode is refused, naming it
    cfg = jsonl_data(folder, train + [FAR | {"id": "x", "relation": "only_far"}], test)
    with pytest.raises(DataError, match="relation 'only_far' has no training example") as err:
        datasets.prepare(cfg, str(tmp_path / "r3"), window)
    assert err.value.field == "max_length" and err.value.file == str(folder / "train.jsonl")


def test_the_window_check_agrees_with_the_encoder(tmp_path: Path):
    from transformers import AutoTokenizer

    from tkre.finetune.markers import EncoderWindow, encode
    from tkre.schema import Instance, Span

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(BUNDLED_ENCODER))
    instances = [Instance(f"gap{gap}", ("Ann", *["word"] * gap, "Acme"),
                          Span(0, 1, "", "person"), Span(gap + 1, gap + 2, "", "org"), "r")
                 for gap in range(40, 60)]

    def encodes(inst: Instance) -> bool:
        try:
            encode(tokenizer, inst, True, 52)
        except ValueError:
            return False
        return True

    expected = [encodes(inst) for inst in instances]
    assert True in expected and False in expected
    assert EncoderWindow(52, True, tokenizer, "bundled").fits(instances) == expected
    # without a tokenizer: a word count, which drops only what certainly does not fit
    by_words = EncoderWindow(52, True).fits(instances)
    assert all(w or not e for w, e in zip(by_words, expected, strict=True))
    assert by_words[-1] is False


def test_the_pipeline_checks_records_against_the_classifier_it_trains(tmp_path: Path):
    from tkre import pipeline
    from tkre.config import PipelineConfig

    window = pipeline.classifier_window(PipelineConfig(root=str(tmp_path),
                                                       finetune={"max_length": 64}))
    assert window.max_length == 64 and window.tokenizer is not None
    assert window.source == resolve_model(BUNDLED_ENCODER)
    assert pipeline.classifier_window(PipelineConfig(root=str(tmp_path),
                                                     stages="knowledge")) is None


def test_fewrel_without_pid2name_uses_the_relation_ids(tmp_path: Path, capsys):
    """An absent pid2name.json used to reject every relation ("not in pid2name")."""
    import json

    row = {"tokens": ["Oakvale", "lies", "in", "Norland", "."], "h": ["Oakvale", "Q1", [[0]]],
           "t": ["Norland", "Q2", [[3]]]}
    folder = tmp_path / "fewrel"
    folder.mkdir()
    (folder / "val.json").write_text(json.dumps({"P17": [row] * 4, "P131": [row] * 4}))
    splits = datasets.prepare(DataConfig(data="fewrel", data_dir=str(folder), k=1),
                              str(tmp_path / "run"))
    assert splits.labels == ["P131", "P17"] and splits.descriptions == {}
    assert len(splits.train) == 2 and len(splits.test) == 4
    assert "no pid2name.json" in capsys.readouterr().out
