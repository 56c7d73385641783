"""The whole method in order, one config: data -> knowledge -> MSLM -> SCL -> fine-tune -> eval.

This is the only place that orders the stages; each stage job reads its inputs through
`tkre.layout` and, when they are missing, names the job that writes them.

A stage whose artifacts are complete is skipped; a partial one resumes (generation from its
ledger, training from its latest checkpoint). Completion is read from the artifacts, so after
changing an earlier stage's settings, remove the later stages' folders (or use a new root).
Per-stage wall time and the machine's peak memory growth go to ROOT/pipeline.json. The data
split is prepared once and handed to every stage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil

from tkre import layout, storage
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


Runner = Callable[[datasets.Splits], object]


def stage_runners(cfg: PipelineConfig) -> dict[str, Runner]:
    """stage -> run it on the prepared splits. Configs are built (and validated) up front."""
    from tkre.extract.thresholds import evaluate_and_fit
    from tkre.finetune.run import run_finetune
    from tkre.knowledge.job import run_generate
    from tkre.pretrain.run import run_pretrain

    generate = cfg.stage_config("generate", GenerateConfig)
    pretrain = cfg.stage_config("pretrain", PretrainConfig)
    finetune = cfg.stage_config("finetune", FinetuneConfig)
    evaluate = cfg.stage_config("evaluate", EvaluateConfig)
    mslm = PretrainConfig(**{**vars(pretrain), "stage": "mslm"})
    scl = PretrainConfig(**{**vars(pretrain), "stage": "scl"})
    return {
        "knowledge": lambda splits: run_generate(generate, splits),
        "mslm": lambda splits: run_pretrain(mslm, splits),
        "scl": lambda splits: run_pretrain(scl, splits),
        "finetune": lambda splits: run_finetune(finetune, splits),
        "evaluate": lambda splits: evaluate_and_fit(evaluate, splits),
    }


def classifier_window(cfg: PipelineConfig) -> datasets.Window | None:
    """What the fine-tuned classifier will be able to encode, known before any stage runs
    (pre-training keeps its start encoder's tokenizer); None without finetune or evaluate."""
    from tkre.finetune.markers import EncoderWindow

    if not {"finetune", "evaluate"} & set(cfg.stage_list):
        return None
    finetune = cfg.stage_config("finetune", FinetuneConfig)
    encoder = layout.finetune_start(cfg.root, finetune.encoder)
    pretrained = any(layout.pretrain_done(cfg.root, s) for s in layout.PRETRAIN_STAGES)
    if finetune.encoder == "auto" and not pretrained and {"mslm", "scl"} & set(cfg.stage_list):
        encoder = layout.pretrain_start(
            cfg.root, "mslm", cfg.stage_config("pretrain", PretrainConfig).encoder)
    return EncoderWindow.load(encoder, finetune.max_length, finetune.marker != "untyped")


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Every chosen stage in order, holding ROOT's writer lock throughout (the stages take it
    again: it is re-entrant)."""
    with layout.writing(cfg.root):
        return _run_stages(cfg)


def _run_stages(cfg: PipelineConfig) -> dict:
    started = time.perf_counter()
    runners = stage_runners(cfg)
    report: dict = {"stages": {}}
    window = classifier_window(cfg)
    with MemoryWatch() as watch:
        # once: every stage gets these splits
        splits = datasets.prepare(cfg.data, cfg.root, window)
    report["stages"]["data"] = {"peak_memory_growth_gb": round(watch.peak_growth_gb, 2)}
    for stage in cfg.stage_list:
        if layout.STAGE_DONE[stage](cfg.root):
            print(f"[pipeline] {stage}: complete, skipped", flush=True)
            report["stages"][stage] = {"skipped": True}
            continue
        print(f"[pipeline] {stage}: running", flush=True)
        stage_started = time.perf_counter()
        with MemoryWatch() as watch:
            runners[stage](splits)
        report["stages"][stage] = {"wall_s": round(time.perf_counter() - stage_started, 1),
                                   "peak_memory_growth_gb": round(watch.peak_growth_gb, 2)}
        print(f"[pipeline] {stage}: done in {report['stages'][stage]['wall_s']:.0f} s", flush=True)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    if layout.evaluate_done(cfg.root):
        metrics = storage.read_json(layout.eval_metrics(cfg.root))
        report["test_micro_f1"] = metrics["micro_f1"]
        print(f"[pipeline] test micro-F1 {metrics['micro_f1']:.4f} "
              f"(metrics in {layout.eval_metrics(cfg.root)})", flush=True)
    storage.write_json(layout.pipeline_report(cfg.root), report)
    return report
