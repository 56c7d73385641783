"""Pre-training step throughput in one process, without Ray Train.

The same tokenisation, batches, model and DeepSpeed engine as a worker's loop
(`tkre.pretrain.loop`), timed after a few warm-up steps. `jobs/bench.py` uses it to set our step
beside the released HF Trainer recipe on any device, a GPU machine without Ray included, and to
separate the step's own speed from Ray Train's start-up and per-step bookkeeping.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import torch
from transformers import AutoTokenizer

from tkre.config import PretrainConfig
from tkre.pretrain.loop import Meter, Plan, build_model, rank_batch, train_step
from tkre.pretrain.masking import TextExample, encode_texts
from tkre.train.cluster import free_port
from tkre.train.strategy import StrategySettings, make_strategy, resolved_precision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step_throughput(cfg: PretrainConfig, encoder_dir: str,
                            examples: list[TextExample], steps: int, warmup: int = 2,
                            stage: str = "mslm", relations: tuple[str, ...] = ()) -> dict:
    """Samples/s, tokens/s and MFU of `steps` steps of `stage` (its model, its negatives) after
    `warmup` untimed ones, with the config's strategy in one process: DeepSpeed's engine, or
    for DDP the bare model with the same optimizer and schedule (a plain loop).

    Runs in a fresh (spawned) process: DeepSpeed's process group and its cached groups live and
    die there, so measurements can follow each other and the caller's process stays clean.
    """
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(_measure, cfg, encoder_dir, examples, steps, warmup, stage,
                           tuple(relations)).result()


def _measure(cfg: PretrainConfig, encoder_dir: str, examples: list[TextExample], steps: int,
             warmup: int, stage: str, relations: tuple[str, ...]) -> dict:
    # a world of one on loopback, for DeepSpeed's own process group
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    torch.manual_seed(cfg.train_seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    encoded = encode_texts(tokenizer, examples, cfg.max_length,
                           {name: i for i, name in enumerate(relations)})
    schedule = Plan(len(encoded), cfg.batch_size, warmup + steps)
    model = build_model(cfg, encoder_dir, len(relations) if stage == "scl" else 0)
    settings = StrategySettings.of(cfg)
    strategy = make_strategy(model, settings, 1, schedule.total_steps, ray_train=False)
    negatives = cfg.negatives if stage == "scl" else 0
    meter = Meter(model, cfg, strategy.device, 1)
    for step in range(schedule.total_steps):
        if step == warmup:
            _sync(strategy.device)
            meter.reset()
        batch = rank_batch(cfg, tokenizer, encoded, schedule.batch(step, cfg.train_seed),
                           step, negatives=negatives)
        meter.add(batch, train_step(strategy, batch))
    _sync(strategy.device)
    metrics = meter.flush(schedule.total_steps, strategy.lr)
    return {"steps": steps, "warmup_steps": warmup, "batch_size": cfg.batch_size,
            "texts": len(encoded), "samples_per_s": metrics["samples_per_s"],
            "tokens_per_s": metrics["tokens_per_s"], "mfu": metrics["mfu"],
            "peak_flops": metrics["peak_flops_per_worker"], "peak_source": metrics["peak_source"],
            "final_mslm_loss": metrics["mslm_loss"], "device": str(strategy.device),
            "stage": stage, "final_scl_loss": metrics.get("scl_loss"),
            "strategy": (f"deepspeed ZeRO-{cfg.zero_stage}" if cfg.strategy == "deepspeed"
                         else "plain loop (torch AdamW, no DDP wrapper)"),
            "precision": resolved_precision(settings),
            "adamw": "torch, fused" if cfg.train.use_gpu else "torch",
            "max_length": cfg.max_length, "padding": "per batch",
            "mean_tokens_per_text": sum(len(e.input_ids) for e in encoded) / len(encoded)}
