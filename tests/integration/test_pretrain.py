"""Both pre-training stages on a local Ray cluster: DeepSpeed ZeRO-2 on 2 CPU workers, S3
checkpoints, resume after an injected failure, 1 vs 2 workers. The bundled encoder and a run
root relative to the launch directory are covered by the README's pre-training command
(tests/unit/test_readme.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pretrain_fixtures import write_knowledge
from tests.tiny import make_tiny_encoder
from tkre import storage
from tkre.config import DataConfig, PretrainConfig, TrainConfig
from tkre.data import datasets
from tkre.pretrain.run import run_pretrain

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    # no dropout: runs on 1 and 2 workers must see identical computations
    return str(make_tiny_encoder(tmp_path_factory.mktemp("encoder"), dropout=0.0))


def prepared_root(root: str) -> str:
    splits = datasets.prepare(DataConfig(), root)
    write_knowledge(root, splits.train)
    return root


def small(root: str, encoder: str, **overrides) -> PretrainConfig:
    values = dict(root=root, encoder=encoder, max_steps=6, batch_size=8, checkpoint_every=2,
                  log_every=1, train=TrainConfig(num_workers=2))
    values.update(overrides)
    return PretrainConfig(**values)


def test_both_stages_zero2_two_workers_checkpoints_in_s3(ray_cluster, s3_bucket, tiny_encoder):
    root = prepared_root(f"s3://{s3_bucket}/run")
    cfg = small(root, tiny_encoder, strategy="deepspeed", zero_stage=2,
                train=TrainConfig(num_workers=2, num_to_keep=2))
    results = run_pretrain(cfg)

    keys = [obj["Key"] for page in storage.s3_client().get_paginator("list_objects_v2")
            .paginate(Bucket=s3_bucket, Prefix="run/pretrain/") for obj in page.get("Contents", [])]
    for stage in ("mslm", "scl"):
        assert results[stage]["steps"] == 6
        checkpoints = {k.split("/")[3] for k in keys
                       if k.startswith(f"run/pretrain/{stage}/checkpoint_") and k.count("/") > 3}
        assert len(checkpoints) == 2, checkpoints  # 3 written (steps 2, 4, 6), num_to_keep=2
        # DeepSpeed shards of both ranks merged into each checkpoint
        assert any(k.endswith("zero_pp_rank_1_mp_rank_00_optim_states.pt") for k in keys
                   if k.startswith(f"run/pretrain/{stage}/checkpoint_"))
        assert f"run/pretrain/{stage}/model/config.json" in keys
        assert f"run/pretrain/{stage}/metrics.json" in keys
    # stage 2 started from stage 1's export, with an anchor per relation, and counted its SCL rows
    assert results["scl"]["encoder_start"] == f"{root}/pretrain/mslm/model"
    assert len(results["scl"]["relations"]) == 7
    assert results["scl"]["final"]["scl_examples"] > 0
    assert results["mslm"]["samples_per_s"] > 0 and results["mslm"]["mfu"] > 0
    assert "run/pretrain/scl/model/scl_head.safetensors" in keys

    # the exported encoder is a plain transformers model, and fine-tuning picks it by default
    from transformers import AutoModel

    from tkre import layout

    local = storage.local_copy(f"{root}/pretrain/scl/model")
    assert AutoModel.from_pretrained(local).config.hidden_size == 32
    assert layout.finetune_start(root, "auto") == f"{root}/pretrain/scl/model"

    # a finished stage is skipped on a re-run
    again = run_pretrain(cfg)
    assert again["mslm"]["wall_s"] == results["mslm"]["wall_s"]


def test_injected_failure_resumes_from_checkpoint_zero3(ray_cluster, tmp_path: Path,
                                                        tiny_encoder):
    """ZeRO-3 on 2 workers: parameters are partitioned, so resuming restores each rank's shard
    and the export gathers the full weights."""
    root = prepared_root(str(tmp_path / "run"))
    cfg = small(root, tiny_encoder, stage="mslm", strategy="deepspeed", zero_stage=3,
                max_steps=5, checkpoint_every=2, fail_at_step=3,
                train=TrainConfig(num_workers=2, max_failures=1))
    result = run_pretrain(cfg)["mslm"]
    assert (tmp_path / "run/pretrain/mslm/injected_failure.json").exists()
    # resumed at the step-2 checkpoint, not from zero, and ended at exactly 5 steps
    assert result["final"]["resumed_at"] == [2]
    assert result["steps"] == 5
    assert [row[0] for row in result["final"]["history"]] == [1, 2, 3, 4, 5]
    # the gathered export has every weight at full size, and they moved from the start
    from transformers import AutoModelForMaskedLM

    start = AutoModelForMaskedLM.from_pretrained(tiny_encoder).state_dict()
    trained = AutoModelForMaskedLM.from_pretrained(tmp_path / "run/pretrain/mslm/model")
    for name, tensor in trained.state_dict().items():
        assert tensor.shape == start[name].shape, name
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert not trained.state_dict()[embeddings].equal(start[embeddings])


def test_two_workers_follow_one_worker_loss(ray_cluster, tmp_path: Path, tiny_encoder):
    histories = {}
    for workers in (1, 2):
        root = prepared_root(str(tmp_path / f"w{workers}"))
        cfg = small(root, tiny_encoder, stage="mslm", strategy="ddp", max_steps=6,
                    checkpoint_every=6, lr=1e-3, train=TrainConfig(num_workers=workers))
        histories[workers] = run_pretrain(cfg)["mslm"]["final"]["history"]
    one, two = ([row[1] for row in histories[w]] for w in (1, 2))
    assert len(one) == len(two) == 6
    assert one[-1] < one[0]  # it learns
    for a, b in zip(one, two, strict=True):
        assert b == pytest.approx(a, rel=0.02)
