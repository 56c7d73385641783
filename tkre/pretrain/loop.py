"""The pre-training loop that runs inside each Ray Train worker (both stages).

Build the model, then step: every rank draws the same permutation of the data for an epoch and
takes its slice of each global batch; masks and negative spans come from random numbers drawn
for the whole global batch from a generator keyed on the step, so the training signal does not
depend on the number of workers. Every `checkpoint_every` steps (and at the last step) the
strategy writes a checkpoint that Ray Train stores under ROOT/pretrain/<stage>/. A restarted
worker group resumes at the checkpoint's step: the data position follows from the step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from transformers import AutoModelForMaskedLM, AutoTokenizer

from tkre import storage
from tkre.config import PretrainConfig, from_dict
from tkre.pretrain.masking import MaskProbs, TextExample, collate, encode_texts
from tkre.pretrain.model import PretrainModel, SCLSettings
from tkre.train import flops
from tkre.train.cluster import worker_threads
from tkre.train.strategy import StrategySettings, make_strategy, resolved_precision
from tkre.train.trainer import maybe_fail, report, restore

# the step key of the held-out masks: far from any training step, so never a training draw
HELDOUT_STEP = 10**9


@dataclass
class Plan:
    """How many steps, and which rows each step takes."""

    num_examples: int
    batch_size: int
    total_steps: int

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.num_examples // self.batch_size)  # drop the ragged last batch

    def batch(self, step: int, seed: int) -> list[int]:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = torch.randperm(self.num_examples,
                               generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        return order[index * self.batch_size:(index + 1) * self.batch_size].tolist()


def plan(cfg: PretrainConfig, num_examples: int) -> Plan:
    steps_per_epoch = max(1, num_examples // cfg.batch_size)
    return Plan(num_examples, cfg.batch_size, cfg.max_steps or steps_per_epoch * cfg.epochs)


def load_mlm(encoder_dir: str) -> tuple[torch.nn.Module, bool]:
    """The masked-LM model, and whether its head was initialised here (the encoder shipped
    none, as the bundled MiniLM: its loss starts above ln |V|)."""
    mlm, info = AutoModelForMaskedLM.from_pretrained(encoder_dir, output_loading_info=True)
    fresh = any(key.startswith(("cls.", "lm_head.")) for key in info["missing_keys"])
    return mlm, fresh


def build_model(cfg: PretrainConfig, encoder_dir: str, num_relations: int) -> PretrainModel:
    mlm, fresh_head = load_mlm(encoder_dir)
    settings = SCLSettings(cfg.tau, cfg.lambda_mslm, cfg.lambda_scl, cfg.entity_positives,
                           cfg.anchor_negatives)
    # a fresh head learns at its own, higher rate while the encoder's rate is still warming
    # up, so the encoder is not trained mostly through a random projection
    return PretrainModel(mlm, num_relations, settings,
                         head_lr_scale=cfg.head_lr_scale if fresh_head else 1.0)


@torch.inference_mode()
def mslm_loss(cfg: PretrainConfig, encoder_dir: str, examples: list[TextExample]) -> float:
    """Mean MSLM loss per masked token of `examples` (held-out texts) under `encoder_dir`,
    with masks fixed by the seed, so a stage's start and end are compared on the same masks.
    A head the encoder did not ship starts as training starts it (same seed)."""
    torch.manual_seed(cfg.train_seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    encoded = encode_texts(tokenizer, examples, cfg.max_length)
    model = build_model(cfg, encoder_dir, 0).eval()
    total, count = 0.0, 0
    for start in range(0, len(encoded), cfg.batch_size):
        rows = list(range(start, min(start + cfg.batch_size, len(encoded))))
        batch = rank_batch(cfg, tokenizer, encoded, rows, HELDOUT_STEP + start, negatives=0)
        masked = batch["mlm_labels"].numel()
        total += float(model(**batch)["mslm"]) * masked
        count += masked
    return total / max(count, 1)


def step_draws(seed: int, step: int, rows: int, width: int, negatives: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch's random numbers for step `step`: identical on every rank."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return (torch.rand(rows, width, generator=generator),
            torch.rand(rows, max(negatives, 1), 2, generator=generator))


def rank_batch(cfg: PretrainConfig, tokenizer, encoded: list, rows: list[int], step: int,
               negatives: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """This rank's share of the global batch `rows` at `step`: masked, padded, span masks."""
    uniform, negative_uniform = step_draws(cfg.train_seed, step, len(rows), cfg.max_length,
                                           negatives)
    mine = list(range(rank, len(rows), world))
    probs = MaskProbs(cfg.mask_relation, cfg.mask_entity, cfg.mask_other)
    return collate([encoded[rows[i]] for i in mine], tokenizer.pad_token_id,
                   tokenizer.mask_token_id, probs, uniform[mine], negatives,
                   cfg.negative_max_len, negative_uniform[mine])


