"""Speed: each of ours measured side by side with the original way, in the same run.

- generation: the Ray Data pipeline (each backend) against one prompt at a time through a
  transformers text-generation pipeline, and against our hf backend at batch 1, same prompts,
  same new-token budget, all end to end (model loading included); each beside its FLOP limit
  on this machine (limit_s, fraction_of_limit);
- pre-training: our MSLM stage on Ray Train (1 worker) against the released HF Trainer recipe
  (padding to 128, per-item sub-token search), same texts, batch size and steps; 2 workers
  against 1 (same total cores); and each stage (MSLM, MSLM + SCL) on Ray Train against the
  same steps in a plain loop in one process;
- pre-training step: our MSLM step in one process (DeepSpeed engine, no Ray Train) against the
  same Trainer recipe, both timed after warm-up steps on the K-shot sentences: the step's own
  speed, on any device (a GPU machine without Ray too);
- fine-tuning: our stage on Ray Train against a plain PyTorch loop (same draw, model, batches,
  optimizer, epochs, dev scoring each epoch), per-epoch wall time;
- serving: @serve.batch against one model call per request (tkre.bench.serving);
- FLOP/s: the encoder's batched inference against this machine's measured matmul peak.
"""

from __future__ import annotations

import json
import time

import torch

from tkre import layout
from tkre.bench.quality import (
    copy_knowledge,
    data_config,
    ensure_knowledge,
    train_config,
    variant_root,
)
from tkre.bench.units import settings_key
from tkre.config import BenchConfig, FinetuneConfig, GenerateConfig, PretrainConfig, int_list
from tkre.resources import resolve_model

STEP_WARMUP = 2  # untimed steps before the step throughput comparison (CUDA/allocator warm-up)


