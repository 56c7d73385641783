"""Ray Train runs and the one resume format both training loops use.

Driver side, `fit` runs a loop on a TorchTrainer whose checkpoints live under the run root
(local or s3://) and whose failed worker groups restart from the latest checkpoint. Worker side,
a loop keeps its progress in one state dict (step, epoch, best score, history, ...): `report`
writes the strategy's checkpoint (model, optimizer, schedule) with that dict inside and hands it
to Ray Train; `restore` gives the dict back, model and optimizer restored, after a restart.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tkre import layout, storage
from tkre.config import TrainConfig
from tkre.train.cluster import init_ray, worker_cpus


def fit(loop: Callable[[dict], None], loop_config: dict[str, Any], train: TrainConfig,
        run_dir: str, score: str | None = None, score_order: str = "max"):
    """Run `loop` on `train.num_workers` workers; checkpoints go under `run_dir` (a stage's
    folder from `tkre.layout`). Raises the run's error when it failed for good."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    init_ray(train.ray_address)
    storage_root, name = run_dir.rstrip("/").rsplit("/", 1)
    storage_path, filesystem = storage.ray_storage(storage_root)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=train.num_workers, use_gpu=train.use_gpu,
            resources_per_worker={"CPU": worker_cpus(train.cpus_per_worker,
                                                     train.num_workers, train.ray_address),
                                  **({"GPU": 1} if train.use_gpu else {})}),
        run_config=RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=train.num_to_keep, checkpoint_score_attribute=score,
                checkpoint_score_order=score_order)),
    )
    # Ray Train's own SIGINT handler swallows Ctrl-C into an abort that exits 1 without a word;
    # without it Ctrl-C is a KeyboardInterrupt, which tkre.cli.run_job turns into a clean stop
    trainer._register_sigint_handler = lambda controller: None
    started = time.perf_counter()
    result = trainer.fit()
    print(f"[{name}] Ray Train run finished in {time.perf_counter() - started:.1f} s")
    if result.error:
        raise result.error
    return result


def restore(strategy, fresh: dict[str, Any], name: str) -> dict[str, Any]:
    """The loop state from Ray's latest checkpoint (model/optimizer/schedule restored too),
    or `fresh` when the run starts from scratch."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return dict(fresh)
    with checkpoint.as_directory() as folder:
        state = {**fresh, **strategy.load(Path(folder))}
    state["resumed_at"] = [*state.get("resumed_at", []), state["step"]]
    print(f"[{name}] resumed from the checkpoint at step {state['step']}", flush=True)
    return state


def report(strategy, state: dict[str, Any], metrics: dict[str, Any], rank: int,
           checkpoint: bool = True) -> None:
    """Report `metrics` to Ray Train (every rank must), with the strategy's checkpoint holding
    `state` when `checkpoint` is set."""
    import ray.train
    import torch.distributed as dist

    if not checkpoint or (not strategy.every_rank_saves and rank != 0):
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        strategy.save(Path(folder), state)
        if strategy.every_rank_saves and dist.is_initialized():
            dist.barrier()  # every shard is on disk before Ray collects the folders
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def maybe_fail(fail_at_step: int | None, run_dir: str, step: int, rank: int) -> None:
    """Fault injection for tests: once per run directory, rank 0 dies at `fail_at_step`."""
    if fail_at_step != step or rank != 0:
        return
    marker = layout.failure_marker(run_dir)
    if storage.exists(marker):
        return
    storage.write_json(marker, {"step": step})
    raise RuntimeError(f"injected failure at step {step} (fail_at_step)")
