"""MSLM masking, negative spans, span pooling, the contrastive loss, anchors, stage data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tkre.config import ConfigError, DataConfig, PretrainConfig
from tkre.pretrain import data
from tkre.pretrain.masking import (
    ENTITY,
    IGNORE,
    OTHER,
    RELATION,
    SPECIAL,
    EncodedText,
    MaskProbs,
    TextExample,
    collate,
    encode_texts,
    mask_tokens,
    negative_spans,
    token_classes,
)
from tkre.pretrain.model import PretrainModel, SCLSettings, info_nce, mean_pool
from tkre.schema import Instance, Span


def dense_labels(shape, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The (B, W) label grid of the masked positions, IGNORE elsewhere."""
    labels = torch.full(shape, IGNORE).flatten()
    labels[positions] = targets
    return labels.reshape(shape)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tkre.resources import BUNDLED_ENCODER, resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(BUNDLED_ENCODER))


def test_token_classes_from_character_offsets(tokenizer):
    text = "Ann works for the Acmeco Corp in Paris."
    head, tail = (0, 3), (18, 29)  # "Ann", "Acmeco Corp" (several word pieces)
    [encoded] = encode_texts(tokenizer, [TextExample(text, head, tail)], 64)
    pieces = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    by_text = [(text[a:b], cls) for (a, b), cls in zip(pieces, encoded.classes, strict=True)]
    assert by_text[0] == ("", SPECIAL) and by_text[-1] == ("", SPECIAL)
    entity = "".join(t for t, cls in by_text if cls == ENTITY)
    relation = " ".join(t for t, cls in by_text if cls == RELATION)
    other = " ".join(t for t, cls in by_text if cls == OTHER)
    assert entity == "AnnAcmecoCorp" and relation == "works for the" and other == "in Paris ."


def test_token_classes_tail_first_and_partial_overlap():
    # the head (chars 9..12) comes after the tail (chars 3..4), which covers part of (2,4)
    offsets = [(0, 0), (0, 2), (2, 4), (5, 8), (9, 12), (0, 0)]
    classes = token_classes(offsets, [1, 0, 0, 0, 0, 1], head=(9, 12), tail=(3, 4))
    # the tail overlaps sub-token (2,4): entity; (0,2) lies before both mentions: other
    assert classes == [SPECIAL, OTHER, ENTITY, RELATION, ENTITY, SPECIAL]


def test_masking_probabilities_statistically():
    torch.manual_seed(0)
    rows, width = 400, 200
    classes = torch.randint(0, 4, (rows, width))
    input_ids = torch.randint(5, 100, (rows, width))
    probs = MaskProbs(relation=0.8, entity=0.5, other=0.2)
    masked, positions, targets = mask_tokens(input_ids, classes, mask_id=4, probs=probs,
                                             uniform=torch.rand(rows, width))
    labels = dense_labels(input_ids.shape, positions, targets)
    selected = labels != IGNORE
    for cls, expected in ((RELATION, 0.8), (ENTITY, 0.5), (OTHER, 0.2)):
        rate = selected[classes == cls].float().mean().item()
        n = int((classes == cls).sum())
        assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / n), (cls, rate)
    # exactly: special/padding never masked, masked tokens become the mask id, labels keep ids
    assert not selected[classes == SPECIAL].any()
    assert (masked[selected] == 4).all() and (masked[~selected] == input_ids[~selected]).all()
    assert (labels[selected] == input_ids[selected]).all()


def test_masking_probabilities_are_configurable():
    classes = torch.tensor([[SPECIAL, OTHER, ENTITY, RELATION]]).repeat(50, 1)
    ids = torch.full_like(classes, 9)
    _, positions, targets = mask_tokens(ids, classes, 4,
                                        MaskProbs(relation=1.0, entity=0.0, other=1.0),
                                        torch.rand(50, 4))
    labels = dense_labels(ids.shape, positions, targets)
    assert (labels[:, 1] == 9).all() and (labels[:, 3] == 9).all()
    assert (labels[:, 0] == IGNORE).all() and (labels[:, 2] == IGNORE).all()


def test_negative_spans_are_contiguous_runs_of_other_tokens():
    classes = torch.tensor([[SPECIAL, OTHER, OTHER, ENTITY, RELATION, OTHER, OTHER, OTHER,
                             SPECIAL],
                            [SPECIAL, ENTITY, RELATION, ENTITY, SPECIAL, SPECIAL, SPECIAL,
                             SPECIAL, SPECIAL]])
    masks = negative_spans(classes, count=50, max_len=3, uniform=torch.rand(2, 50, 2))
    assert masks.shape == (2, 50, 9)
    assert not masks[1].any()  # no OTHER tokens: every negative is empty
    for span in masks[0]:
        positions = span.nonzero().flatten().tolist()
        assert 1 <= len(positions) <= 3
        assert all(classes[0, p] == OTHER for p in positions)
        assert positions == list(range(positions[0], positions[0] + len(positions)))
    starts = {tuple(span.nonzero().flatten().tolist())[0] for span in masks[0]}
    assert starts == {1, 2, 5, 6, 7}  # every OTHER token can start a span


