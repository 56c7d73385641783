"""The fine-tuning loop that runs inside each Ray Train worker.

Build, then per epoch: step over the training set, score the K-shot dev set, checkpoint. The
resume state is one dict (model, optimizer, scheduler, epoch, step, best dev score) saved by
rank 0 with every report, so a restarted worker group continues from the last finished epoch.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from tkre import storage
from tkre.config import FinetuneConfig, from_dict
from tkre.finetune.markers import encode
from tkre.finetune.metrics import micro_prf
from tkre.finetune.model import (
    ModelMeta,
    RelationClassifier,
    collate,
    load_encoder,
    predict_proba,
)
from tkre.schema import Instance
from tkre.train import worker_threads

STATE_FILE = "state.pt"


def build(config: dict) -> tuple[FinetuneConfig, ModelMeta, RelationClassifier, object]:
    cfg = from_dict(FinetuneConfig, config["cfg"])
    meta = ModelMeta(**config["meta"])
    encoder_dir = config["encoder"]
    if storage.is_s3(encoder_dir):
        encoder_dir = str(storage.local_copy(encoder_dir))
    torch.manual_seed(cfg.train_seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = RelationClassifier(load_encoder(encoder_dir), len(meta.labels), cfg.dropout)
    return cfg, meta, model, tokenizer


def dev_f1(model: RelationClassifier, tokenizer, meta: ModelMeta, dev: list[Instance],
           batch_size: int) -> float:
    if not dev:
        return 0.0
    probs = predict_proba(model, tokenizer, meta, dev, batch_size)
    pred = [meta.labels[i] for i in probs.argmax(-1).tolist()]
    return micro_prf([inst.relation for inst in dev], pred, meta.no_relation)["f1"]


def restore(model, optimizer, scheduler) -> dict:
    """The resume dict from Ray's latest checkpoint, or a fresh one."""
    import ray.train

    state = {"epoch": 0, "step": 0, "best_dev_micro_f1": -1.0, "best_epoch": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return state
    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(saved.pop("model"))
    optimizer.load_state_dict(saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    state.update(saved)
    print(f"[finetune] resumed from checkpoint after epoch {state['epoch']}")
    return state


def train_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg, meta, model, tokenizer = build(config)
    worker_threads(cfg.train.cpus_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    train = [Instance.from_dict(row) for row in config["train"]]
    dev = [Instance.from_dict(row) for row in config["dev"]]
    encoded = [encode(tokenizer, inst, meta.typed_markers, cfg.max_length) for inst in train]
    label_ids = [meta.label_to_id[inst.relation] for inst in train]
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    # wrap (and move to the device) before the optimizer exists, so restored optimizer state
    # lands on the parameters' device
    ddp_model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  eps=1e-6, fused=cfg.train.use_gpu)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps),
                                                total_steps)
    state = restore(model, optimizer, scheduler)

    for epoch in range(state["epoch"], cfg.epochs):
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        ddp_model.train()
        # every rank draws the same permutation and takes its slice of each global batch
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(
            cfg.train_seed * 1000 + epoch)).tolist()
        for step in range(steps_per_epoch):
            batch_ids = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            if len(batch_ids) < world:  # a rank with no rows would stall the all-reduce
                continue
            mine = batch_ids[rank::world]
            batch = collate([encoded[i] for i in mine], tokenizer.pad_token_id,
                            [label_ids[i] for i in mine])
            _, loss = ddp_model(**{k: v.to(device) for k, v in batch.items()})
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            seen += len(batch_ids)
            loss_sum += loss.item() * len(batch_ids)
        elapsed = time.perf_counter() - started
        score = dev_f1(model, tokenizer, meta, dev, cfg.eval_batch_size)
        state["epoch"] = epoch + 1
        if score > state["best_dev_micro_f1"]:
            state["best_dev_micro_f1"], state["best_epoch"] = score, epoch + 1
        metrics = {"epoch": epoch + 1, "step": state["step"],
                   "train_loss": loss_sum / max(seen, 1), "dev_micro_f1": score,
                   "best_dev_micro_f1": state["best_dev_micro_f1"],
                   "samples_per_s": seen / elapsed if elapsed else 0.0}
        if rank == 0:
            print(f"[finetune] epoch {epoch + 1}/{cfg.epochs} loss {metrics['train_loss']:.4f} "
                  f"dev micro-F1 {score:.4f} (best {state['best_dev_micro_f1']:.4f}) "
                  f"{metrics['samples_per_s']:.1f} samples/s", flush=True)
        report(metrics, state, model, optimizer, scheduler, rank)


def report(metrics: dict, state: dict, model, optimizer, scheduler, rank: int) -> None:
    """Rank 0 attaches the resume dict; every rank reports (Ray requires all to call it)."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save({**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict()}, Path(folder) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
