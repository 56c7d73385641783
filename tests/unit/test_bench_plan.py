"""Which encoder each quality variant fine-tunes, and where each draw's artifacts live."""

from __future__ import annotations

import pytest

from tkre.bench.config import VARIANTS, BenchConfig
from tkre.bench.quality import (
    PRETRAINING,
    WITHOUT_SYNTHETIC,
    draw_root,
    finetune_encoder,
    knowledge_root,
)


def fake_model(root, owner: str, stage: str) -> str:
    folder = root / "bench" / "demo" / owner / "pretrain" / stage / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return str(folder)


def test_every_variant_has_a_plan():
    assert set(PRETRAINING) == set(VARIANTS)
    assert PRETRAINING["no_scl"] == ("tkre", ("mslm",), {})  # tkre's own stage 1
    assert PRETRAINING["no_mslm"][2] == {"scl_init": "encoder", "lambda_mslm": 0.0}
    assert set(WITHOUT_SYNTHETIC) == {"finetune_only", "no_scdg"}


def test_finetune_encoders_follow_the_ablation(tmp_path):
    cfg = BenchConfig(root=str(tmp_path), quick=True, data="demo", ks="8", seeds="1",
                      extra_points="16:1", encoder="base-encoder")
    tkre_scl = fake_model(tmp_path, "k8-s1/tkre", "scl")
    tkre_mslm = fake_model(tmp_path, "k8-s1/tkre", "mslm")
    no_mslm = fake_model(tmp_path, "k8-s1/no_mslm", "scl")
    assert finetune_encoder(cfg, "finetune_only", 8, 1) == "base-encoder"
    assert finetune_encoder(cfg, "tkre", 8, 1) == tkre_scl
    assert finetune_encoder(cfg, "no_scl", 8, 1) == tkre_mslm
    assert finetune_encoder(cfg, "no_mslm", 8, 1) == no_mslm
    # shared pre-training: the second draw fine-tunes from the first draw's encoders
    assert finetune_encoder(cfg, "tkre", 16, 1) == tkre_scl
    with pytest.raises(FileNotFoundError, match="no_edkg"):
        finetune_encoder(cfg, "no_edkg", 8, 1)


def test_knowledge_is_shared_or_per_draw(tmp_path):
    shared = BenchConfig(root=str(tmp_path), quick=True, data="demo", ks="8,16", seeds="1")
    per_draw = BenchConfig(root=str(tmp_path), quick=True, data="demo", ks="8,16", seeds="1",
                           share_knowledge=False)
    root, data = knowledge_root(shared, 16, 1)
    assert root.endswith("knowledge-shared") and (data.k, data.seed) == (8, 1)
    root, data = knowledge_root(per_draw, 16, 1)
    assert root.startswith(draw_root(per_draw, 16, 1)) and data.k == 16


def test_accuracy_only_scores_the_same_episodes_without_calibration():
    import torch
    import torch.nn.functional as F

    from tkre.bench.quality import accuracy_only

    class Item:
        def __init__(self, relation: str):
            self.relation = relation

    class OneHot:  # a perfect encoder: one direction per relation
        def embed(self, items):
            return F.normalize(torch.stack([F.one_hot(torch.tensor(int(i.relation[1:])), 6)
                                            .float() for i in items]), dim=-1)

    items = [Item(f"r{r}") for r in range(6) for _ in range(7)]
    result = accuracy_only(OneHot(), items, [(5, 1), (5, 5)], episodes=4, seed=42)
    assert set(result["settings"]) == {"5-way-1-shot", "5-way-5-shot"}
    assert all(row["accuracy"] == 1.0 for row in result["settings"].values())
