"""Ray start-up: join the cluster named by `--ray-address` / RAY_ADDRESS (as inside `ray job
submit`), or start this job's own local cluster: every listener on 127.0.0.1 and Ray's token
authentication on (RAY_AUTH_MODE=disabled turns it off). Training and knowledge generation both
start Ray here; `shutdown_ray` is what an interrupted job calls on its way out.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tkre.config import ConfigError

# A local cluster on a small machine: more logical CPUs than cores, so a Ray Data read task
# never starves behind actors that hold every CPU; training threads are set explicitly.
MIN_LOCAL_CPUS = 4
LOOPBACK = "127.0.0.1"
# Where Ray looks for a token (besides RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH).
RAY_TOKEN_FILE = Path("~/.ray/auth_token")


def init_ray(address: str | None = None) -> None:
    """Connect to `address` / RAY_ADDRESS, or start a local loopback-only cluster. Never joins
    a cluster implicitly (a `ray start` head, or a dead one's leftover address file)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    sigterm = signal.getsignal(signal.SIGTERM)
    if address and address != "local":
        join_cluster(address)
    else:
        start_local_cluster()
    # ray.init replaces the SIGTERM handler with sys.exit(15); keep the job's own
    # (tkre.cli.run_job turns SIGTERM into the same clean stop as Ctrl-C)
    if callable(sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)


def join_cluster(address: str) -> None:
    """ray.init on an existing cluster; one line naming the address when there is none."""
    import ray

    try:
        refuse_dead_address(address)
        ray.init(address=address)
    except (ConnectionError, ValueError) as err:
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"ray_address: no Ray cluster at {address!r} (from --ray-address or RAY_ADDRESS): "
            f"{reason}; start it (`ray start --head ...`), fix the address, or unset both to "
            "run on a local cluster of this job's own") from None


def refuse_dead_address(address: str) -> None:
    """Fail at once, not after Ray's 30 s of retries, when nothing listens at a host:port."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", ray://, or something ray.init judges itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise ConnectionError(f"nothing answers at {host}:{port} ({err.strerror or err})"
                              ) from None


def start_local_cluster() -> None:
    """A cluster for this job alone: loopback only, token authentication unless
    RAY_AUTH_MODE=disabled, never an existing cluster (address="local")."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if sys.platform.startswith("linux"):
        # torch's gloo (DDP on a CPU) listens on the address the host name resolves to
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # Ray Train's patched print() both prints (a Ray worker's stdout is not sys.__stdout__) and
    # logs to the root logger, which prints again: every worker line twice. The workers inherit
    # this from the driver's environment; unpatched, a worker line is printed once.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    private_auth_token()
    with loopback_node():
        ray.init(address="local", _node_ip_address=LOOPBACK,
                 num_cpus=max(MIN_LOCAL_CPUS, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=True)


def private_auth_token() -> None:
    """Ray 2.60 turns token authentication on for a new local cluster unless
    RAY_AUTH_MODE=disabled, and writes a missing token to ~/.ray/auth_token with the umask's
    permissions (usually readable by every local user). When the user configured no token, give
    this job's cluster a fresh one in the environment instead: its processes inherit it, and
    nothing is written to disk."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return
    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or RAY_TOKEN_FILE.expanduser().exists()):
        return
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


@contextmanager
def loopback_node() -> Iterator[None]:
    """Keep 127.0.0.1 as the node's address. Ray replaces a loopback node address with the
    machine's (and then its GCS, raylet, workers and agents listen on every interface) unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, a flag it reads once at import: set it for the
    cluster's processes, and for this one while ray.init resolves the address."""
    from ray._private import ray_constants

    saved_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def shutdown_ray() -> None:
    """Stop this job's Ray (its local cluster, or its connection to a remote one), if any."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


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
