"""Fine-tuning stage, driver side: data artifact, encoder choice, Ray Train run, model export."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from transformers import AutoTokenizer

from tkre import layout, storage
from tkre.config import FinetuneConfig
from tkre.data import datasets, readers
from tkre.data.sampling import label_counts
from tkre.finetune.loop import train_loop
from tkre.finetune.markers import EncoderWindow
from tkre.finetune.model import ModelMeta, RelationClassifier, load_encoder, save_classifier
from tkre.schema import Instance
from tkre.train.strategy import full_state_dict
from tkre.train.trainer import fit


def synthetic_instances(cfg: FinetuneConfig, labels: list[str]) -> list[Instance]:
    """Accepted SCDG sentences from the knowledge stage, restricted to the run's labels."""
    uri = layout.synthetic(cfg.root)
    if not cfg.use_synthetic or not storage.exists(uri):
        return []
    fs, path = storage.arrow_filesystem(uri)
    known = set(labels)
    return [inst for inst in readers.read_parquet(path, filesystem=fs) if inst.relation in known]


def run_finetune(cfg: FinetuneConfig, splits: datasets.Splits | None = None) -> dict:
    """Train on ROOT's K-shot (+ synthetic) data and write the model folder. `splits`: the
    prepared data when the caller (the pipeline) already has it."""
    started = time.perf_counter()
    encoder = layout.finetune_start(cfg.root, cfg.encoder)
    # records the classifier cannot encode are dropped here, not minutes later in a worker
    window = EncoderWindow.load(encoder, cfg.max_length, typed=cfg.marker != "untyped")
    splits = splits or datasets.prepare(cfg.data, cfg.root, window)
    synthetic = datasets.encodable(synthetic_instances(cfg, splits.labels), window,
                                   {"": layout.synthetic(cfg.root)})
    train = splits.train + synthetic
    typed = cfg.marker == "typed" or (cfg.marker == "auto" and splits.has_types)
    meta = ModelMeta(labels=splits.labels, no_relation=splits.no_relation, typed_markers=typed,
                     max_length=cfg.max_length, encoder_source=encoder, dropout=cfg.dropout)
    print(f"[finetune] training on {len(splits.train)} K-shot + {len(synthetic)} synthetic "
          f"examples, {len(splits.labels)} labels, dev {len(splits.dev)}; encoder {encoder}; "
          f"{'typed' if typed else 'untyped'} markers", flush=True)
    result = fit(train_loop,
                 {"cfg": asdict(cfg), "meta": asdict(meta), "encoder": encoder,
                  "train": [inst.to_dict() for inst in train], "gold_size": len(splits.train),
                  "dev": [inst.to_dict() for inst in splits.dev]},
                 cfg.train, layout.finetune_dir(cfg.root),
                 score="dev_micro_f1", score_order="max")
    best_checkpoint, best_metrics = max(
        result.best_checkpoints, key=lambda pair: (pair[1]["dev_micro_f1"], -pair[1]["epoch"]))
    model_dir = layout.finetune_model(cfg.root)
    export(best_checkpoint, cfg, meta, encoder, model_dir, splits.train + splits.dev)
    summary = {"train_gold": len(splits.train), "train_synthetic": len(synthetic),
               "train_label_counts": label_counts(train), "dev": len(splits.dev),
               "best_epoch": best_metrics["epoch"],
               "best_dev_micro_f1": best_metrics["dev_micro_f1"],
               "encoder": encoder, "typed_markers": typed, "config": asdict(cfg),
               "epoch_s": list(result.metrics.get("epoch_s", [])),
               "wall_s": time.perf_counter() - started}
    storage.write_json(layout.finetune_metrics(cfg.root), summary)
    print(f"[finetune] best dev micro-F1 {summary['best_dev_micro_f1']:.4f} at epoch "
          f"{summary['best_epoch']}; model in {model_dir}")
    return summary


def export(checkpoint, cfg: FinetuneConfig, meta: ModelMeta, encoder: str, target: str,
           references: list[Instance]) -> None:
    """Best checkpoint -> a self-contained model folder (encoder + head + label map, and the
    pair embeddings of `references`, the K-shot gold sentences, for run-time relations)."""
    local_encoder = str(storage.local_copy(encoder)) if storage.is_s3(encoder) else encoder
    tokenizer = AutoTokenizer.from_pretrained(local_encoder)
    model = RelationClassifier(load_encoder(local_encoder), len(meta.labels), meta.dropout)
    with checkpoint.as_directory() as folder:
        state = full_state_dict(Path(folder), cfg.strategy, cfg.zero_stage)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    with tempfile.TemporaryDirectory() as staging:
        save_classifier(model, tokenizer, meta, staging, references)
        storage.replace_dir(staging, target)