def train_step(strategy, batch: dict[str, torch.Tensor]) -> dict:
    """Forward, backward and optimizer step on the strategy's device; the model's outputs."""
    if strategy.device.type == "cuda":  # pinned host memory: the copies do not block
        batch = {k: v.pin_memory().to(strategy.device, non_blocking=True)
                 for k, v in batch.items()}
    else:
        batch = {k: v.to(strategy.device) for k, v in batch.items()}
    out = strategy.forward(batch)
    strategy.backward(out["loss"])
    strategy.step()
    return out


def train_loop(config: dict) -> None:
    import ray.train

    cfg = from_dict(PretrainConfig, config["cfg"])
    stage, relations = config["stage"], config["relations"]
    worker_threads()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.train_seed)

    encoder_dir = config["encoder"]
    if storage.is_s3(encoder_dir):
        encoder_dir = str(storage.local_copy(encoder_dir))
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    examples = [TextExample(e["text"], tuple(e["head"]), tuple(e["tail"]), e.get("relation"))
                for e in config["examples"]]
    encoded = encode_texts(tokenizer, examples, cfg.max_length,
                           {name: i for i, name in enumerate(relations)})
    model = build_model(cfg, encoder_dir, len(relations) if stage == "scl" else 0)
    schedule = plan(cfg, len(encoded))
    settings = StrategySettings.of(cfg)
    strategy = make_strategy(model, settings, world, schedule.total_steps)
    state = restore(strategy, {"step": 0}, stage)
    meter = Meter(model, cfg, strategy.device, world)
    negatives = cfg.negatives if stage == "scl" else 0
    if rank == 0:
        print(f"[{stage}] {len(encoded)} texts, {schedule.total_steps} steps of "
              f"{cfg.batch_size} on {world} worker(s), {cfg.strategy}"
              f"{f' ZeRO-{cfg.zero_stage}' if cfg.strategy == 'deepspeed' else ''}, "
              f"{resolved_precision(settings)}; starting at step {state['step']}", flush=True)

    while state["step"] < schedule.total_steps:
        step = state["step"]
        batch = rank_batch(cfg, tokenizer, encoded, schedule.batch(step, cfg.train_seed), step,
                           negatives, rank, world)
        out = train_step(strategy, batch)
        state["step"] = step + 1
        meter.add(batch, out)
        maybe_fail(cfg.fail_at_step, config["run_dir"], state["step"], rank)
        last = state["step"] == schedule.total_steps
        if state["step"] % cfg.log_every == 0 or last or state["step"] == 1:
            metrics = meter.flush(state["step"], strategy.lr)
            if rank == 0:
                print(f"[{stage}] step {state['step']}/{schedule.total_steps} "
                      f"{meter.line(metrics)}", flush=True)
            state["last"] = metrics
            state["history"] = [*state.get("history", []),
                                [state["step"], metrics["mslm_loss"], metrics.get("scl_loss")]]
        if state["step"] % cfg.checkpoint_every == 0 or last:
            report(strategy, state, checkpoint_metrics(state), rank)
    if state.get("resumed_at", [None])[-1] == schedule.total_steps:
        # resumed after the end: report the final state again
        report(strategy, state, checkpoint_metrics(state), rank)


def checkpoint_metrics(state: dict) -> dict:
    """What a checkpoint reports: the latest window's metrics, the step and the history."""
    metrics = {**state.get("last", {}), "step": state["step"],
               "resumed_at": state.get("resumed_at", []), "history": state.get("history", [])}
    metrics.pop("peak_source", None)
    return metrics


