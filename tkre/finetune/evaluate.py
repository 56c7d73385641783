"""Evaluate the fine-tuned model on the run's test set: metrics.json and a confusion PNG."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import torch

from tkre import layout, storage
from tkre.config import EvaluateConfig
from tkre.data import datasets
from tkre.finetune.markers import EncoderWindow
from tkre.finetune.metrics import (
    confusion_matrix,
    micro_prf,
    per_relation,
    semeval_macro_f1,
)
from tkre.finetune.model import load_classifier, predict_proba


def score(gold: list[str], pred: list[str], labels: list[str], no_relation: str,
          semeval: bool) -> dict:
    """The metrics.json body: micro P/R/F1 (no-relation excluded), per relation, SemEval's."""
    micro = micro_prf(gold, pred, no_relation)
    metrics = {"micro_f1": micro["f1"], "micro_precision": micro["precision"],
               "micro_recall": micro["recall"], "accuracy": sum(
                   g == p for g, p in zip(gold, pred, strict=True)) / max(len(gold), 1),
               "num_examples": len(gold), "no_relation": no_relation,
               "per_relation": per_relation(gold, pred, labels)}
    if semeval:
        metrics["semeval_macro_f1"] = semeval_macro_f1(gold, pred, other=no_relation)
    return metrics


def run_evaluate(cfg: EvaluateConfig, splits: datasets.Splits | None = None) -> dict:
    """Score the trained model on the test split. `splits`: the prepared data when the caller
    (the pipeline) already has it."""
    started = time.perf_counter()
    model_uri = layout.finetune_model(cfg.root)
    layout.require(cfg.root, "finetune", "evaluation")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer, meta = load_classifier(storage.local_copy(model_uri), device=device)
    window = EncoderWindow(meta.max_length, meta.typed_markers, tokenizer, model_uri)
    splits = splits or datasets.prepare(cfg.data, cfg.root, window)
    print(f"[evaluate] predicting {len(splits.test)} test examples with {model_uri}", flush=True)
    probs = predict_proba(model, tokenizer, meta, splits.test, cfg.batch_size)
    pred = [meta.labels[i] for i in probs.argmax(-1).tolist()]
    gold = [inst.relation for inst in splits.test]
    unknown = sorted(set(gold) - set(meta.labels))
    if unknown:
        print(f"[evaluate] warning: test labels the model never saw: {unknown}")
    labels = meta.labels + unknown
    metrics = score(gold, pred, labels, meta.no_relation, semeval=cfg.data.data == "semeval")
    metrics.update({"data": asdict(cfg.data), "model": model_uri,
                    "wall_s": time.perf_counter() - started})
    storage.write_table(layout.eval_predictions(cfg.root), pa.table({
        "id": [inst.id for inst in splits.test], "gold": gold, "pred": pred}))
    storage.write_json(layout.eval_metrics(cfg.root), metrics)  # last: evaluation complete
    if cfg.plot:
        plot_confusion(gold, pred, labels, layout.confusion_plot(cfg.root))
    line = f"[evaluate] micro-F1 {metrics['micro_f1']:.4f}"
    if "semeval_macro_f1" in metrics:
        line += f", SemEval official macro-F1 {metrics['semeval_macro_f1']:.4f}"
    print(f"{line}; written to {layout.eval_metrics(cfg.root)}")
    return metrics


def plot_confusion(gold: list[str], pred: list[str], labels: list[str], uri: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confusion_matrix(gold, pred, labels)
    size = max(6.0, 0.45 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "confusion.png"
        fig.savefig(local, dpi=120)
        plt.close(fig)
        storage.write_bytes(uri, local.read_bytes())
