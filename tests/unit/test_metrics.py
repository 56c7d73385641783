"""Metrics against hand-computed values."""

import pytest

from tkre.finetune.metrics import (
    confusion_matrix,
    micro_prf,
    per_relation,
    semeval_macro_f1,
    semeval_type,
)


def test_micro_excludes_no_relation_from_guesses_and_gold():
    gold = ["a", "a", "b", "NA", "NA", "b"]
    pred = ["a", "b", "b", "a", "NA", "NA"]
    # guessed (pred != NA): a, b, b, a = 4; gold (!= NA): a, a, b, b = 4; correct: pos 0 and 2
    scores = micro_prf(gold, pred, "NA")
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(0.5)


def test_micro_all_no_relation_predictions_score_zero_not_nan():
    assert micro_prf(["a", "NA"], ["NA", "NA"], "NA") == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_micro_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        micro_prf(["a", "b"], ["a"], "NA")


def test_per_relation_counts():
    gold = ["a", "a", "b", "NA"]
    pred = ["a", "b", "b", "b"]
    out = per_relation(gold, pred, ["NA", "a", "b"])
    assert out["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    # b: guessed 3, correct 1, gold 1
    assert out["b"]["precision"] == pytest.approx(1 / 3)
    assert out["b"]["recall"] == 1.0
    assert out["NA"]["support"] == 1 and out["NA"]["f1"] == 0.0


def test_semeval_type_strips_direction():
    assert semeval_type("Cause-Effect(e2,e1)") == "Cause-Effect"
    assert semeval_type("Other") == "Other"


def test_semeval_official_macro_f1_direction_aware():
    ce12, ce21, cw12 = "Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Component-Whole(e1,e2)"
    gold = [ce12, ce12, ce21, cw12, cw12, "Other"]
    pred = [ce12, ce21, ce21, cw12, "Other", cw12]
    # Cause-Effect: correct 2 (pos 0, 2; pos 1 has the wrong direction); guessed 3; gold 3
    ce_f1 = 2 / 3
    # Component-Whole: correct 1; guessed 2 (pos 3, 5); gold 2 -> P = R = 1/2
    cw_f1 = 0.5
    assert semeval_macro_f1(gold, pred) == pytest.approx((ce_f1 + cw_f1) / 2)


def test_semeval_official_matches_scorer_example_shape():
    # perfect predictions score 1.0; Other is excluded from the average
    gold = ["Other", "Message-Topic(e1,e2)", "Message-Topic(e2,e1)"]
    assert semeval_macro_f1(gold, list(gold)) == 1.0


def test_confusion_matrix_rows_gold_columns_pred():
    counts = confusion_matrix(["a", "a", "b"], ["a", "b", "b"], ["a", "b"])
    assert counts == [[1, 1], [0, 1]]