def test_collate_pads_and_uses_global_draws():
    batch = [EncodedText([2, 10, 11, 12, 3], [SPECIAL, ENTITY, RELATION, ENTITY, SPECIAL], 1),
             EncodedText([2, 13, 3], [SPECIAL, OTHER, SPECIAL], -1)]
    uniform = torch.zeros(2, 16)  # everything with p > 0 is masked
    out = collate(batch, pad_id=0, mask_id=4, probs=MaskProbs(), uniform=uniform, negatives=2,
                  negative_uniform=torch.zeros(2, 2, 2))
    assert out["input_ids"].tolist() == [[2, 4, 4, 4, 3], [2, 4, 3, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert out["mlm_positions"].tolist() == [1, 2, 3, 6]  # flat over the 2 x 5 batch
    assert out["mlm_labels"].tolist() == [10, 11, 12, 13]
    assert out["relation_mask"].tolist()[0] == [False, False, True, False, False]
    assert out["relation_ids"].tolist() == [1, -1]
    assert out["negative_mask"].shape == (2, 2, 5)


def test_mean_pool_exact():
    states = torch.arange(12, dtype=torch.float).reshape(1, 4, 3)
    masks = torch.tensor([[[True, False, True, False], [False, False, False, False]]])
    pooled, valid = mean_pool(states, masks)
    assert torch.equal(pooled[0, 0], torch.tensor([3.0, 4.0, 5.0]))
    assert torch.equal(pooled[0, 1], torch.zeros(3)) and valid.tolist() == [[True, False]]


def test_info_nce_against_hand_computed_value():
    # one example, positives with similarity 0.9 and 0.5, negatives 0.2 and -0.4, tau 0.1
    tau = 0.1
    positive = torch.tensor([[0.9, 0.5]]) / tau
    negative = torch.tensor([[0.2, -0.4, 0.7]]) / tau
    negative_valid = torch.tensor([[True, True, False]])  # the third is an empty span
    loss, valid = info_nce(positive, torch.tensor([[True, True]]), negative, negative_valid)

    def term(s):
        return -math.log(math.exp(s / tau) / (math.exp(s / tau) + math.exp(2.0)
                                              + math.exp(-4.0)))

    assert valid.tolist() == [True]
    assert loss.item() == pytest.approx((term(0.9) + term(0.5)) / 2, rel=1e-5)


def test_info_nce_example_without_positive_is_invalid():
    loss, valid = info_nce(torch.zeros(2, 1), torch.tensor([[True], [False]]),
                           torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool))
    assert valid.tolist() == [True, False] and loss[1].item() == 0.0
    assert loss[0].item() == pytest.approx(math.log(2))


class _TinyMLM(torch.nn.Module):
    """Stand-in for a *ForMaskedLM: base_model gives hidden states, cls maps them to logits."""

    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.states = torch.nn.Parameter(states)
        self.config = type("C", (), {"hidden_size": states.size(-1)})()
        self.cls = torch.nn.Linear(states.size(-1), 7)

    @property
    def base_model(self):
        outer = self

        def run(input_ids, attention_mask):
            return type("O", (), {"last_hidden_state": outer.states})()
        return run


def test_scl_loss_leaves_out_examples_without_relation_span_or_relation():
    torch.manual_seed(0)
    states = torch.randn(3, 5, 8)
    model = PretrainModel(_TinyMLM(states), num_relations=3,
                          scl=SCLSettings(entity_positives=True, anchor_negatives=True))
    relation_mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]).bool()
    entity_mask = torch.tensor([[1, 0, 0, 1, 0]] * 3).bool()
    negative_mask = torch.tensor([[[0, 0, 0, 0, 1]]] * 3).bool()
    out = model(torch.zeros(3, 5, dtype=torch.long), torch.ones(3, 5), torch.tensor([1, 6, 11]),
                torch.full((3,), 3), relation_mask,
                entity_mask, negative_mask, relation_ids=torch.tensor([2, 0, -1]))
    # example 1 has no relation span, example 2 no relation: only example 0 counts
    assert out["scl_examples"].item() == 1
    assert torch.isfinite(out["scl"]) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.anchors.weight.grad is not None and model.anchors.weight.grad[2].abs().sum() > 0


def test_anchor_for_every_relation_of_the_schema(tmp_path: Path):
    from tkre.data import datasets
    from tkre.pretrain.run import scl_relations

    splits = datasets.prepare(DataConfig(), str(tmp_path))
    relations = scl_relations(splits)
    assert relations == sorted(set(splits.labels) - {splits.no_relation})
    assert len(relations) == 7
    model = PretrainModel(_TinyMLM(torch.zeros(1, 2, 4)), num_relations=len(relations))
    assert model.anchors.num_embeddings == len(relations)


