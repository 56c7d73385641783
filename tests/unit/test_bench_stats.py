"""Paired statistics of the quality comparisons (tkre.bench.stats)."""

from __future__ import annotations

import random

import pytest

from tkre.bench.stats import paired_bootstrap, paired_gain, t_interval, verdict
from tkre.finetune.metrics import micro_prf


def test_paired_gain_reproduces_the_issue_table():
    """SemEval K=8, three seeds (issue 13): -0.34 points, 95 % t-interval -2.9 to +2.2."""
    finetune_only = {"42": 0.4926, "13": 0.4909, "21": 0.4805}
    tkre = {"42": 0.4990, "13": 0.4883, "21": 0.4665}
    gain = paired_gain(tkre, finetune_only)
    assert gain["draws"] == 3
    assert gain["mean"] == pytest.approx(-0.34, abs=0.01)
    low, high = gain["ci95"]
    assert low == pytest.approx(-2.9, abs=0.05) and high == pytest.approx(2.2, abs=0.05)
    assert gain["per_draw"]["42"] == pytest.approx(0.64, abs=1e-9)


def test_paired_gain_uses_only_the_draws_both_ran():
    gain = paired_gain({"1": 0.5, "2": 0.6, "3": 0.7}, {"2": 0.5, "3": 0.6})
    assert gain["draws"] == 2 and set(gain["per_draw"]) == {"2", "3"}
    assert gain["mean"] == pytest.approx(10.0) and gain["ci95"] == pytest.approx([10.0, 10.0])
    assert paired_gain({"1": 0.5}, {"2": 0.5}) is None
    assert paired_gain({"1": 0.5}, {"1": 0.4})["ci95"] is None  # one draw: no interval


def test_t_interval_is_the_students_t_half_width():
    mean, low, high = t_interval([1.0, 2.0, 3.0, 4.0])
    # sd 1.2910, se 0.6455, t(0.975, 3) = 3.1824
    assert mean == 2.5 and high - mean == pytest.approx(3.1824 * 0.6455, rel=1e-3)
    assert low == pytest.approx(2 * mean - high)


def test_paired_bootstrap_agrees_with_the_metric_and_resamples_pairs():
    rng = random.Random(0)
    labels = ["Other", "A", "B"]
    gold = [rng.choice(labels) for _ in range(400)]
    baseline = [g if rng.random() < 0.5 else rng.choice(labels) for g in gold]
    better = [g if rng.random() < 0.8 else p for g, p in zip(gold, baseline, strict=True)]
    result = paired_bootstrap(gold, better, baseline, "Other", resamples=500)
    expected = 100 * (micro_prf(gold, better, "Other")["f1"]
                      - micro_prf(gold, baseline, "Other")["f1"])
    assert result["mean"] == pytest.approx(expected)
    assert 0 < result["ci95"][0] < result["mean"] < result["ci95"][1]
    same = paired_bootstrap(gold, baseline, baseline, "Other", resamples=200)
    assert same["mean"] == 0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="one prediction per test sentence"):
        paired_bootstrap(gold, better[:-1], baseline, "Other")


def test_verdicts():
    above = {"ci95": [0.5, 3.0]}
    assert verdict(above, 0.48, 0.45, verdicts=True) == "holds"
    assert verdict({"ci95": [-3.0, -0.5]}, 0.48, 0.45, True) == "contradicted"
    assert verdict({"ci95": [-1.0, 2.0]}, 0.48, 0.45, True).startswith("not shown")
    assert verdict(above, 0.10, 0.45, True).startswith("under-trained, no verdict")
    assert verdict(above, 0.48, 0.45, verdicts=False).startswith("no verdict (machinery")
    assert verdict({"ci95": None}, 0.48, None, True).startswith("no verdict (fewer than 2")
