"""Paired statistics for the quality comparisons: is a variant better than another, and by how
much, with an interval.

Two variants of one K-shot draw share the draw (train/dev sentences, test set, seeds), so each
comparison is paired: per draw the difference of micro-F1, over draws the mean difference with
a 95 % Student-t interval (n - 1 degrees of freedom, standard error = sd / sqrt(n)); within a
draw, a paired bootstrap over the test sentences (both variants' predictions resampled with the
same indices) says how much of a difference one test set can resolve. Differences are in
micro-F1 points (x 100).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

POINTS = 100.0


def t_interval(differences: Sequence[float], level: float = 0.95
               ) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the mean difference; no interval from fewer than 2 draws."""
    values = np.asarray(differences, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)
                 * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def paired_gain(variant: Mapping[str, float], baseline: Mapping[str, float]) -> dict | None:
    """variant - baseline micro-F1 in points over the draws (seeds) both ran; None if none."""
    draws = sorted(set(variant) & set(baseline), key=str)
    if not draws:
        return None
    differences = [POINTS * (variant[d] - baseline[d]) for d in draws]
    mean, low, high = t_interval(differences)
    return {"mean": mean, "ci95": [low, high] if low is not None else None,
            "draws": len(draws), "per_draw": dict(zip(map(str, draws), differences,
                                                       strict=True))}


def _counts(gold: Sequence[str], pred: Sequence[str], no_relation: str) -> np.ndarray:
    """[N, 3] per sentence: (correct positive guess, positive guess, positive gold)."""
    gold_arr, pred_arr = np.asarray(gold), np.asarray(pred)
    guessed, relation = pred_arr != no_relation, gold_arr != no_relation
    correct = guessed & relation & (gold_arr == pred_arr)
    return np.stack([correct, guessed, relation], axis=1).astype(np.int64)


def _micro_f1(sums: np.ndarray) -> np.ndarray:
    """Micro-F1 from summed counts [..., 3]: 2 tp / (guessed + gold), 0 when both are 0."""
    denominator = sums[..., 1] + sums[..., 2]
    return np.where(denominator > 0, 2 * sums[..., 0] / np.maximum(denominator, 1), 0.0)


def paired_bootstrap(gold: Sequence[str], pred_variant: Sequence[str],
                     pred_baseline: Sequence[str], no_relation: str, resamples: int = 2000,
                     seed: int = 0) -> dict:
    """The micro-F1 difference (points) on this test set and its 95 % percentile interval
    over test sets resampled with replacement, the same sentences for both variants."""
    if not len(gold) == len(pred_variant) == len(pred_baseline) or not gold:
        raise ValueError("paired bootstrap needs one prediction per test sentence from each "
                         "variant")
    ours, theirs = _counts(gold, pred_variant, no_relation), _counts(gold, pred_baseline,
                                                                      no_relation)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(gold), size=(resamples, len(gold)))
    differences = POINTS * (_micro_f1(ours[indices].sum(1)) - _micro_f1(theirs[indices].sum(1)))
    observed = POINTS * float(_micro_f1(ours.sum(0)) - _micro_f1(theirs.sum(0)))
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"mean": observed, "ci95": [float(low), float(high)], "resamples": resamples,
            "sentences": len(gold)}


def verdict(gain: dict | None, baseline_mean: float | None, floor: float | None,
            verdicts: bool) -> str:
    """'holds' only where the whole interval is above zero; no verdict from a smoke run or
    an under-trained baseline."""
    if not verdicts:
        return "no verdict (machinery check: the preset under-trains on purpose)"
    if floor is not None and baseline_mean is not None and baseline_mean < floor:
        return (f"under-trained, no verdict (the baseline's micro-F1 {baseline_mean:.4f} is "
                f"below its floor {floor})")
    if gain is None or gain["ci95"] is None:
        return "no verdict (fewer than 2 paired draws)"
    low, high = gain["ci95"]
    if low > 0:
        return "holds"
    if high < 0:
        return "contradicted"
    return "not shown (the interval includes 0)"
