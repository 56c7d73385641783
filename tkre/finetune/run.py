"""Fine-tuning stage, driver side: data artifact, encoder choice, Ray Train run, model export."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoTokenizer

from tkre import storage
from tkre.config import FinetuneConfig
from tkre.data import datasets, readers
from tkre.data.sampling import label_counts
from tkre.finetune.loop import STATE_FILE, train_loop
from tkre.finetune.model import ModelMeta, RelationClassifier, load_encoder, save_classifier
from tkre.resources import BUNDLED_ENCODER, resolve_model
from tkre.schema import Instance
from tkre.train import fit

STAGE_DIR = "finetune"
PRETRAINED_ENCODERS = ("pretrain/scl/model", "pretrain/mslm/model")


def choose_encoder(cfg: FinetuneConfig) -> str:
    """'auto': the newest pre-trained encoder under ROOT (stage 2, else stage 1), else bundled."""
    if cfg.encoder != "auto":
        return resolve_model(cfg.encoder)
    for relative in PRETRAINED_ENCODERS:
        candidate = storage.join(cfg.root, relative)
        if storage.exists(storage.join(candidate, "config.json")):
            return candidate
    return resolve_model(BUNDLED_ENCODER)


def synthetic_instances(cfg: FinetuneConfig, labels: list[str]) -> list[Instance]:
    """Accepted SCDG sentences from ROOT/knowledge, restricted to the run's labels."""
    uri = storage.join(cfg.root, "knowledge", "synthetic.parquet")
    if not cfg.use_synthetic or not storage.exists(uri):
        return []
    fs, path = storage.arrow_filesystem(uri)
    known = set(labels)
    return [inst for inst in readers.read_parquet(path, filesystem=fs) if inst.relation in known]


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Train on ROOT's K-shot (+ synthetic) data and write ROOT/finetune/model/."""
    started = time.perf_counter()
    splits = datasets.prepare(cfg.data, cfg.root)
    synthetic = synthetic_instances(cfg, splits.labels)
    train = splits.train + synthetic
    typed = cfg.marker == "typed" or (cfg.marker == "auto" and splits.has_types)
    encoder = choose_encoder(cfg)
    meta = ModelMeta(labels=splits.labels, no_relation=splits.no_relation, typed_markers=typed,
                     max_length=cfg.max_length, encoder_source=encoder, dropout=cfg.dropout)
    print(f"[finetune] training on {len(splits.train)} K-shot + {len(synthetic)} synthetic "
          f"examples, {len(splits.labels)} labels, dev {len(splits.dev)}; encoder {encoder}; "
          f"{'typed' if typed else 'untyped'} markers", flush=True)
    result = fit(train_loop,
                 {"cfg": asdict(cfg), "meta": asdict(meta), "encoder": encoder,
                  "train": [inst.to_dict() for inst in train],
                  "dev": [inst.to_dict() for inst in splits.dev]},
                 cfg.train, storage_root=cfg.root, name=STAGE_DIR,
                 score="dev_micro_f1", score_order="max")
    if result.error:
        raise result.error
    best_checkpoint, best_metrics = max(
        result.best_checkpoints, key=lambda pair: (pair[1]["dev_micro_f1"], -pair[1]["epoch"]))
    export(best_checkpoint, meta, encoder, storage.join(cfg.root, STAGE_DIR, "model"))
    summary = {"train_gold": len(splits.train), "train_synthetic": len(synthetic),
               "train_label_counts": label_counts(train), "dev": len(splits.dev),
               "best_epoch": best_metrics["epoch"],
               "best_dev_micro_f1": best_metrics["dev_micro_f1"],
               "encoder": encoder, "typed_markers": typed, "config": asdict(cfg),
               "wall_s": time.perf_counter() - started}
    storage.write_json(storage.join(cfg.root, STAGE_DIR, "metrics.json"), summary)
    print(f"[finetune] best dev micro-F1 {summary['best_dev_micro_f1']:.4f} at epoch "
          f"{summary['best_epoch']}; model in {storage.join(cfg.root, STAGE_DIR, 'model')}")
    return summary


def export(checkpoint, meta: ModelMeta, encoder: str, target: str) -> None:
    """Best checkpoint -> a self-contained model folder (encoder + head + label map)."""
    local_encoder = str(storage.local_copy(encoder)) if storage.is_s3(encoder) else encoder
    tokenizer = AutoTokenizer.from_pretrained(local_encoder)
    model = RelationClassifier(load_encoder(local_encoder), len(meta.labels), meta.dropout)
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    with tempfile.TemporaryDirectory() as staging:
        save_classifier(model, tokenizer, meta, staging)
        storage.replace_dir(staging, target)
