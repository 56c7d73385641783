"""Ray Train scaffolding shared by every training stage (fine-tuning, MSLM, SCL).

`init_ray` joins the cluster named by RAY_ADDRESS (as inside `ray job submit`) or starts a local
one bound to loopback; `fit` runs a TorchTrainer whose checkpoints live under the run root
(local or s3://) and whose failed workers restart from the latest checkpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from tkre import storage
from tkre.config import TrainConfig

# A local cluster on a small machine: more logical CPUs than cores, so a Ray Data read task
# never starves behind actors that hold every CPU; training threads are set explicitly.
MIN_LOCAL_CPUS = 4


def init_ray(address: str | None = None) -> None:
    """Connect to RAY_ADDRESS / `address`, or start a local loopback-only cluster."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    # Local: no usage reporting, every listener on 127.0.0.1.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=max(MIN_LOCAL_CPUS, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=True)


def fit(loop: Callable[[dict], None], loop_config: dict[str, Any], train: TrainConfig,
        storage_root: str, name: str, score: str | None = None, score_order: str = "max"):
    """Run `loop` on `train.num_workers` workers; checkpoints go to storage_root/name/."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    init_ray(train.ray_address)
    storage_path, filesystem = storage.ray_storage(storage_root)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=train.num_workers, use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker,
                                  **({"GPU": 1} if train.use_gpu else {})}),
        run_config=RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=train.num_to_keep, checkpoint_score_attribute=score,
                checkpoint_score_order=score_order)),
    )
    started = time.perf_counter()
    result = trainer.fit()
    print(f"[{name}] Ray Train run finished in {time.perf_counter() - started:.1f} s")
    return result


def worker_threads(cpus_per_worker: float) -> None:
    """Ray sets OMP_NUM_THREADS=1 in workers; use the CPUs this worker reserved."""
    import torch

    torch.set_num_threads(max(1, int(cpus_per_worker)))
