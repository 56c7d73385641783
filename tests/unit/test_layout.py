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
