"""Fine-tune + evaluate through Ray Train on the demo set, with a tiny encoder from a config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tiny import make_tiny_encoder
from tkre.config import DataConfig, EvaluateConfig, FinetuneConfig, TrainConfig
from tkre.data import readers
from tkre.finetune.evaluate import run_evaluate
from tkre.finetune.model import load_classifier, predict_proba
from tkre.finetune.run import run_finetune
from tkre.schema import Instance, Span

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    return str(make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder")))


def config(root: Path, encoder: str, epochs: int = 2, strategy: str = "ddp", **train
           ) -> FinetuneConfig:
    return FinetuneConfig(root=str(root), encoder=encoder, epochs=epochs, lr=1e-3,
                          data=DataConfig(k=8, seed=42), strategy=strategy,
                          train=TrainConfig(cpus_per_worker=1, **train))


def loop_state(checkpoint: Path) -> dict:
    """The loop's resume dict inside a checkpoint of either strategy (tkre.train.strategy)."""
    from tkre.train.strategy import DDP_FILE, DS_TAG

    if (checkpoint / DDP_FILE).exists():
        return torch.load(checkpoint / DDP_FILE, weights_only=True)["loop"]
    saved = torch.load(checkpoint / DS_TAG / "mp_rank_00_model_states.pt", weights_only=False)
    return saved["loop"]


def latest_state(root: Path) -> dict:
    checkpoints = [c for c in (root / "finetune").glob("checkpoint_*") if c.is_dir()]
    return max((loop_state(c) for c in checkpoints), key=lambda s: s["epoch"])


def write_synthetic(root: Path) -> None:
    """5 accepted sentences of a trained label and one of a label the run does not have."""
    synthetic = [Instance(id=f"syn-{i}", tokens=("Ann", "Lee", "works", "for", "Orbix", "."),
                          head=Span(0, 2, "Ann Lee", "person"),
                          tail=Span(4, 5, "Orbix", "organization"),
                          relation="per:employee_of", source="llm",
                          provenance={"model": "test"}) for i in range(5)]
    unknown = Instance(id="syn-x", tokens=("A", "b", "C"), head=Span(0, 1, "A", "person"),
                       tail=Span(2, 3, "C", "person"), relation="per:unknown_label", source="llm")
    (root / "knowledge").mkdir()
    readers.write_parquet(synthetic + [unknown], root / "knowledge" / "synthetic.parquet")


def test_finetune_then_evaluate_on_demo(ray_cluster, tiny_encoder, tmp_path):
    write_synthetic(tmp_path)
    summary = run_finetune(config(tmp_path, tiny_encoder))
    assert summary["train_gold"] == 8 * 8  # 7 relations + no_relation, 8 each
    # the synthetic sentences of the run's labels join the K-shot set, the others are dropped
    assert summary["train_synthetic"] == 5
    assert summary["train_label_counts"]["per:employee_of"] == 8 + 5
    assert summary["dev"] == 8 * 8
    assert summary["typed_markers"] is True  # the demo data has entity types
    assert 1 <= summary["best_epoch"] <= 2

    model_dir = tmp_path / "finetune" / "model"
    model, tokenizer, meta = load_classifier(model_dir)
    assert meta.labels[0] == "no_relation" and len(meta.labels) == 8
    assert (model_dir / "encoder" / "config.json").exists()

    # every epoch was checkpointed with the whole resume state
    state = latest_state(tmp_path)
    # the step budget counts passes over the 64 gold sentences (synthetic ones add data, not
    # updates): 2 x 8 steps, over 2 passes of the 69 sentences, the second cut short
    assert state["epoch"] == 2 and state["step"] == 2 * 8

    metrics = run_evaluate(EvaluateConfig(root=str(tmp_path), data=DataConfig(k=8, seed=42)))
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["micro_f1"] == pytest.approx(metrics["micro_f1"])
    assert saved["num_examples"] == 118
    assert set(saved["per_relation"]) == set(meta.labels)
    assert "semeval_macro_f1" not in saved
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000

    # evaluation used exactly the exported model: recompute one prediction by hand
    test = readers.read_parquet(tmp_path / "data" / "test.parquet")
    probs = predict_proba(model, tokenizer, meta, test[:4])
    assert probs.shape == (4, 8)
    assert torch.allclose(probs.sum(-1), torch.ones(4), atol=1e-5)

    # a re-run on the same root with more epochs resumes after epoch 2, not from zero
    summary = run_finetune(config(tmp_path, tiny_encoder, epochs=3))
    state = latest_state(tmp_path)
    assert state["epoch"] == 3 and state["step"] == 3 * 8


def test_two_workers_deepspeed_zero2(ray_cluster, tiny_encoder, tmp_path):
    """Fine-tuning runs on the same scaffold as pre-training: DeepSpeed ZeRO-2 on 2 workers,
    its sharded checkpoints carrying the loop state, the export gathered from them."""
    summary = run_finetune(config(tmp_path, tiny_encoder, epochs=1, strategy="deepspeed",
                                  num_workers=2))
    assert summary["best_epoch"] == 1
    assert latest_state(tmp_path)["step"] == 8
    model, _, meta = load_classifier(tmp_path / "finetune" / "model")
    assert len(meta.labels) == 8 and model.head[-1].out_features == 8
