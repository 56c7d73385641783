"""The pre-training model: a masked-LM encoder, plus (stage 2) relation anchors and SCL.

Span-level contrastive learning (SCL). For an example of relation r:
  anchor     h_a = g(e_r), e_r a learnable embedding per relation of the schema;
  positives  h_p = g(mean of the last hidden states over the relation span) and, when
             `entity_positives`, g(mean over the entity tokens);
  negatives  h_n = g(mean over each of several random runs of OTHER tokens) and, when
             `anchor_negatives`, the other relations' anchors compared with the relation span;
  g          Linear-ReLU-Linear, then L2 normalisation, shared by anchors and spans.
Each positive p contributes InfoNCE with temperature tau:
  -log exp(s_p) / (exp(s_p) + sum_n exp(s_n)),   s = cosine / tau,
averaged over an example's positives and then over the examples that have a relation span and a
relation; the others are left out (and counted), never pooled to a zero vector.
Loss = lambda_mslm * L_MSLM + lambda_scl * L_SCL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SCLSettings:
    tau: float = 0.1
    lambda_mslm: float = 1.0
    lambda_scl: float = 1.0
    entity_positives: bool = True
    anchor_negatives: bool = True


def mean_pool(states: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of `states` (B, W, H) over each mask (B, ..., W): (pooled (B, ..., H), non-empty)."""
    flat = masks.reshape(masks.size(0), -1, masks.size(-1)).to(states.dtype)  # (B, M, W)
    counts = flat.sum(-1)  # (B, M)
    pooled = torch.bmm(flat, states) / counts.clamp(min=1)[..., None]
    shape = masks.shape[:-1]
    return pooled.reshape(*shape, states.size(-1)), (counts > 0).reshape(shape)


