"""jobs/bench.py's machinery end to end on the demo data with a tiny encoder and a tiny
generator: one draw, three quality variants (the other ablations are pre-training switches tested in
test_pretrain.py), FewRel-format episodes, each speed comparison, the report
and its plots; then a re-run that reuses every unit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pretrain_fixtures import write_knowledge
from tests.tiny import make_tiny_causal_lm, make_tiny_encoder
from tkre.bench.quality import knowledge_root
from tkre.bench.run import run_bench
from tkre.config import BenchConfig, DataConfig
from tkre.data import datasets

pytestmark = pytest.mark.integration


def write_fewrel(path: Path) -> Path:
    """The demo sentences in FewRel's JSON format ({relation: [{tokens, h, t}]})."""
    splits = datasets.load_splits(DataConfig(k=4))
    data: dict[str, list] = {}
    for inst in splits.train + splits.dev + splits.test:
        data.setdefault(inst.relation, []).append({
            "tokens": list(inst.tokens),
            "h": [inst.head.text, "Q1", [list(range(inst.head.start, inst.head.end))]],
            "t": [inst.tail.text, "Q2", [list(range(inst.tail.start, inst.tail.end))]]})
    path.write_text(json.dumps(data))
    return path


def test_bench_end_to_end_on_demo(ray_cluster, tmp_path: Path):
    encoder = str(make_tiny_encoder(tmp_path / "encoder"))
    generator = str(make_tiny_causal_lm(tmp_path / "generator"))
    cfg = BenchConfig(
        root=str(tmp_path / "bench"), quick=True, data="demo", ks="4", seeds="1",
        extra_points="", variants="finetune_only,tkre,no_scl", max_test=40,
        encoder=encoder, generator=generator,
        fewrel_file=str(write_fewrel(tmp_path / "fewrel.json")), fewrel_settings="5x1,5x5",
        fewrel_episodes=10, pretrain_steps=2, finetune_epochs=1, finetune_max_length=64,
        gen_speed_prompts=2, gen_speed_max_tokens=4, gen_speed_backends="hf",
        pretrain_speed_steps=2, finetune_speed_epochs=1, scaling_workers="1",
        serve_requests=6, serve_concurrency="1,4",
        flops_batch_size=2, flops_seq_len=16)
    # knowledge written directly: the LLM is not the point here (a random one accepts nothing)
    root, data = knowledge_root(cfg, 4, 1)
    write_knowledge(root, datasets.prepare(data, root).train)

    report = run_bench(cfg)

    assert report["errors"] == {}
    saved = json.loads((tmp_path / "bench" / "bench" / "report.json").read_text())
    # one draw (which draws run which variants: tests/unit/test_bench_plan.py)
    assert set(saved["quality"]["demo"]["4"]) == {"finetune_only", "tkre", "no_scl"}
    for row in saved["quality"]["demo"]["4"].values():
        assert 0 <= row["micro_f1_mean"] <= 1 and row["micro_f1_std"] == 0.0
    for setting in ("5way1shot", "5way5shot"):
        assert set(saved["quality"]["fewrel"][setting]) == {"plain", "pretrained"}
    assert set(saved["speed"]) == {"generation_hf", "generation_hf_vs_batch1",
                                   "generation_hf_flop_limit", "pretraining",
                                   "pretraining_mslm_vs_plain", "pretraining_scl_vs_plain",
                                   "pretraining_step", "finetuning", "serving_c1",
                                   "serving_c4", "flops", "extract"}
    for row in saved["speed"].values():
        assert row["ratio"] > 0
    # raw text: the demo test set without markers; FewRel-format sentences end to end, their
    # relations registered at run time where the model lacks them (here it has every one: the
    # demo's relations, so nothing is registered and the trained labels answer)
    text = saved["quality"]["text"]
    assert text["test"]["sentences"] == 40 and 0 <= text["test"]["pair_recall"] <= 1
    fewrel = text["fewrel"]
    assert fewrel["sentences"] > 0 and 0 <= fewrel["end_to_end_recall"] <= 1
    assert fewrel["registered"] == {} and fewrel["shots"] == 5
    for name in ("f1_vs_k.png", "speed_ratios.png", "report.md"):
        assert (tmp_path / "bench" / "bench" / name).stat().st_size > 0
    units = sorted(p.name for p in (tmp_path / "bench" / "bench" / "units").iterdir())
    # one file per unit, named by the unit and a hash of the settings it was measured with
    assert any(u.startswith("demo-k4-s1-no_scl-") for u in units)
    assert any(u.startswith("speed-serving-") for u in units)
    # each variant's unit keeps its per-sentence predictions; the report has the paired gains
    assert set(saved["quality"]["paired_gain"]["4"]) == {"tkre", "no_scl"}

    again = run_bench(cfg)  # every unit is reused: same figures, nothing re-measured
    assert again["quality"]["demo"] == report["quality"]["demo"]
    assert again["speed"]["pretraining"]["ratio"] == report["speed"]["pretraining"]["ratio"]
