"""Pre-training, driver side: knowledge artifacts, stage data, Ray Train runs, encoder export.

Stage 1 (MSLM) starts from `cfg.encoder`; stage 2 (MSLM + SCL) starts from stage 1's exported
encoder; fine-tuning then starts from stage 2's (`jobs/finetune.py --encoder auto`). Each stage
exports a plain transformers masked-LM model to ROOT/pretrain/<stage>/model/ and writes
ROOT/pretrain/<stage>/metrics.json; a stage with both is complete and is skipped.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import save_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

from tkre import storage
from tkre.config import GenerateConfig, PretrainConfig, from_dict, load_yaml
from tkre.data import datasets
from tkre.pretrain import data
from tkre.pretrain.loop import plan, train_loop
from tkre.pretrain.strategy import full_state_dict
from tkre.resources import resolve_model
from tkre.schema import DataError
from tkre.train import fit

STAGES = ("mslm", "scl")
SCL_HEAD_FILE = "scl_head.safetensors"


def stage_dir(root: str, stage: str) -> str:
    return storage.join(root, "pretrain", stage)


def model_dir(root: str, stage: str) -> str:
    return storage.join(stage_dir(root, stage), "model")


def is_complete(root: str, stage: str) -> bool:
    return (storage.exists(storage.join(model_dir(root, stage), "config.json"))
            and storage.exists(storage.join(stage_dir(root, stage), "metrics.json")))


def ensure_knowledge(cfg: PretrainConfig) -> None:
    """Run knowledge generation first when ROOT has none (embedded default: the bundled LLM)."""
    if data.knowledge_present(cfg.root):
        return
    from tkre.knowledge.job import run_generate

    values = load_yaml(cfg.knowledge_config) if cfg.knowledge_config else {}
    values.update(root=cfg.root, data=asdict(cfg.data))
    print(f"[pretrain] no knowledge artifacts under {cfg.root}: generating them first", flush=True)
    run_generate(from_dict(GenerateConfig, values))


def run_pretrain(cfg: PretrainConfig) -> dict:
    """Run the requested stage(s); returns each stage's metrics."""
    splits = datasets.prepare(cfg.data, cfg.root)
    ensure_knowledge(cfg)
    stages = STAGES if cfg.stage == "both" else (cfg.stage,)
    return {stage: run_stage(cfg, stage, splits) for stage in stages}


def starting_encoder(cfg: PretrainConfig, stage: str) -> str:
    if stage == "mslm" or cfg.scl_init == "encoder":
        return resolve_model(cfg.encoder)
    previous = model_dir(cfg.root, "mslm")
    if not storage.exists(storage.join(previous, "config.json")):
        raise FileNotFoundError(f"stage scl starts from stage mslm's encoder, and {previous} "
                                "holds none: run --stage mslm (or both) first")
    return previous


def scl_relations(splits: datasets.Splits) -> list[str]:
    """One anchor per relation of the run's label set; the no-relation label gets none."""
    return sorted(label for label in splits.labels if label != splits.no_relation)


def run_stage(cfg: PretrainConfig, stage: str, splits: datasets.Splits) -> dict:
    started = time.perf_counter()
    if is_complete(cfg.root, stage):
        print(f"[{stage}] complete: {model_dir(cfg.root, stage)} exists; skipped", flush=True)
        return storage.read_json(storage.join(stage_dir(cfg.root, stage), "metrics.json"))
    encoder = starting_encoder(cfg, stage)
    relations = scl_relations(splits) if stage == "scl" else []
    texts, counts = data.stage_texts(stage, cfg.root, splits.train, cfg.mslm_synthetic,
                                     cfg.use_explanations, cfg.use_synthetic)
    if len(texts) < cfg.train.num_workers:
        raise DataError(f"stage {stage} has {len(texts)} training texts ({counts}), fewer than "
                        f"the {cfg.train.num_workers} workers; generate knowledge first "
                        "(jobs/generate.py)", file=storage.join(cfg.root, "knowledge"))
    schedule = plan(cfg, len(texts))
    print(f"[{stage}] {len(texts)} texts ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
          f"{schedule.total_steps} steps; encoder {encoder}"
          + (f"; {len(relations)} relation anchors" if relations else ""), flush=True)
    result = fit(train_loop,
                 {"cfg": asdict(cfg), "stage": stage, "encoder": encoder, "relations": relations,
                  "run_dir": stage_dir(cfg.root, stage),
                  "examples": [{"text": t.text, "head": t.head, "tail": t.tail,
                                "relation": t.relation} for t in texts]},
                 cfg.train, storage_root=storage.join(cfg.root, "pretrain"), name=stage)
    if result.error:
        raise result.error
    export(result.checkpoint, cfg, encoder, relations, model_dir(cfg.root, stage))
    final = dict(result.metrics or {})
    summary = {"stage": stage, "steps": final.get("step"), "texts": counts,
               "relations": relations, "encoder_start": encoder,
               "strategy": cfg.strategy, "zero_stage": cfg.zero_stage,
               "num_workers": cfg.train.num_workers, "final": final,
               "samples_per_s": final.get("run_samples_per_s"),
               "tokens_per_s": final.get("run_tokens_per_s"), "mfu": final.get("run_mfu"),
               "config": asdict(cfg), "wall_s": time.perf_counter() - started}
    storage.write_json(storage.join(stage_dir(cfg.root, stage), "metrics.json"), summary)
    print(f"[{stage}] done: {summary['steps']} steps, {summary['samples_per_s'] or 0:.1f} "
          f"samples/s; encoder in {model_dir(cfg.root, stage)}", flush=True)
    return summary


def export(checkpoint, cfg: PretrainConfig, encoder: str, relations: list[str],
           target: str) -> None:
    """Latest checkpoint -> a plain transformers masked-LM folder (+ SCL anchors beside it)."""
    local_encoder = str(storage.local_copy(encoder)) if storage.is_s3(encoder) else encoder
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