def info_nce(positive: torch.Tensor, positive_valid: torch.Tensor, negative: torch.Tensor,
             negative_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example InfoNCE (B,) from similarity logits (already divided by tau).

    positive (B, P), negative (B, N). Positive p of an example costs
    logsumexp([s_p, s_n1, ..., s_nN]) - s_p; an example's loss is the mean over its valid
    positives. Examples without a valid positive get 0 and are marked invalid.
    """
    negative = negative.masked_fill(~negative_valid, float("-inf"))
    logits = torch.cat([positive[..., None],
                        negative[:, None, :].expand(-1, positive.size(1), -1)], dim=-1)
    per_positive = (torch.logsumexp(logits, dim=-1) - positive).masked_fill(~positive_valid, 0.0)
    counts = positive_valid.sum(-1)
    return per_positive.sum(-1) / counts.clamp(min=1), counts > 0


def mlm_head(mlm: nn.Module) -> nn.Module:
    """The masked-LM head of a transformers *ForMaskedLM model (BERT: `cls`, RoBERTa:
    `lm_head`); it maps hidden states of any leading shape to vocabulary logits."""
    for name in ("cls", "lm_head"):
        head = getattr(mlm, name, None)
        if isinstance(head, nn.Module):
            return head
    raise ValueError(f"{type(mlm).__name__}: no masked-LM head named cls or lm_head; "
                     "tkre pre-trains BERT- and RoBERTa-style encoders")


class PretrainModel(nn.Module):
    """MSLM (stage 1) or MSLM + SCL (stage 2, when `num_relations` > 0)."""

    def __init__(self, mlm: nn.Module, num_relations: int = 0,
                 scl: SCLSettings | None = None, head_lr_scale: float = 1.0):
        super().__init__()
        self.mlm = mlm
        self.scl = scl or SCLSettings()
        self.num_relations = num_relations
        self.head_lr_scale = head_lr_scale
        if num_relations:
            hidden = mlm.config.hidden_size
            self.anchors = nn.Embedding(num_relations, hidden)
            self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(),
                                            nn.Linear(hidden, hidden))

    def param_groups(self, lr: float) -> list[dict]:
        """The optimizer's groups: the masked-LM head's own parameters (not the decoder weight
        it ties to the input embeddings) at `head_lr_scale` x lr, everything else at lr."""
        encoder = {id(p) for p in self.mlm.base_model.parameters()}
        head = [p for p in mlm_head(self.mlm).parameters()
                if id(p) not in encoder and p.requires_grad]
        chosen = {id(p) for p in head}
        rest = [p for p in self.parameters() if id(p) not in chosen and p.requires_grad]
        return [{"params": rest, "lr": lr},
                {"params": head, "lr": lr * self.head_lr_scale}]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(x), dim=-1)

    def forward(self, input_ids, attention_mask, mlm_positions, mlm_labels, relation_mask=None,
                entity_mask=None, negative_mask=None, relation_ids=None
                ) -> dict[str, torch.Tensor]:
        """Losses of one batch. Nothing here reads a value back to the host: the masked
        positions come as an index (`mlm_positions`, flat over B * W) and every "is there
        anything to average" is arithmetic, so a GPU step never waits for the CPU."""
        states = self.mlm.base_model(input_ids=input_ids,
                                     attention_mask=attention_mask).last_hidden_state
        # vocabulary logits only where a token was masked: the original computes them for every
        # position, which for a small encoder costs as much as the encoder itself
        masked_states = states.flatten(0, 1).index_select(0, mlm_positions)
        logits = mlm_head(self.mlm)(masked_states)
        # a sum over no masked token is 0 and keeps the graph connected; the count is the
        # index's length, known on the host without a sync
        mslm = F.cross_entropy(logits.float(), mlm_labels, reduction="sum") / max(
            mlm_labels.numel(), 1)
        result = {"mslm": mslm, "scl_examples": torch.zeros((), dtype=torch.long,
                                                            device=input_ids.device)}
        loss = self.scl.lambda_mslm * mslm
        if self.num_relations:
            scl, used = self.scl_loss(states, relation_mask, entity_mask, negative_mask,
                                      relation_ids)
            result["scl"], result["scl_examples"] = scl, used
            loss = loss + self.scl.lambda_scl * scl
        result["loss"] = loss
        return result

    def scl_loss(self, states, relation_mask, entity_mask, negative_mask, relation_ids
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        tau, states = self.scl.tau, states.float()
        anchors = self.project(self.anchors.weight)  # (R, D): every anchor, every step
        has_relation = relation_ids >= 0
        anchor = anchors[relation_ids.clamp(min=0)]  # (B, D)

        relation_span, has_span = mean_pool(states, relation_mask)
        relation_span = self.project(relation_span)  # (B, D)
        positives, positive_valid = [relation_span], [has_span]
        if self.scl.entity_positives:
            entity_span, has_entity = mean_pool(states, entity_mask)
            positives.append(self.project(entity_span))
            positive_valid.append(has_entity)
        positive = (anchor[:, None, :] * torch.stack(positives, 1)).sum(-1) / tau  # (B, P)
        # an example without a relation span or a relation is left out entirely
        usable = has_relation & has_span
        positive_valid = torch.stack(positive_valid, 1) & usable[:, None]

        spans, span_valid = mean_pool(states, negative_mask)  # (B, N, H)
        negative = (anchor[:, None, :] * self.project(spans)).sum(-1) / tau
        negative_valid = span_valid
        if self.scl.anchor_negatives and self.num_relations > 1:
            # the relation span against every other relation's anchor, in the same denominator
            other = relation_span @ anchors.T / tau  # (B, R)
            other_valid = F.one_hot(relation_ids.clamp(min=0), self.num_relations) == 0
            negative = torch.cat([negative, other], 1)
            negative_valid = torch.cat([negative_valid, other_valid], 1)

        per_example, valid = info_nce(positive, positive_valid, negative, negative_valid)
        # the mean over usable examples; with none, zero with every SCL parameter in the graph
        used = valid.sum()
        return (per_example * valid).sum() / used.clamp(min=1), used