class Meter:
    """Losses, samples/s, tokens/s and MFU over the steps since the last flush (all ranks)."""

    def __init__(self, model: PretrainModel, cfg: PretrainConfig, device: torch.device,
                 world: int):
        encoder = model.mlm.base_model
        embeddings = sum(p.numel() for p in encoder.get_input_embeddings().parameters())
        self.params = sum(p.numel() for p in model.parameters()) - embeddings
        self.layers = encoder.config.num_hidden_layers
        self.hidden = encoder.config.hidden_size
        self.peak, self.peak_source = (cfg.peak_flops, "config") if cfg.peak_flops else \
            flops.peak_flops(resolved_precision(StrategySettings.of(cfg)), device)
        self.world, self.device = world, device
        self.run_started, self.run_sums = time.perf_counter(), torch.zeros(6, dtype=torch.float64)
        self.reset()

    def reset(self) -> None:
        self.started = time.perf_counter()
        self.sums = torch.zeros(6, dtype=torch.float64)  # samples tokens flops mslm scl scl_n
        # the losses stay on the training device until a flush: reading them every step
        # would make each GPU step wait for the host
        self.loss_sums = torch.zeros(3, dtype=torch.float64, device=self.device)

    def add(self, batch: dict, out: dict) -> None:
        """Count one step: sizes from the host-side batch, losses as device tensors."""
        lengths = batch["attention_mask"].sum(1).double()
        model_flops = sum(flops.encoder_flops_per_token(self.params, self.layers, self.hidden,
                                                        float(n)) * float(n) for n in lengths)
        rows = len(lengths)
        self.sums[:3] += torch.tensor([rows, float(lengths.sum()), model_flops],
                                      dtype=torch.float64)
        used = out["scl_examples"].double()
        self.loss_sums += torch.stack([out["mslm"].detach().double() * rows,
                                       out.get("scl", torch.zeros((), device=used.device))
                                       .detach().double() * used, used])

    def _collect(self) -> None:
        """Bring the device-side loss sums into the host sums (one read per flush)."""
        losses = self.loss_sums.cpu()
        self.sums[3:] += losses
        self.run_sums += self.sums
        self.loss_sums.zero_()

    def flush(self, step: int, lr: float) -> dict:
        """Window metrics since the last flush, plus `run_*` figures since this worker began."""
        self._collect()
        metrics = self._summary(self.sums, self.started, step, lr)
        run = self._summary(self.run_sums, self.run_started, step, lr)
        for key in ("samples_per_s", "tokens_per_s", "mfu", "mslm_loss", "scl_loss"):
            if key in run:
                metrics[f"run_{key}"] = run[key]
        self.reset()
        return metrics

    def _summary(self, sums: torch.Tensor, started: float, step: int, lr: float) -> dict:
        sums = sums.clone()
        if dist.is_available() and dist.is_initialized() and self.world > 1:
            dist.all_reduce(sums)
        elapsed = max(time.perf_counter() - started, 1e-9)
        samples, tokens, model_flops, mslm, scl, scl_n = sums.tolist()
        metrics = {"step": step, "lr": lr, "mslm_loss": mslm / max(samples, 1),
                   "samples_per_s": samples / elapsed, "tokens_per_s": tokens / elapsed,
                   "model_flops_per_s": model_flops / elapsed,
                   "mfu": model_flops / elapsed / (self.peak * self.world),
                   "peak_flops_per_worker": self.peak, "peak_source": self.peak_source}
        if scl_n:
            metrics["scl_loss"] = scl / scl_n
        metrics["scl_examples"] = int(scl_n)
        return metrics

    @staticmethod
    def line(m: dict) -> str:
        scl = f" scl {m['scl_loss']:.4f}" if "scl_loss" in m else ""
        return (f"mslm {m['mslm_loss']:.4f}{scl} lr {m['lr']:.2e} "
                f"{m['samples_per_s']:.1f} samples/s {m['tokens_per_s']:.0f} tokens/s "
                f"MFU {100 * m['mfu']:.2f}%")