def speed_prompts(cfg: BenchConfig) -> list[list[dict]]:
    """`gen_speed_prompts` SCDG prompts of the first draw, as the knowledge stage sends them:
    `gen_speed_per_relation` per relation, which share that relation's prompt (its schema and
    `demonstrations` real examples; an SCDG round sends `oversample` x missing such requests
    per relation, answers differing by sampling), relations in turn."""
    from tkre.data import datasets
    from tkre.knowledge.prompts import scdg_messages
    from tkre.schema import derive_schemas

    splits = datasets.load_splits(data_config(cfg, *cfg.draws()[0]))
    schemas = derive_schemas(splits.train, splits.descriptions, {})
    relations = [r for r in schemas if r != splits.no_relation]
    prompts = []
    for index in range(cfg.gen_speed_prompts):
        relation = relations[index // cfg.gen_speed_per_relation % len(relations)]
        demos = [inst for inst in splits.train
                 if inst.relation == relation][:cfg.demonstrations]
        prompts.append(scdg_messages(schemas[relation], demos))
    return prompts


def generation_original(cfg: BenchConfig) -> dict:
    from tkre.bench.baselines import run_original_generation

    return run_original_generation(resolve_model(cfg.generator), speed_prompts(cfg),
                                   cfg.gen_speed_max_tokens)


def generation_ours(cfg: BenchConfig, backend: str, batch_size: int | None = None) -> dict:
    """The Ray Data pipeline end to end (dataset, replica start, model load, every block), and
    its FLOP limit on this machine (tkre.knowledge.throughput). `batch_size` 1 with hf is the
    one-prompt-at-a-time baseline on the same requests."""
    from tkre.knowledge import throughput
    from tkre.knowledge.backends import generate
    from tkre.train.cluster import init_ray

    prompts = speed_prompts(cfg)
    gen = GenerateConfig(model=cfg.generator, backend=backend, num_gpus=cfg.num_gpus,
                         batch_size=batch_size or min(cfg.generation_batch_size, len(prompts)))
    rows = [{"request_id": f"speed-{i}", "messages": json.dumps(m),
             "max_tokens": cfg.gen_speed_max_tokens, "structured": False, "seed": i}
            for i, m in enumerate(prompts)]
    init_ray()
    record = throughput.new_pass(backend)
    by_id = {row["request_id"]: row["messages"] for row in rows}
    for block in generate(gen, rows):
        throughput.count(record, block, by_id)
    throughput.finish(record)
    stats = throughput.generation_stats(gen, [record], backend)
    wall = stats["wall_s"]
    return {"backend": backend, "rows": record["rows"], "tokens": record["generated_tokens"],
            "wall_s": wall, "rows_per_s": record["rows"] / wall,
            "tokens_per_s": record["generated_tokens"] / wall, "batch_size": gen.batch_size,
            **{key: stats[key] for key in ("prompt_tokens", "distinct_prompt_tokens",
                                           "limit_s", "fraction_of_limit", "peak_flops",
                                           "peak_source")}}


def _speed_root(cfg: BenchConfig, name: str) -> tuple[str, object]:
    """A run root for a speed measurement, holding the first draw's data and knowledge."""
    from tkre.data import datasets

    k, seed = cfg.draws()[0]
    root = layout.bench_run(cfg.root, "speed", f"{name}-{settings_key(cfg)}")
    data = data_config(cfg, k, seed)
    datasets.prepare(data, root)
    copy_knowledge(ensure_knowledge(cfg, k, seed), root)
    return root, data


def speed_pretrain_config(cfg: BenchConfig, root: str, data, stage: str,
                          workers: int = 1) -> PretrainConfig:
    """A pre-training stage at the speed comparison's size; stage 2 from the base encoder, so
    its measurement needs no stage-1 run."""
    return PretrainConfig(
        root=root, data=data, train=train_config(cfg, workers), stage=stage,
        encoder=cfg.encoder, strategy=cfg.strategy, zero_stage=cfg.zero_stage,
        precision=cfg.precision, max_steps=cfg.pretrain_speed_steps,
        batch_size=cfg.pretrain_speed_batch_size, max_length=128,
        checkpoint_every=max(50, cfg.pretrain_speed_steps), scl_init="encoder")


def pretraining_ours(cfg: BenchConfig, workers: int, stage: str = "mslm") -> dict:
    """A pre-training stage on Ray Train; samples/s over its training loop (the worker's start
    and the export apart, in wall_s)."""
    from tkre.pretrain.run import run_pretrain

    name = f"pretrain-w{workers}" if stage == "mslm" else f"pretrain-{stage}-w{workers}"
    root, data = _speed_root(cfg, name)
    result = run_pretrain(speed_pretrain_config(cfg, root, data, stage, workers))[stage]
    return {"stage": stage, "workers": workers, "steps": result["steps"],
            "texts": result["texts"], "samples_per_s": result["samples_per_s"],
            "tokens_per_s": result["tokens_per_s"], "mfu": result["mfu"],
            "wall_s": result["wall_s"], "strategy": cfg.strategy,
            "precision": cfg.precision, "max_length": 128, "padding": "per batch"}


def pretraining_plain(cfg: BenchConfig, stage: str) -> dict:
    """The same stage's steps (texts, batches, model, loss, optimizer) in a plain loop: one
    process, no Ray Train, timed from the first step as the Ray Train loop is."""
    from tkre.data import datasets
    from tkre.pretrain.run import stage_inputs
    from tkre.pretrain.throughput import measure_step_throughput

    root, data = _speed_root(cfg, "pretrain-w1" if stage == "mslm" else f"pretrain-{stage}-w1")
    pretrain = speed_pretrain_config(cfg, root, data, stage)
    texts, counts, _, relations = stage_inputs(pretrain, stage, datasets.load_splits(data))
    return measure_step_throughput(pretrain, resolve_model(cfg.encoder), texts,
                                   cfg.pretrain_speed_steps, warmup=0, stage=stage,
                                   relations=tuple(relations)) | {"texts": counts}


def pretraining_original(cfg: BenchConfig) -> dict:
    from tkre.bench.baselines import run_original_mslm
    from tkre.pretrain.data import stage_texts

    root, _ = _speed_root(cfg, "pretrain-w1")
    texts, counts = stage_texts("mslm", root, [])
    result = run_original_mslm(resolve_model(cfg.encoder), texts, cfg.pretrain_speed_steps,
                               cfg.pretrain_speed_batch_size)
    return result | {"texts": counts, "precision": "fp32", "padding": "fixed 128"}


def step_texts(cfg: BenchConfig) -> list:
    """The first draw's K-shot gold sentences: needs no LLM, so it runs on any machine."""
    from tkre.data import datasets
    from tkre.pretrain.data import from_instance

    splits = datasets.load_splits(data_config(cfg, *cfg.draws()[0]))
    return [from_instance(inst) for inst in splits.train]


def pretraining_step_ours(cfg: BenchConfig) -> dict:
    """Our MSLM step (DeepSpeed engine, one process, no Ray) after 2 warm-up steps."""
    from tkre.pretrain.throughput import measure_step_throughput

    pretrain = PretrainConfig(
        root=layout.bench_run(cfg.root, "speed", f"pretrain-step-{settings_key(cfg)}"),
        data=data_config(cfg, *cfg.draws()[0]), train=train_config(cfg), stage="mslm",
        encoder=cfg.encoder, strategy="deepspeed", zero_stage=cfg.zero_stage,
        precision=cfg.precision, batch_size=cfg.pretrain_speed_batch_size, max_length=128)
    return measure_step_throughput(pretrain, resolve_model(cfg.encoder), step_texts(cfg),
                                   cfg.pretrain_speed_steps, warmup=STEP_WARMUP)


def pretraining_step_original(cfg: BenchConfig) -> dict:
    """The released HF Trainer recipe on the same sentences, timed after the same warm-up."""
    from tkre.bench.baselines import run_original_mslm

    texts = step_texts(cfg)
    return run_original_mslm(resolve_model(cfg.encoder), texts, cfg.pretrain_speed_steps,
                             cfg.pretrain_speed_batch_size, warmup=STEP_WARMUP) | {
        "texts": len(texts), "padding": "fixed 128"}


def finetuning_ours(cfg: BenchConfig) -> dict:
    """Our fine-tuning stage on Ray Train (1 worker, the bench's strategy) on the first draw:
    per-epoch wall time (training + dev scoring), and Ray Train's start-up and export apart."""
    from tkre.data import datasets
    from tkre.finetune.run import run_finetune

    root = layout.bench_run(cfg.root, "speed", f"finetune-{settings_key(cfg)}")
    data = data_config(cfg, *cfg.draws()[0])
    datasets.prepare(data, root)
    summary = run_finetune(FinetuneConfig(
        root=root, data=data, train=train_config(cfg), encoder=cfg.encoder,
        epochs=cfg.finetune_speed_epochs, batch_size=cfg.finetune_batch_size,
        lr=cfg.finetune_lr, max_length=cfg.finetune_max_length, use_synthetic=False))
    epoch_s, train = summary["epoch_s"], summary["train_gold"]
    return {"epochs": len(epoch_s), "train": train, "batch_size": cfg.finetune_batch_size,
            "epoch_s": epoch_s, "samples_per_s": train * len(epoch_s) / sum(epoch_s),
            "wall_s": summary["wall_s"], "outside_epochs_s": summary["wall_s"] - sum(epoch_s),
            "best_dev_micro_f1": summary["best_dev_micro_f1"], "strategy": "ddp, Ray Train"}


def finetuning_plain(cfg: BenchConfig) -> dict:
    """A plain PyTorch loop on the same draw, model, batches, optimizer and epochs, with all of
    this process's threads (as ours on a local cluster)."""
    from tkre.bench.baselines import run_plain_finetune
    from tkre.data import datasets
    from tkre.finetune.model import ModelMeta

    splits = datasets.load_splits(data_config(cfg, *cfg.draws()[0]))
    meta = ModelMeta(labels=splits.labels, no_relation=splits.no_relation,
                     typed_markers=splits.has_types, max_length=cfg.finetune_max_length)
    return run_plain_finetune(resolve_model(cfg.encoder), splits.train, splits.dev, meta,
                              cfg.finetune_speed_epochs, cfg.finetune_batch_size,
                              cfg.finetune_lr)


def serving_root(cfg: BenchConfig) -> str:
    k, seed = cfg.draws()[0]
    for variant in ("tkre", "finetune_only", *cfg.variant_list):
        root = variant_root(cfg, k, seed, variant)
        if layout.finetune_done(root):
            return root
    raise FileNotFoundError("serving needs a fine-tuned model: run the quality part first")


def serving(cfg: BenchConfig) -> dict:
    from tkre.bench.serving import bench_serving

    cores = float(torch.get_num_threads())
    return bench_serving(serving_root(cfg), concurrency=int_list(cfg.serve_concurrency),
                         requests_per_level=cfg.serve_requests, num_cpus=cores,
                         warmup=min(20, cfg.serve_requests))


@torch.inference_mode()
def encoder_flops(cfg: BenchConfig) -> dict:
    """Forward FLOP/s of the encoder on random full-length batches vs a measured matmul peak."""
    from tkre.finetune.model import load_encoder
    from tkre.train.flops import encoder_flops_per_token, measured_matmul_peak, peak_flops

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    encoder = load_encoder(resolve_model(cfg.encoder)).to(device=device, dtype=dtype).eval()
    conf = encoder.config
    params = sum(p.numel() for n, p in encoder.named_parameters() if "embeddings" not in n)
    batch, length = cfg.flops_batch_size, cfg.flops_seq_len
    ids = torch.randint(1000, conf.vocab_size, (batch, length), device=device)
    mask = torch.ones_like(ids)
    encoder(input_ids=ids, attention_mask=mask)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    passes, started = 0, time.perf_counter()
    while passes < 3 or time.perf_counter() - started < 3.0:
        encoder(input_ids=ids, attention_mask=mask)
        passes += 1
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    # forward only: a third of the training FLOPs per token (2N + 4 L H T)
    per_token = encoder_flops_per_token(params, conf.num_hidden_layers, conf.hidden_size,
                                        length) / 3
    achieved = per_token * batch * length * passes / elapsed
    peak = measured_matmul_peak(dtype, size=8192 if device == "cuda" else 1024, device=device)
    out = {"achieved_flops_per_s": achieved, "measured_matmul_peak_flops_per_s": peak,
           "batch_size": batch, "seq_len": length, "passes": passes, "elapsed_s": elapsed,
           "non_embedding_params": params, "dtype": str(dtype).replace("torch.", ""),
           "device": device, "threads": torch.get_num_threads(),
           "sequences_per_s": batch * passes / elapsed}
    if device == "cuda":
        out["datasheet_peak"], out["datasheet_source"] = peak_flops(
            "bf16", torch.device("cuda"))
    return out


def measurements(cfg: BenchConfig) -> dict:
    """unit name -> function measuring it, for the speed parts chosen."""
    parts = cfg.part_list
    out = {}
    if "generation" in parts:
        out["speed-generation-original"] = lambda: generation_original(cfg)
        out["speed-generation-hf-batch1"] = lambda: generation_ours(cfg, "hf", batch_size=1)
        for backend in cfg.gen_speed_backends.split(","):
            out[f"speed-generation-{backend}"] = lambda b=backend: generation_ours(cfg, b)
    if "pretraining" in parts:
        out["speed-pretrain-original"] = lambda: pretraining_original(cfg)
        for workers in int_list(cfg.scaling_workers):
            out[f"speed-pretrain-w{workers}"] = lambda w=workers: pretraining_ours(cfg, w)
        out["speed-pretrain-mslm-plain"] = lambda: pretraining_plain(cfg, "mslm")
        out["speed-pretrain-scl-w1"] = lambda: pretraining_ours(cfg, 1, "scl")
        out["speed-pretrain-scl-plain"] = lambda: pretraining_plain(cfg, "scl")
    if "pretraining_step" in parts:
        out["speed-pretrain-step-original"] = lambda: pretraining_step_original(cfg)
        out["speed-pretrain-step-ours"] = lambda: pretraining_step_ours(cfg)
    if "finetuning" in parts:
        out["speed-finetune-plain"] = lambda: finetuning_plain(cfg)
        out["speed-finetune-ours"] = lambda: finetuning_ours(cfg)
    if "text" in parts:
        from tkre.bench.text import text_speed

        out["speed-extract"] = lambda: text_speed(cfg)
    if "serving" in parts:
        out["speed-serving"] = lambda: serving(cfg)
    if "flops" in parts:
        out["speed-flops"] = lambda: encoder_flops(cfg)
    return out

