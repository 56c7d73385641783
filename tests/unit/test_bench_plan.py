"""Which encoder each quality variant fine-tunes, and where each draw's artifacts live."""

from __future__ import annotations

import pytest

from tkre.bench.quality import (
    PRETRAINING,
    WITHOUT_SYNTHETIC,
    draw_root,
    finetune_encoder,
    knowledge_root,
)
from tkre.config import VARIANTS, BenchConfig


def fake_model(cfg: BenchConfig, draw: tuple[int, int], owner: str, stage: str) -> str:
    """A complete pre-training stage (export + metrics) in a variant's run root."""
    from tkre import layout, storage

    run_root = f"{draw_root(cfg, *draw)}/{owner}"
    folder = layout.pretrain_model(run_root, stage)
    storage.write_json(f"{folder}/config.json", {})
    storage.write_json(layout.pretrain_metrics(run_root, stage), {})
    return folder


def test_every_variant_has_a_plan():
    assert set(PRETRAINING) == set(VARIANTS)
    # each ablation removes exactly one thing: SCL's weight (its MSLM pass kept), or MSLM
    # everywhere (no stage 1, stage 2 without its MSLM term and on unmasked input)
    assert PRETRAINING["no_scl"] == ("no_scl", ("mslm", "scl"), {"lambda_scl": 0.0})
    assert PRETRAINING["no_mslm"] == ("no_mslm", ("scl",), {
        "scl_init": "encoder", "lambda_mslm": 0.0, "mask_relation": 0.0, "mask_entity": 0.0,
        "mask_other": 0.0})
    assert set(WITHOUT_SYNTHETIC) == {"finetune_only", "no_scdg"}


def test_finetune_encoders_follow_the_ablation(tmp_path):
    cfg = BenchConfig(root=str(tmp_path), quick=True, data="demo", ks="8", seeds="1",
                      extra_points="16:1", encoder="base-encoder")
    tkre_scl = fake_model(cfg, (8, 1), "tkre", "scl")
    no_scl = fake_model(cfg, (8, 1), "no_scl", "scl")
    no_mslm = fake_model(cfg, (8, 1), "no_mslm", "scl")
    assert finetune_encoder(cfg, "finetune_only", 8, 1) == "base-encoder"
    assert finetune_encoder(cfg, "tkre", 8, 1) == tkre_scl
    assert finetune_encoder(cfg, "no_scl", 8, 1) == no_scl
    assert finetune_encoder(cfg, "no_mslm", 8, 1) == no_mslm
    with pytest.raises(FileNotFoundError, match="no_edkg"):
        finetune_encoder(cfg, "no_edkg", 8, 1)
    # per draw by default: the second draw never fine-tunes from the first draw's encoders
    with pytest.raises(FileNotFoundError, match="tkre"):
        finetune_encoder(cfg, "tkre", 16, 1)
    # shared pre-training (an explicit choice, no preset makes it) does
    shared = BenchConfig(root=str(tmp_path), quick=True, data="demo", ks="8", seeds="1",
                         extra_points="16:1", encoder="base-encoder", share_pretraining=True)
    first_draw = fake_model(shared, (8, 1), "tkre", "scl")
    assert finetune_encoder(shared, "tkre", 16, 1) == first_draw


def test_knowledge_is_shared_or_per_draw(tmp_path):
    shared = BenchConfig(root=str(tmp_path), quick=True, data="demo", ks="8,16", seeds="1",
                         share_knowledge=True)
    per_draw = BenchConfig(root=str(tmp_path), quick=True, data="demo", ks="8,16", seeds="1",
                           share_knowledge=False)
    root, data = knowledge_root(shared, 16, 1)
    assert "knowledge-shared" in root and (data.k, data.seed) == (8, 1)
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


def test_an_ablation_of_knowledge_the_generator_never_gave_reuses_tkre(tmp_path, monkeypatch):
    """0 accepted synthetic sentences: no_scdg is tkre's run (no second pre-training or
    fine-tuning, a note says why); explanations were accepted, so no_edkg runs for real."""
    from tkre import storage
    from tkre.bench import quality
    from tkre.bench.run import _guard

    cfg = BenchConfig(root=str(tmp_path), quick=True, data="demo", ks="8", seeds="1",
                      extra_points="")
    knowledge, _ = knowledge_root(cfg, 8, 1)
    storage.write_json(storage.join(knowledge, "knowledge", "stats.json"), {
        "explanations": {"accepted": 3, "requested": 4}, "totals": {"accepted": 0,
                                                                   "requested": 5}})
    pretrained, fine_tuned = [], []
    monkeypatch.setattr(quality, "run_pretraining",
                        lambda cfg, owner, k, seed, knowledge: pretrained.append(owner) or {})
    monkeypatch.setattr(quality, "run_variant", lambda cfg, variant, k, seed, knowledge:
                        fine_tuned.append(variant) or {"variant": variant, "k": k, "seed": seed,
                                                       "micro_f1": 0.1 * len(fine_tuned)})
    errors: dict = {}
    units = quality.run_draw(cfg, 8, 1, lambda name, fn: _guard(errors, name, fn))

    assert errors == {}
    assert "no_scdg" not in pretrained and {"tkre", "no_edkg", "no_mslm"} <= set(pretrained)
    assert "no_scdg" not in fine_tuned and "no_edkg" in fine_tuned
    by_variant = {u["variant"]: u for u in units}
    assert set(by_variant) == set(VARIANTS)
    assert by_variant["no_scdg"]["micro_f1"] == by_variant["tkre"]["micro_f1"]
    assert by_variant["no_scdg"]["same_as"] == "tkre"
    assert "no accepted synthetic sentence" in by_variant["no_scdg"]["notes"][0]
    assert "same_as" not in by_variant["no_edkg"]


def test_no_scl_reuses_tkres_stage_1(tmp_path):
    from tkre import layout
    from tkre.bench.quality import copy_stage

    cfg = BenchConfig(root=str(tmp_path), quick=True, data="demo", ks="8", seeds="1")
    fake_model(cfg, (8, 1), "tkre", "mslm")
    target = f"{draw_root(cfg, 8, 1)}/no_scl"
    copy_stage(f"{draw_root(cfg, 8, 1)}/tkre", target, "mslm")
    assert layout.pretrain_done(target, "mslm") and not layout.pretrain_done(target, "scl")
    with pytest.raises(FileNotFoundError, match="not finished"):
        copy_stage(f"{draw_root(cfg, 8, 1)}/tkre", target, "scl")


def test_generation_speed_requests_share_a_prompt_per_relation(tmp_path):
    from tkre.bench.speed import speed_prompts

    cfg = BenchConfig(root=str(tmp_path), quick=True, data="demo", ks="8", seeds="42",
                      gen_speed_prompts=7, gen_speed_per_relation=3)
    prompts = [str(p) for p in speed_prompts(cfg)]
    # three requests per relation, as an SCDG round sends them, then the next relation
    assert len(prompts) == 7 and prompts[0] == prompts[1] == prompts[2] != prompts[3]
    assert prompts[3] == prompts[5] != prompts[6] and len(set(prompts)) == 3