def test_instances_become_texts_with_character_spans():
    inst = Instance("a", ("Ann", "works", "for", "Acme", "Corp", "."),
                    Span(0, 1, "Ann"), Span(3, 5, "Acme Corp"), "per:employee_of")
    text = data.from_instance(inst)
    assert text.text[slice(*text.head)] == "Ann" and text.text[slice(*text.tail)] == "Acme Corp"
    assert text.relation == "per:employee_of"


def test_pretrain_config_names_bad_fields():
    with pytest.raises(ConfigError, match="^zero_stage"):
        PretrainConfig(zero_stage=4)
    with pytest.raises(ConfigError, match="^mask_entity"):
        PretrainConfig(mask_entity=1.5)
    with pytest.raises(ConfigError, match="^stage"):
        PretrainConfig(stage="all")
    with pytest.raises(ConfigError, match="^precision"):
        PretrainConfig(strategy="ddp", precision="fp16")


def _reference_losses(model: PretrainModel, batch: dict) -> tuple[float, float]:
    """MSLM and SCL as written before the host-sync-free rewrite: vocabulary logits at every
    position with ignored labels, boolean selection of the usable examples."""
    import torch.nn.functional as F

    from tkre.pretrain.model import mlm_head

    states = model.mlm.base_model(input_ids=batch["input_ids"],
                                  attention_mask=batch["attention_mask"]).last_hidden_state
    labels = dense_labels(batch["input_ids"].shape, batch["mlm_positions"], batch["mlm_labels"])
    logits = mlm_head(model.mlm)(states)
    mslm = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
    tau, states = model.scl.tau, states.float()
    anchors = model.project(model.anchors.weight)
    ids = batch["relation_ids"]
    anchor = anchors[ids.clamp(min=0)]
    span, has_span = mean_pool(states, batch["relation_mask"])
    span = model.project(span)
    entity, has_entity = mean_pool(states, batch["entity_mask"])
    positive = (anchor[:, None, :] * torch.stack([span, model.project(entity)], 1)).sum(-1) / tau
    usable = (ids >= 0) & has_span
    positive_valid = torch.stack([has_span, has_entity], 1) & usable[:, None]
    negatives, negative_valid = mean_pool(states, batch["negative_mask"])
    negative = (anchor[:, None, :] * model.project(negatives)).sum(-1) / tau
    other = span @ anchors.T / tau
    other_valid = torch.ones_like(other, dtype=torch.bool)
    other_valid[torch.arange(len(ids)), ids.clamp(min=0)] = False
    per_example, valid = info_nce(positive, positive_valid, torch.cat([negative, other], 1),
                                  torch.cat([negative_valid, other_valid], 1))
    return float(mslm), float(per_example[valid].mean())


def _tiny_bert_batch(tokenizer, negatives: int = 3) -> tuple[PretrainModel, dict]:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64))
    model = PretrainModel(mlm, num_relations=3).eval()
    examples = [TextExample("The burst was caused by water pressure .", (4, 9), (30, 38), "a"),
                TextExample("Ann works for Acme .", (0, 3), (14, 18), "b"),
                TextExample("A cup .", (0, 1), (2, 5), None)]
    encoded = encode_texts(tokenizer, examples, 32, {"a": 0, "b": 1, "c": 2})
    width = max(len(e.input_ids) for e in encoded)
    batch = collate(encoded, tokenizer.pad_token_id, tokenizer.mask_token_id, MaskProbs(),
                    torch.rand(3, width), negatives, 3, torch.rand(3, negatives, 2))
    return model, batch


def test_step_losses_unchanged_by_the_sync_free_rewrite(tokenizer):
    model, batch = _tiny_bert_batch(tokenizer)
    assert batch["mlm_labels"].numel() > 0
    with torch.no_grad():
        out = model(**batch)
        mslm, scl = _reference_losses(model, batch)
    assert float(out["mslm"]) == pytest.approx(mslm, rel=1e-5)
    assert float(out["scl"]) == pytest.approx(scl, rel=1e-5)
    assert int(out["scl_examples"]) == 2  # the third example has no relation


def test_step_without_masked_tokens_or_usable_examples_is_zero_and_connected(tokenizer):
    model, batch = _tiny_bert_batch(tokenizer)
    batch["mlm_positions"] = batch["mlm_positions"][:0]
    batch["mlm_labels"] = batch["mlm_labels"][:0]
    batch["relation_ids"] = torch.full_like(batch["relation_ids"], -1)
    out = model(**batch)
    assert float(out["mslm"].detach()) == 0.0 and float(out["scl"].detach()) == 0.0
    out["loss"].backward()  # every parameter is reached: DDP's all-reduce needs no special case
    assert model.anchors.weight.grad is not None and model.projection[0].weight.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs only exist on a GPU")
def test_training_step_never_syncs_with_the_host(tokenizer):
    model, batch = _tiny_bert_batch(tokenizer)
    model = model.cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = {k: v.pin_memory().cuda(non_blocking=True) for k, v in batch.items()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            out = model(**batch)
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out["loss"]).item()
