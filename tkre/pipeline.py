"""The whole method in order, one config: data -> knowledge -> MSLM -> SCL -> fine-tune -> eval.

A stage whose artifacts are complete is skipped; a partial one resumes (generation from its
ledger, training from its latest checkpoint). Completion is read from the artifacts, so after
changing an earlier stage's settings, remove the later stages' folders (or use a new root).
Per-stage wall time and the machine's peak memory growth go to ROOT/pipeline.json.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil

from tkre import storage
from tkre.config import (
    EvaluateConfig,
    FinetuneConfig,
    GenerateConfig,
    PipelineConfig,
    PretrainConfig,
)
from tkre.data import datasets


class MemoryWatch:
    """Peak of the machine's used memory while a stage runs (Ray workers included)."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self.baseline = psutil.virtual_memory().used

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, psutil.virtual_memory().used)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemoryWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_growth_gb(self) -> float:
        return max(0, self.peak - self.baseline) / 2**30


def knowledge_done(root: str) -> bool:
    return storage.exists(storage.join(root, "knowledge", "stats.json"))


def finetune_done(root: str) -> bool:
    return (storage.exists(storage.join(root, "finetune", "metrics.json"))
            and storage.exists(storage.join(root, "finetune", "model", "tkre_model.json")))


def evaluate_done(root: str) -> bool:
    return storage.exists(storage.join(root, "eval", "metrics.json"))


Runner = tuple[Callable[[], bool], Callable[[], object]]


def stage_runners(cfg: PipelineConfig) -> dict[str, Runner]:
    """stage -> (is it complete?, run it). Configs are built (and validated) up front."""
    from tkre.finetune.evaluate import run_evaluate
    from tkre.finetune.run import run_finetune
    from tkre.knowledge.job import run_generate
    from tkre.pretrain.run import is_complete, run_pretrain

    generate = cfg.stage_config("generate", GenerateConfig)
    pretrain = cfg.stage_config("pretrain", PretrainConfig)
    finetune = cfg.stage_config("finetune", FinetuneConfig)
    evaluate = cfg.stage_config("evaluate", EvaluateConfig)
    mslm = PretrainConfig(**{**vars(pretrain), "stage": "mslm"})
    scl = PretrainConfig(**{**vars(pretrain), "stage": "scl"})
    return {
        "knowledge": (lambda: knowledge_done(cfg.root), lambda: run_generate(generate)),
        "mslm": (lambda: is_complete(cfg.root, "mslm"), lambda: run_pretrain(mslm)),
        "scl": (lambda: is_complete(cfg.root, "scl"), lambda: run_pretrain(scl)),
        "finetune": (lambda: finetune_done(cfg.root), lambda: run_finetune(finetune)),
        "evaluate": (lambda: evaluate_done(cfg.root), lambda: run_evaluate(evaluate)),
    }


def run_pipeline(cfg: PipelineConfig) -> dict:
    started = time.perf_counter()
    runners = stage_runners(cfg)
    report: dict = {"stages": {}}
    with MemoryWatch() as watch:
        datasets.prepare(cfg.data, cfg.root)
    report["stages"]["data"] = {"peak_memory_growth_gb": round(watch.peak_growth_gb, 2)}
    for stage in cfg.stage_list:
        done, run = runners[stage]
        if done():
            print(f"[pipeline] {stage}: complete, skipped", flush=True)
            report["stages"][stage] = {"skipped": True}
            continue
        print(f"[pipeline] {stage}: running", flush=True)
        stage_started = time.perf_counter()
        with MemoryWatch() as watch:
            run()
        report["stages"][stage] = {"wall_s": round(time.perf_counter() - stage_started, 1),
                                   "peak_memory_growth_gb": round(watch.peak_growth_gb, 2)}
        print(f"[pipeline] {stage}: done in {report['stages'][stage]['wall_s']:.0f} s", flush=True)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    if evaluate_done(cfg.root):
        metrics = storage.read_json(storage.join(cfg.root, "eval", "metrics.json"))
        report["test_micro_f1"] = metrics["micro_f1"]
        print(f"[pipeline] test micro-F1 {metrics['micro_f1']:.4f} "
              f"(metrics in {storage.join(cfg.root, 'eval', 'metrics.json')})", flush=True)
    storage.write_json(storage.join(cfg.root, "pipeline.json"), report)
    return report
