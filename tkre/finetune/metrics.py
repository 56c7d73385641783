"""Relation-extraction metrics.

micro-F1 follows the TACRED scorer: the no-relation label counts neither as a guess nor as gold.
The SemEval-2010 Task 8 official score is the (9+1)-way macro-F1 with direction taken into
account: per relation type (both directions together) a prediction is correct only when type and
direction match; precision divides by every prediction of that type, recall by every gold
example of it; the score is the mean of the nine per-type F1 values (Other excluded).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tkre.schema import label_direction


def _prf(correct: int, guessed: int, gold: int) -> dict[str, float]:
    precision = correct / guessed if guessed else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def micro_prf(gold: Sequence[str], pred: Sequence[str], no_relation: str) -> dict[str, float]:
    """Micro precision/recall/F1 over every label except `no_relation`."""
    _same_length(gold, pred)
    guessed = sum(p != no_relation for p in pred)
    gold_count = sum(g != no_relation for g in gold)
    correct = sum(g == p != no_relation for g, p in zip(gold, pred, strict=True))
    return _prf(correct, guessed, gold_count)


def per_relation(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]
                 ) -> dict[str, dict[str, float]]:
    """Precision/recall/F1 and support for each label."""
    _same_length(gold, pred)
    guessed, gold_count = Counter(pred), Counter(gold)
    correct = Counter(g for g, p in zip(gold, pred, strict=True) if g == p)
    out = {}
    for label in labels:
        scores = _prf(correct[label], guessed[label], gold_count[label])
        scores["support"] = gold_count[label]
        out[label] = scores
    return out


def semeval_type(label: str) -> str:
    """'Cause-Effect(e2,e1)' -> 'Cause-Effect'; 'Other' stays 'Other'."""
    return label_direction(label)[0]


def semeval_macro_f1(gold: Sequence[str], pred: Sequence[str], other: str = "Other") -> float:
    """The official SemEval-2010 Task 8 score (as a fraction, not a percentage)."""
    _same_length(gold, pred)
    types = sorted({semeval_type(g) for g in gold} - {other})
    f1s = []
    for rel_type in types:
        correct = sum(g == p and semeval_type(g) == rel_type
                      for g, p in zip(gold, pred, strict=True))
        guessed = sum(semeval_type(p) == rel_type for p in pred)
        gold_count = sum(semeval_type(g) == rel_type for g in gold)
        f1s.append(_prf(correct, guessed, gold_count)["f1"])
    return sum(f1s) / len(f1s) if f1s else 0.0


def confusion_matrix(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]
                     ) -> list[list[int]]:
    """counts[i][j]: gold labels[i] predicted as labels[j]."""
    index = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred, strict=True):
        counts[index[g]][index[p]] += 1
    return counts


def _same_length(gold: Sequence[str], pred: Sequence[str]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
