"""The masked-LM head an encoder did not ship: its own learning rate, and the held-out loss
that shows what stage 1 did to the encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny import make_tiny_encoder
from tkre.config import PretrainConfig
from tkre.pretrain.data import split_heldout
from tkre.pretrain.loop import build_model, load_mlm, mslm_loss
from tkre.pretrain.masking import TextExample
from tkre.train.strategy import parameters


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    return str(make_tiny_encoder(tmp_path_factory.mktemp("enc"), dropout=0.0))


def test_a_fresh_head_gets_its_own_rate_and_a_shipped_one_does_not(encoder, tmp_path: Path):
    mlm, fresh = load_mlm(encoder)
    assert fresh  # a BertModel folder: no cls.predictions weights
    cfg = PretrainConfig(lr=1e-4, head_lr_scale=10.0)
    model = build_model(cfg, encoder, 0)
    rest, head = parameters(model, cfg.lr)
    assert head["lr"] == pytest.approx(1e-3) and rest["lr"] == pytest.approx(1e-4)
    head_ids = {id(p) for p in head["params"]}
    # the decoder weight tied to the input embeddings stays with the encoder's group
    assert id(model.mlm.get_input_embeddings().weight) not in head_ids
    assert len(head_ids) + len(rest["params"]) == len(list(model.parameters()))
    # once exported with its head, stage 2 loads it as shipped: one rate
    model.mlm.save_pretrained(tmp_path / "export")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(encoder).save_pretrained(tmp_path / "export")
    assert not load_mlm(str(tmp_path / "export"))[1]
    again = build_model(cfg, str(tmp_path / "export"), 0)
    assert {g["lr"] for g in parameters(again, cfg.lr)} == {1e-4}


def test_heldout_loss_is_repeatable_and_reflects_the_head(encoder, tmp_path: Path):
    texts = [TextExample("Ann Lee works for Orbix in Paris .", (0, 7), (18, 23), "r")] * 3
    cfg = PretrainConfig(batch_size=2, max_length=32)
    first, second = mslm_loss(cfg, encoder, texts), mslm_loss(cfg, encoder, texts)
    assert first == second and first > 0
    # a random head over the tiny vocabulary: about ln |V| nats
    vocab = build_model(cfg, encoder, 0).mlm.config.vocab_size
    assert abs(first - torch.log(torch.tensor(float(vocab)))) < 2.0


def test_every_tenth_explanation_is_held_out():
    explanations = [TextExample(f"text {i} a b", (0, 4), (7, 8)) for i in range(25)]
    synthetic = [TextExample("other a b", (0, 5), (6, 7))]
    train, held = split_heldout(explanations + synthetic, explanations, every=10)
    assert held == [explanations[9], explanations[19]]
    assert len(train) == 24 and synthetic[0] in train and explanations[9] not in train
    assert split_heldout(explanations[:5], explanations[:5], every=10) == (explanations[:5], [])
