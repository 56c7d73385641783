"""Ray start-up: join the cluster named by RAY_ADDRESS (as inside `ray job submit`) or start a
local one bound to loopback. Training and knowledge generation both start Ray here.
"""

from __future__ import annotations

import os
import socket

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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (a process group's or a server's)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_cpus(cpus_per_worker: float | None, num_workers: int,
                address: str | None = None) -> float:
    """The CPUs each training worker reserves: as configured, else on a local cluster this
    machine's cores split over the workers (a plain loop would use them all), else 1."""
    if cpus_per_worker:
        return float(cpus_per_worker)
    if address or os.environ.get("RAY_ADDRESS"):
        return 1.0
    return float(max(1, (os.cpu_count() or 1) // num_workers))


def worker_threads() -> None:
    """Ray sets OMP_NUM_THREADS=1 in workers; use the CPUs this worker reserved."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
