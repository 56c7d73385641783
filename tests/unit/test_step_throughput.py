"""The single-process pre-training step measurement and the released Trainer recipe beside it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.tiny import make_tiny_encoder
from tkre.bench.baselines import run_original_mslm
from tkre.config import DataConfig, PretrainConfig
from tkre.data import datasets
from tkre.pretrain.data import from_instance
from tkre.pretrain.throughput import measure_step_throughput

GROUP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    return str(make_tiny_encoder(tmp_path_factory.mktemp("encoder")))


@pytest.fixture(scope="module")
def examples() -> list:
    return [from_instance(inst) for inst in datasets.load_splits(DataConfig(k=4)).train]


def test_step_throughput_is_repeatable_and_leaves_nothing_behind(encoder, examples,
                                                                   tmp_path: Path):
    cfg = PretrainConfig(root=str(tmp_path), stage="mslm", encoder=encoder, batch_size=4,
                         max_length=64, precision="fp32")
    before = {name: os.environ.get(name) for name in GROUP_ENV}

    first = measure_step_throughput(cfg, encoder, examples, steps=3, warmup=1)

    assert first["steps"] == 3 and first["device"] == "cpu"
    assert first["strategy"] == "deepspeed ZeRO-2" and first["precision"] == "fp32"
    assert first["samples_per_s"] > 0 and first["tokens_per_s"] > first["samples_per_s"]
    assert 0 < first["mfu"] < 1 and math.isfinite(first["final_mslm_loss"])
    assert 0 < first["mean_tokens_per_text"] <= 64
    # measured in a child process: no process group or group variables left behind here
    assert not dist.is_initialized()
    assert {name: os.environ.get(name) for name in GROUP_ENV} == before
    # same seed, same batches: a second measurement trains identically
    second = measure_step_throughput(cfg, encoder, examples, steps=3, warmup=1)
    assert second["final_mslm_loss"] == pytest.approx(first["final_mslm_loss"], rel=1e-5)


def test_a_plain_loop_runs_either_stage_in_one_process(encoder, examples, tmp_path: Path):
    """DDP's optimizer on the bare model, no Ray Train: the plain loop a stage is set beside."""
    relations = tuple(sorted({ex.relation for ex in examples}))
    for stage in ("mslm", "scl"):
        cfg = PretrainConfig(root=str(tmp_path), stage=stage, encoder=encoder, strategy="ddp",
                             batch_size=4, max_length=64)
        out = measure_step_throughput(cfg, encoder, examples, steps=2, warmup=0, stage=stage,
                                      relations=relations)
        assert out["stage"] == stage and out["strategy"].startswith("plain loop")
        assert out["samples_per_s"] > 0 and math.isfinite(out["final_mslm_loss"])
        # stage 2's contrastive loss is there only in stage 2
        assert (out["final_scl_loss"] is not None) == (stage == "scl")
    assert not dist.is_initialized()


def test_original_recipe_times_the_steps_after_warmup(encoder, examples):
    result = run_original_mslm(encoder, examples, steps=2, batch_size=4, warmup=1)
    assert result["steps"] == 3 and result["steady_steps"] == 2
    assert result["steady_samples_per_s"] > 0 and result["precision"] == "fp32"
    assert math.isfinite(result["final_loss"])
