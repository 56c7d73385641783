"""Fine-tuning's step budget: synthetic sentences change the data, not the number of updates."""

from __future__ import annotations

import pytest

from tkre.config import ConfigError, FinetuneConfig
from tkre.finetune.loop import budget


def test_gold_budget_ignores_added_sentences():
    cfg = FinetuneConfig(epochs=20, batch_size=8)
    # SemEval K=8: 145 gold sentences -> 19 steps a pass, 380 steps in all
    assert budget(cfg, train_size=145, gold_size=145) == (380, 20)
    # 60 synthetic sentences more: the same 380 updates, spread over 16 passes of 205
    assert budget(cfg, train_size=205, gold_size=145) == (380, 15)


def test_data_budget_and_max_steps():
    data = FinetuneConfig(epochs=2, batch_size=8, budget="data")
    assert budget(data, train_size=69, gold_size=64) == (18, 2)
    capped = FinetuneConfig(epochs=2, batch_size=8, max_steps=5)
    assert budget(capped, train_size=69, gold_size=64) == (5, 1)
    with pytest.raises(ConfigError, match="^budget"):
        FinetuneConfig(budget="epochs")
