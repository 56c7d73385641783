"""Serving speed: /v1/extract with @serve.batch against one model call per request.

    from tkre.bench.serving import bench_serving
    bench_serving("runs/demo", concurrency=(1, 8, 32), requests_per_level=200)

Both modes run the same deployment, model and replica resources on a free 127.0.0.1 port; only
`batching` differs (False: each request is one forward pass, as OpenNRE's `infer`). The client
keeps `concurrency` requests in flight on keep-alive connections, each with one item drawn from
the demo test set, and records throughput and latency percentiles after a warm-up.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from tkre.data.datasets import demo_dir
from tkre.train.cluster import free_port


def demo_items(count: int, seed: int = 0) -> list[dict]:
    """`count` wire-format items (text, character offsets, types) from the demo test set."""
    rows = [json.loads(line) for line in (demo_dir() / "test.jsonl").read_text().splitlines()
            if line.strip()]
    rng = random.Random(seed)
    return [{"text": row["text"], "head": {k: row["head"][k] for k in ("start", "end", "type")},
             "tail": {k: row["tail"][k] for k in ("start", "end", "type")}}
            for row in (rng.choice(rows) for _ in range(count))]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def load_test(port: int, bodies: list[bytes], concurrency: int) -> dict[str, float]:
    """Send every body with `concurrency` client threads; throughput and latency in ms."""
    latencies: list[float] = []
    failures = [0]
    cursor = iter(range(len(bodies)))
    lock = threading.Lock()

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                break
            started = time.perf_counter()
            connection.request("POST", "/v1/extract", bodies[index],
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                failures[0] += response.status != 200
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": len(bodies), "failed": failures[0],
            "throughput_rps": len(bodies) / wall, "p50_ms": 1000 * _percentile(latencies, 0.5),
            "p99_ms": 1000 * _percentile(latencies, 0.99)}


def bench_serving(root: str, concurrency: Sequence[int] = (1, 8, 32),
                  requests_per_level: int = 200, max_batch_size: int = 32,
                  batch_wait_timeout_s: float = 0.01, num_cpus: float = 2.0,
                  warmup: int = 20) -> dict[str, Any]:
    """{"batched": [...], "per_request": [...]} rows per concurrency level, plus the setup.

    Starts Serve on a free 127.0.0.1 port inside the current Ray session (a local one when
    none is running) and shuts Serve down at the end. `num_cpus` is the replica's CPU share and
    so its torch thread count (Ray sets OMP_NUM_THREADS from it): with 1, one batch at a time
    runs on one core while concurrent per-request calls spread over all of them.
    """
    from ray import serve

    from tkre.extract.deployment import AppArgs, ExtractorDeployment
    from tkre.train.cluster import init_ray

    init_ray()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    bodies = [json.dumps({"items": [item], "top_k": 3}).encode()
              for item in demo_items(requests_per_level)]
    # enough in flight that neither mode is capped by the deployment's own limits
    options = {"ray_actor_options": {"num_cpus": num_cpus},
               "max_ongoing_requests": 2 * max(concurrency), "max_queued_requests": -1}
    results: dict[str, Any] = {"root": root, "max_batch_size": max_batch_size,
                               "batch_wait_timeout_s": batch_wait_timeout_s,
                               "replica_cpus": num_cpus, "items_per_request": 1}
    try:
        for mode, batching in (("batched", True), ("per_request", False)):
            args = AppArgs(root=root, batching=batching, max_batch_size=max_batch_size,
                           batch_wait_timeout_s=batch_wait_timeout_s).model_dump()
            serve.run(ExtractorDeployment.options(**options).bind(args), name="bench",
                      route_prefix="/")
            load_test(port, bodies[:warmup], min(4, max(concurrency)))
            results[mode] = [load_test(port, bodies, level) for level in concurrency]
            serve.delete("bench")
    finally:
        serve.shutdown()
    return results


def format_table(results: dict[str, Any]) -> str:
    """A markdown table: one row per mode and concurrency level."""
    lines = ["| mode | concurrency | requests/s | p50 ms | p99 ms | failed |",
             "| --- | --- | --- | --- | --- | --- |"]
    for mode in ("batched", "per_request"):
        for row in results.get(mode, []):
            lines.append(f"| {mode} | {row['concurrency']} | {row['throughput_rps']:.1f} | "
                         f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['failed']} |")
    return "\n".join(lines)
