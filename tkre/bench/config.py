"""BenchConfig: what `jobs/bench.py` measures and at what size, with a quick and a full preset.

Every size field defaults to None and is filled from the preset (`--quick`: a 2-core CPU in
under 20 minutes; otherwise `full`: one GPU node, the paper's sizes). A flag given explicitly
wins over the preset, so `--quick --ks 8,16` keeps the quick sizes with two K values.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from tkre import storage
from tkre.config import DATA_ENV, _check, _help

VARIANTS = ("finetune_only", "tkre", "no_edkg", "no_scdg", "no_mslm", "no_scl")
PARTS = ("quality", "fewrel", "generation", "pretraining", "pretraining_step", "serving",
         "flops")
# parts measured without a Ray cluster (they run on a GPU machine that has no Ray)
NO_RAY_PARTS = ("pretraining_step", "flops")

# A 2-core CPU in under 20 minutes. Each Ray Train run costs ~20 s before its first step there
# (worker start and imports; a run that trains nothing measured 19.6-21.2 s), and the quick
# preset has 15 of them, so it keeps the grid small: every variant on K=8 seed 42; fine-tuning
# only and TKRE also on seed 13 (a std) and on K=16 (a second point of the F1-vs-K curve); a
# 300-sentence test subset, 1 fine-tuning epoch, 12 pre-training steps per stage, each variant
# pre-trained once; one knowledge generation shared by every draw, explanations only (the
# bundled 135M generator accepted 0 of 18 SCDG sentences without constrained decoding in the
# measured runs, so no_scdg equals tkre there); short speed runs; vLLM only in the full preset
# (its CPU engine start alone took most of a 160 s unit for 8 prompts).
QUICK = {
    "ks": "8", "seeds": "42,13", "extra_points": "16:42",
    "repeat_variants": "finetune_only,tkre", "max_test": 300,
    "encoder": "bundled-encoder", "generator": "bundled-generator", "backend": "hf",
    "num_gpus": 0.0, "use_gpu": False, "share_knowledge": True, "share_pretraining": True,
    "explanations_per_relation": 1, "synthetic_per_relation": 0, "oversample": 1.0,
    "max_rounds": 1, "max_tokens_explanation": 40, "max_tokens_sample": 96,
    "demonstrations": 2, "generation_batch_size": 18,
    "pretrain_steps": 12, "pretrain_batch_size": 8, "pretrain_max_length": 64,
    "pretrain_lr": 5e-5, "strategy": "ddp", "zero_stage": 2, "precision": "fp32",
    "finetune_epochs": 1, "finetune_batch_size": 8, "finetune_lr": 1e-4,
    "finetune_max_length": 128,
    "fewrel_episodes": 25, "fewrel_settings": "5x1,5x5,10x1,10x5",
    "gen_speed_prompts": 8, "gen_speed_max_tokens": 32, "gen_speed_backends": "hf",
    "pretrain_speed_steps": 8, "pretrain_speed_batch_size": 8, "scaling_workers": "1,2",
    "serve_requests": 40, "serve_concurrency": "1,8,32",
    "flops_batch_size": 32, "flops_seq_len": 128,
}

# One GPU node (2+ GPUs for the 1-vs-2-worker scaling row): the paper's 5 seeds, K 8/16/32,
# roberta-large, a 7B instruct generator on vLLM, full test sets, the paper's epochs.
FULL = {
    "ks": "8,16,32", "seeds": "13,21,42,87,100", "extra_points": "",
    "repeat_variants": ",".join(VARIANTS), "max_test": None,
    "encoder": "roberta-large", "generator": "Qwen/Qwen2.5-7B-Instruct", "backend": "vllm",
    "num_gpus": 1.0, "use_gpu": True, "share_knowledge": False,
    "share_pretraining": False,
    "explanations_per_relation": 6, "synthetic_per_relation": 8, "oversample": 3.0,
    "max_rounds": 3, "max_tokens_explanation": 128, "max_tokens_sample": 192,
    "demonstrations": 8, "generation_batch_size": 64,
    "pretrain_steps": None, "pretrain_batch_size": 16, "pretrain_max_length": 128,
    "pretrain_lr": 2e-5, "strategy": "deepspeed", "zero_stage": 2, "precision": "bf16",
    "finetune_epochs": 10, "finetune_batch_size": 4, "finetune_lr": 3e-5,
    "finetune_max_length": 512,
    "fewrel_episodes": 1000, "fewrel_settings": "5x1,5x5,10x1,10x5",
    "gen_speed_prompts": 256, "gen_speed_max_tokens": 256, "gen_speed_backends": "hf,vllm",
    "pretrain_speed_steps": 200, "pretrain_speed_batch_size": 16, "scaling_workers": "1,2",
    "serve_requests": 1000, "serve_concurrency": "1,8,32",
    "flops_batch_size": 128, "flops_seq_len": 128,
}
PRESETS = {"quick": QUICK, "full": FULL}


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


@dataclass
class BenchConfig:
    """Quality (SemEval variants, FewRel episodes) and speed (ours vs the original way)."""

    root: str = _help("bench root (local folder): ROOT/bench/ holds the report and every "
                      "measured unit, reused on a re-run", default="runs/bench")
    quick: bool = _help("the quick preset (2-core CPU, < 20 min) instead of the full one "
                        "(GPU node)", default=False)
    report_only: bool = _help("measure nothing: write the report from the units already "
                              "stored under ROOT (missing ones are listed)", default=False)
    parts: str = _help(f"comma-separated parts to run: {','.join(PARTS)}",
                       default=",".join(PARTS))
    data: str = _help("quality data set: semeval (the benchmark) or demo (smoke tests)",
                      default="semeval")
    data_dir: str | None = _help("SemEval folder; default: $TKRE_DATA_DIR/semeval2010_task8",
                                 default=None)
    fewrel_file: str | None = _help("FewRel-format JSON; default: $TKRE_DATA_DIR/fewrel/"
                                    "val_wiki.json", default=None)
    variants: str = _help(f"comma-separated quality variants: {','.join(VARIANTS)}",
                          default=",".join(VARIANTS))
    ks: str | None = _help("comma-separated K values, each run with every seed", default=None)
    seeds: str | None = _help("comma-separated K-shot sampling seeds", default=None)
    extra_points: str | None = _help("extra K:seed draws (comma-separated), e.g. 16:42 for a "
                                     "cheap F1-vs-K curve", default=None)
    repeat_variants: str | None = _help(
        "variants run on every draw; the others run on the first draw only", default=None)
    max_test: int | None = _help("test subset size (seeded); default preset", default=None)
    encoder: str | None = _help("base encoder of every variant", default=None)
    generator: str | None = _help("knowledge generator LLM", default=None)
    backend: str | None = _help("knowledge generation backend (hf, vllm)", default=None)
    num_gpus: float | None = _help("GPUs per generator replica", default=None)
    use_gpu: bool | None = _help("train and embed on GPUs", default=None)
    share_knowledge: bool | None = _help(
        "generate knowledge once (first K, first seed) and give every draw a copy; off: one "
        "generation per (K, seed)", default=None)
    share_pretraining: bool | None = _help(
        "pre-train each variant once, on the first draw, and fine-tune every draw from it; "
        "off: pre-training per (K, seed)", default=None)
    explanations_per_relation: int | None = _help("EDKG explanations per relation", default=None)
    synthetic_per_relation: int | None = _help("SCDG sentences wanted per relation",
                                               default=None)
    oversample: float | None = _help("SCDG requests per missing sentence", default=None)
    max_rounds: int | None = _help("SCDG rounds", default=None)
    max_tokens_explanation: int | None = _help("new tokens per explanation", default=None)
    max_tokens_sample: int | None = _help("new tokens per SCDG sample", default=None)
    demonstrations: int | None = _help("real examples shown per SCDG prompt", default=None)
    generation_batch_size: int | None = _help("requests per generator batch", default=None)
    pretrain_steps: int | None = _help("optimizer steps per pre-training stage (None: epochs)",
                                       default=None)
    pretrain_batch_size: int | None = _help("pre-training batch size", default=None)
    pretrain_max_length: int | None = _help("pre-training sub-tokens per text", default=None)
    pretrain_lr: float | None = _help("pre-training learning rate", default=None)
    strategy: str | None = _help("pre-training strategy (ddp, deepspeed)", default=None)
    zero_stage: int | None = _help("DeepSpeed ZeRO stage of pre-training (and of the step "
                                   "comparison, which always runs DeepSpeed)", default=None)
    precision: str | None = _help("pre-training precision", default=None)
    finetune_epochs: int | None = _help("fine-tuning epochs", default=None)
    finetune_batch_size: int | None = _help("fine-tuning batch size", default=None)
    finetune_lr: float | None = _help("fine-tuning learning rate", default=None)
    finetune_max_length: int | None = _help("fine-tuning sub-tokens per sentence", default=None)
    fewrel_episodes: int | None = _help("FewRel episodes per setting", default=None)
    fewrel_settings: str | None = _help("FewRel NxK settings", default=None)
    gen_speed_prompts: int | None = _help("prompts in the generation speed comparison",
                                          default=None)
    gen_speed_max_tokens: int | None = _help("new tokens per prompt there", default=None)
    gen_speed_backends: str | None = _help("Ray Data backends compared (hf, vllm)",
                                           default=None)
    pretrain_speed_steps: int | None = _help("steps in the pre-training speed comparison",
                                             default=None)
    pretrain_speed_batch_size: int | None = _help("batch size there", default=None)
    scaling_workers: str | None = _help("Ray Train worker counts compared", default=None)
    serve_requests: int | None = _help("requests per concurrency level", default=None)
    serve_concurrency: str | None = _help("client concurrency levels", default=None)
    flops_batch_size: int | None = _help("batch size of the encoder FLOP/s measurement",
                                         default=None)
    flops_seq_len: int | None = _help("sequence length there", default=None)

    def __post_init__(self) -> None:
        self.root = storage.absolute(self.root)  # its run roots and encoders reach Ray workers
        preset = self.preset_values()
        for name, value in preset.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        # data locations: flags, else $TKRE_DATA_DIR (never the package's own path)
        base = os.environ.get(DATA_ENV)
        if self.data_dir is None and self.data == "semeval" and base:
            self.data_dir = str(Path(base) / "semeval2010_task8")
        if self.fewrel_file is None and base:
            self.fewrel_file = str(Path(base) / "fewrel" / "val_wiki.json")
        self.validate()

    def preset_values(self) -> dict:
        return PRESETS[self.preset]

    @property
    def preset(self) -> str:
        return "quick" if self.quick else "full"

    def validate(self) -> None:
        _check(self.data in ("semeval", "demo"), "data", "must be semeval or demo")
        unknown = [p for p in self.part_list if p not in PARTS]
        _check(not unknown, "parts", f"unknown {unknown}; choose from {PARTS}")
        unknown = [v.strip() for v in self.variants.split(",") if v.strip() not in VARIANTS]
        _check(not unknown, "variants", f"unknown {unknown}; choose from {VARIANTS}")
        _check(bool(int_list(self.ks)) and min(int_list(self.ks)) >= 1, "ks",
               f"must be comma-separated K >= 1, got {self.ks!r}")
        _check(bool(int_list(self.seeds)), "seeds", "needs at least one seed")
        for part in self.extra_points.split(","):
            _check(not part.strip() or len(part.split(":")) == 2, "extra_points",
                   f"must look like 16:42,32:42, got {self.extra_points!r}")
        _check(self.backend in ("hf", "vllm"), "backend", "must be hf or vllm")
        _check(self.zero_stage in (0, 1, 2, 3), "zero_stage", "must be 0, 1, 2 or 3")
        for name in ("finetune_epochs", "pretrain_batch_size", "fewrel_episodes",
                     "gen_speed_prompts", "pretrain_speed_steps", "serve_requests"):
            _check(getattr(self, name) >= 1, name, "must be >= 1")
        _check(all(b in ("hf", "vllm") for b in self.gen_speed_backends.split(",")),
               "gen_speed_backends", "must be a comma-separated subset of hf,vllm")

    def require_data(self) -> None:
        """Before measuring: the data the chosen parts read must have a location."""
        if self.report_only:
            return
        _check(not (self.data == "semeval" and not self.data_dir
                    and set(self.part_list) - {"flops"}), "data_dir",
               f"no SemEval folder: pass --data-dir or set ${DATA_ENV} (its "
               "semeval2010_task8/ subfolder is used)")
        _check(not ("fewrel" in self.part_list and not self.fewrel_file), "fewrel_file",
               f"no FewRel file: pass --fewrel-file or set ${DATA_ENV} (its "
               "fewrel/val_wiki.json is used)")

    @property
    def part_list(self) -> list[str]:
        return [p.strip() for p in self.parts.split(",") if p.strip()]

    @property
    def variant_list(self) -> list[str]:
        chosen = {v.strip() for v in self.variants.split(",") if v.strip()}
        return [v for v in VARIANTS if v in chosen]  # tkre before no_scl (it reuses its MSLM)

    def draws(self) -> list[tuple[int, int]]:
        """Every (K, seed) of the grid (K-major, seeds as given), then the extra points; the
        first draw holds the ablations and the shared pre-training."""
        grid = [(k, s) for k in int_list(self.ks) for s in int_list(self.seeds)]
        extra = [tuple(int(x) for x in part.split(":"))
                 for part in self.extra_points.split(",") if part.strip()]
        return list(dict.fromkeys(grid + extra))

    def variants_for(self, k: int, seed: int) -> list[str]:
        if (k, seed) == self.draws()[0]:
            return self.variant_list
        repeated = {v.strip() for v in self.repeat_variants.split(",")}
        return [v for v in self.variant_list if v in repeated]

    def settings(self) -> dict:
        return dataclasses.asdict(self) | {"preset": self.preset}
