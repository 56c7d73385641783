"""The fine-tuning loop that runs inside each Ray Train worker.

Build, then per epoch: step over the training set, score the K-shot dev set, checkpoint. It runs
on the training scaffold (`tkre.train`): the strategy (DDP, or DeepSpeed ZeRO 0-2) steps the
model, and the resume state is one dict (epoch, step, best dev score) saved inside the
strategy's checkpoint at each epoch that improves the dev score and at the last one, so a
restarted worker group continues from the last checkpointed epoch with the same data order.
"""

from __future__ import annotations

import math
import time

import torch
from transformers import AutoTokenizer

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
from tkre.train.cluster import worker_threads
from tkre.train.strategy import StrategySettings, make_strategy
from tkre.train.trainer import report, restore

# AdamW's epsilon for fine-tuning (the classifier recipe's; pre-training keeps torch's 1e-8)
ADAM_EPS = 1e-6


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


def budget(cfg: FinetuneConfig, train_size: int, gold_size: int) -> tuple[int, int]:
    """(optimizer steps, passes over the training data): `max_steps` when set, else `epochs`
    passes over the gold set (budget gold) or over everything trained on (budget data)."""
    counted = gold_size if cfg.budget == "gold" else train_size
    total = cfg.max_steps or math.ceil(max(counted, 1) / cfg.batch_size) * cfg.epochs
    return total, math.ceil(total / math.ceil(train_size / cfg.batch_size))


def train_loop(config: dict) -> None:
    import ray.train

    cfg, meta, model, tokenizer = build(config)
    worker_threads()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    train = [Instance.from_dict(row) for row in config["train"]]
    dev = [Instance.from_dict(row) for row in config["dev"]]
    encoded = [encode(tokenizer, inst, meta.typed_markers, cfg.max_length) for inst in train]
    label_ids = [meta.label_to_id[inst.relation] for inst in train]
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps, epochs = budget(cfg, len(train), config["gold_size"])
    strategy = make_strategy(model, StrategySettings.of(cfg, eps=ADAM_EPS), world, total_steps)
    state = restore(strategy, {"epoch": 0, "step": 0, "best_dev_micro_f1": -1.0,
                               "best_epoch": 0, "epoch_s": []}, "finetune")

    for epoch in range(state["epoch"], epochs):
        # the loss sum stays on the device: reading it every step would sync a GPU each step
        started, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=strategy.device)
        model.train()
        # every rank draws the same permutation and takes its slice of each global batch
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(
            cfg.train_seed * 1000 + epoch)).tolist()
        for step in range(steps_per_epoch):
            if state["step"] >= total_steps:  # a step budget can end part-way through a pass
                break
            batch_ids = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            if len(batch_ids) < world:  # a rank with no rows would stall the all-reduce
                continue
            mine = batch_ids[rank::world]
            batch = collate([encoded[i] for i in mine], tokenizer.pad_token_id,
                            [label_ids[i] for i in mine])
            _, loss = strategy.forward({k: v.to(strategy.device) for k, v in batch.items()})
            strategy.backward(loss)
            strategy.step()
            state["step"] += 1
            seen += len(batch_ids)
            loss_sum += loss.detach().float() * len(batch_ids)
        elapsed = time.perf_counter() - started
        score = dev_f1(model, tokenizer, meta, dev, cfg.eval_batch_size)
        # each epoch's wall time, training and dev scoring (what a plain loop's epoch does)
        state["epoch_s"] = [*state.get("epoch_s", []), time.perf_counter() - started]
        state["epoch"] = epoch + 1
        improved = score > state["best_dev_micro_f1"]
        if improved:
            state["best_dev_micro_f1"], state["best_epoch"] = score, epoch + 1
        metrics = {"epoch": epoch + 1, "step": state["step"],
                   "train_loss": float(loss_sum) / max(seen, 1), "dev_micro_f1": score,
                   "best_dev_micro_f1": state["best_dev_micro_f1"],
                   "samples_per_s": seen / elapsed if elapsed else 0.0,
                   "epoch_s": state["epoch_s"]}
        if rank == 0:
            print(f"[finetune] epoch {epoch + 1}/{epochs} loss {metrics['train_loss']:.4f} "
                  f"dev micro-F1 {score:.4f} (best {state['best_dev_micro_f1']:.4f}) "
                  f"{metrics['samples_per_s']:.1f} samples/s", flush=True)
        # a checkpoint (model, optimizer: 3x the model's size) only where the export or a
        # resume needs one: a new best dev score, or the end of the budget
        report(strategy, state, metrics, rank, checkpoint=improved or epoch + 1 == epochs
               or state["step"] >= total_steps)
