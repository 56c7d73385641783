"""A generation pass measured against the FLOP limit of the hardware it ran on.

limit_s = the pass's forward FLOPs without any reuse (every prompt token counted once per
request, `tkre.train.flops.generation_flops`) / the peak FLOP/s of that hardware in the
generator's dtype; fraction_of_limit = limit_s / wall_s. A backend that computes a shared prompt
once (prefix caching) does less than that work, so it can exceed 1.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from tkre.config import GenerateConfig
from tkre.knowledge.backends import hf_dtype, vllm_dtype
from tkre.resources import resolve_model
from tkre.train.flops import DecoderShape, generation_flops, generation_peak


def new_pass(backend: str) -> dict:
    """A pass record that `count` fills while the pass runs and `finish` closes."""
    return {"backend": backend, "rows": 0, "prompt_tokens": 0, "generated_tokens": 0,
            "distinct_prompt_tokens": 0, "sizes": [], "started": time.perf_counter(),
            "wall_s": 0.0}


def count(record: dict, rows: Iterable[dict], prompts: dict[str, str]) -> None:
    """Add finished rows; `prompts`: request id -> prompt text (identical prompts counted once
    in distinct_prompt_tokens, what a backend that shares prompts must compute)."""
    seen = record.setdefault("seen_prompts", set())
    for row in rows:
        prompt_tokens = int(row.get("num_prompt_tokens") or 0)
        generated = int(row["num_generated_tokens"])
        record["rows"] += 1
        record["prompt_tokens"] += prompt_tokens
        record["generated_tokens"] += generated
        record["sizes"].append((prompt_tokens, generated))
        if prompts[row["request_id"]] not in seen:
            seen.add(prompts[row["request_id"]])
            record["distinct_prompt_tokens"] += prompt_tokens


def finish(record: dict) -> None:
    record["wall_s"] = time.perf_counter() - record["started"]


def generator_dtype(cfg: GenerateConfig, backend: str) -> str:
    """The dtype the generator computes in (vLLM's "auto" on a GPU: taken as bf16)."""
    if backend == "vllm":
        return vllm_dtype(cfg)
    return hf_dtype(cfg.dtype, bool(cfg.num_gpus))


def model_shape(cfg: GenerateConfig) -> DecoderShape | None:
    """The generator's shape, or None where its config cannot be read here."""
    try:
        return DecoderShape.of_model(resolve_model(cfg.model))
    except (OSError, ValueError):
        return None


def generation_stats(cfg: GenerateConfig, passes: list[dict], default_backend: str) -> dict:
    """stats.json's `generation`: tokens/s, the FLOP limit and the fraction of it reached,
    over this run's passes (each pass has its own peak: backends differ in dtype)."""
    rows = sum(p["rows"] for p in passes)
    prompt = sum(p["prompt_tokens"] for p in passes)
    generated = sum(p["generated_tokens"] for p in passes)
    wall = sum(p["wall_s"] for p in passes)
    backends = sorted({p["backend"] for p in passes}) or [default_backend]
    shape = model_shape(cfg) if passes and "http" not in backends else None
    peaks: dict[str, tuple[float | None, str]] = {}
    limit: float | None = 0.0 if shape else None
    per_pass = []
    for record in passes:
        dtype = generator_dtype(cfg, record["backend"])
        if dtype not in peaks:
            peaks[dtype] = (generation_peak(dtype, cfg.num_gpus, cfg.concurrency,
                                            cfg.accelerator_type)
                            if shape else (None, "no FLOP count for this generator"))
        peak, _ = peaks[dtype]
        flops = (sum(generation_flops(shape, p, g) for p, g in record["sizes"])
                 if shape else None)
        pass_limit = flops / peak if flops is not None and peak else None
        limit = limit + pass_limit if limit is not None and pass_limit is not None else None
        per_pass.append({key: record[key] for key in (
            "backend", "rows", "prompt_tokens", "distinct_prompt_tokens", "generated_tokens")}
            | {"wall_s": round(record["wall_s"], 2), "flops": flops, "limit_s": pass_limit,
               "dtype": dtype})
    (peak, source), *others = list(peaks.values()) or [(None, "no pass ran")]
    if others:
        peak, source = None, "per pass (see passes): " + "; ".join(s for _, s in peaks.values())
    return {
        "backend": ",".join(backends), "model": cfg.model,
        "rows_this_run": rows, "tokens_this_run": generated,
        "seconds_this_run": round(wall, 2), "wall_s": round(wall, 2),
        "tokens_per_s": generated / wall if wall else 0.0,
        "rows_per_s": rows / wall if wall else 0.0,
        "prompt_tokens": prompt, "generated_tokens": generated,
        "distinct_prompt_tokens": sum(p["distinct_prompt_tokens"] for p in passes),
        "limit_s": limit, "fraction_of_limit": limit / wall if limit is not None and wall
        else None,
        "peak_flops": peak, "peak_source": source, "passes": per_pass,
    }
