"""Pre-training, driver side: stage data, Ray Train runs, encoder export.

Stage 1 (MSLM) starts from `cfg.encoder`; stage 2 (MSLM + SCL) starts from stage 1's exported
encoder; fine-tuning then starts from stage 2's (`jobs/finetune.py --encoder auto`). Each stage
exports a plain transformers masked-LM model and its metrics (paths: `tkre.layout`); a stage
with both is complete and is skipped. The knowledge artifacts must exist (jobs/generate.py, or
jobs/pipeline.py, which orders the stages).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import save_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

from tkre import layout, storage
from tkre.config import PretrainConfig
from tkre.data import datasets
from tkre.pretrain import data
from tkre.pretrain.loop import mslm_loss, plan, train_loop
from tkre.schema import DataError
from tkre.train.strategy import full_state_dict
from tkre.train.trainer import fit

SCL_HEAD_FILE = "scl_head.safetensors"


def run_pretrain(cfg: PretrainConfig, splits: datasets.Splits | None = None) -> dict:
    """Run the requested stage(s); returns each stage's metrics. `splits`: the prepared data
    when the caller (the pipeline) already has it."""
    splits = splits or datasets.prepare(cfg.data, cfg.root)
    layout.require(cfg.root, "knowledge", "pre-training")
    stages = layout.PRETRAIN_STAGES if cfg.stage == "both" else (cfg.stage,)
    return {stage: run_stage(cfg, stage, splits) for stage in stages}


def scl_relations(splits: datasets.Splits) -> list[str]:
    """One anchor per relation of the run's label set; the no-relation label gets none."""
    return sorted(label for label in splits.labels if label != splits.no_relation)


def stage_inputs(cfg: PretrainConfig, stage: str, splits: datasets.Splits
                 ) -> tuple[list, dict[str, int], list, list[str]]:
    """(training texts, count per source, held-out explanations, SCL relations) of a stage:
    stage 1 holds every `heldout_every`-th explanation out, to measure its MSLM loss."""
    relations = scl_relations(splits) if stage == "scl" else []
    texts, counts = data.stage_texts(stage, cfg.root, splits.train, cfg.mslm_synthetic,
                                     cfg.use_explanations, cfg.use_synthetic)
    heldout: list = []
    if stage == "mslm" and cfg.use_explanations:
        texts, heldout = data.split_heldout(texts, data.explanations(cfg.root),
                                            cfg.heldout_every)
        counts["heldout_explanations"] = len(heldout)
    return texts, counts, heldout, relations


def run_stage(cfg: PretrainConfig, stage: str, splits: datasets.Splits) -> dict:
    started = time.perf_counter()
    model_dir = layout.pretrain_model(cfg.root, stage)
    if layout.pretrain_done(cfg.root, stage):
        print(f"[{stage}] complete: {model_dir} exists; skipped", flush=True)
        return storage.read_json(layout.pretrain_metrics(cfg.root, stage))
    encoder = layout.pretrain_start(cfg.root, stage, cfg.encoder, cfg.scl_init)
    texts, counts, heldout, relations = stage_inputs(cfg, stage, splits)
    before = mslm_loss(cfg, _local(encoder), heldout) if heldout else None
    if len(texts) < cfg.train.num_workers:
        raise DataError(f"stage {stage} has {len(texts)} training texts ({counts}), fewer than "
                        f"the {cfg.train.num_workers} workers; generate knowledge first "
                        "(jobs/generate.py)", file=layout.knowledge_dir(cfg.root))
    schedule = plan(cfg, len(texts))
    print(f"[{stage}] {len(texts)} texts ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
          f"{schedule.total_steps} steps; encoder {encoder}"
          + (f"; {len(relations)} relation anchors" if relations else ""), flush=True)
    result = fit(train_loop,
                 {"cfg": asdict(cfg), "stage": stage, "encoder": encoder, "relations": relations,
                  "run_dir": layout.pretrain_stage_dir(cfg.root, stage),
                  "examples": [{"text": t.text, "head": t.head, "tail": t.tail,
                                "relation": t.relation} for t in texts]},
                 cfg.train, layout.pretrain_stage_dir(cfg.root, stage))
    export(result.checkpoint, cfg, encoder, relations, model_dir)
    final = dict(result.metrics or {})
    heldout_loss = None
    if heldout:
        after = mslm_loss(cfg, _local(model_dir), heldout)
        heldout_loss = {"texts": len(heldout), "before": before, "after": after}
        print(f"[{stage}] held-out MSLM loss {before:.3f} -> {after:.3f} "
              f"({len(heldout)} explanations)", flush=True)
    summary = {"stage": stage, "steps": final.get("step"), "texts": counts,
               "relations": relations, "encoder_start": encoder,
               "heldout_mslm_loss": heldout_loss,
               "strategy": cfg.strategy, "zero_stage": cfg.zero_stage,
               "num_workers": cfg.train.num_workers, "final": final,
               "samples_per_s": final.get("run_samples_per_s"),
               "tokens_per_s": final.get("run_tokens_per_s"), "mfu": final.get("run_mfu"),
               "config": asdict(cfg), "wall_s": time.perf_counter() - started}
    storage.write_json(layout.pretrain_metrics(cfg.root, stage), summary)
    print(f"[{stage}] done: {summary['steps']} steps, {summary['samples_per_s'] or 0:.1f} "
          f"samples/s; encoder in {model_dir}", flush=True)
    return summary


def _local(model: str) -> str:
    return str(storage.local_copy(model)) if storage.is_s3(model) else model


def export(checkpoint, cfg: PretrainConfig, encoder: str, relations: list[str],
           target: str) -> None:
    """Latest checkpoint -> a plain transformers masked-LM folder (+ SCL anchors beside it)."""
    local_encoder = _local(encoder)
    tokenizer = AutoTokenizer.from_pretrained(local_encoder)
    mlm = AutoModelForMaskedLM.from_pretrained(local_encoder)
    with checkpoint.as_directory() as folder:
        state = full_state_dict(Path(folder), cfg.strategy, cfg.zero_stage)
    mlm.load_state_dict({k[len("mlm."):]: v for k, v in state.items() if k.startswith("mlm.")})
    with tempfile.TemporaryDirectory() as staging:
        mlm.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if relations:
            save_file({k: v.contiguous() for k, v in state.items()
                       if k.startswith(("anchors.", "projection."))},
                      str(Path(staging) / SCL_HEAD_FILE))
            (Path(staging) / "scl_relations.json").write_text(json.dumps(relations, indent=2))
        storage.replace_dir(staging, target)
