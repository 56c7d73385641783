"""Relations from a few examples: entity-pair embeddings, prototypes, and their calibration.

A relation given by K examples is represented by a prototype (Snell et al., 2017): the mean of
the examples' L2-normalised entity-pair embeddings, normalised again; a query is scored by its
cosine similarity to each prototype. The pair embedding is the classifier's own input,
[h_@ ; h_#] (`tkre.finetune.model.pair_embedding`), so the same code serves a trained model
folder (ROOT/finetune/model: its fine-tuned encoder, its marker format, no head) and a plain
transformers encoder (the bundled one, or a pre-trained ROOT/pretrain/scl/model).

`Calibration` turns a cosine into the probability that the query expresses the relation,
P = sigmoid((cos - threshold) / temperature); `fit_calibration` fits it by logistic regression on
same-relation and other-relation (query, prototype) pairs (from `tkre.extract.episodes`), so a
run-time relation's score is comparable with a trained label's softmax probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tkre import layout, storage
from tkre.finetune.model import embed_pairs, load_classifier, load_encoder
from tkre.resources import resolve_model
from tkre.schema import Instance

# Plain encoders have no stored max length; FewRel sentences fit in 128 sub-tokens with markers.
DEFAULT_MAX_LENGTH = 128


@dataclass(frozen=True)
class Calibration:
    """P(query expresses r) = sigmoid((cos(query, prototype_r) - threshold) / temperature)."""

    threshold: float
    temperature: float

    def probability(self, cosine: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((cosine - self.threshold) / self.temperature)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def prototype(embeddings: torch.Tensor) -> torch.Tensor:
    """The normalised mean of normalised embeddings [K, D] -> [D]."""
    return F.normalize(F.normalize(embeddings, dim=-1).mean(0), dim=-1)


@dataclass
class PairEncoder:
    """An encoder that maps instances to normalised entity-pair embeddings."""

    encoder: nn.Module
    tokenizer: object
    typed: bool
    max_length: int

    @classmethod
    def load(cls, source: str, device: str = "cpu", max_length: int | None = None
             ) -> PairEncoder:
        """A trained model folder (its encoder and marker format) or a plain encoder folder,
        'bundled-encoder', or an s3:// URI of either."""
        from transformers import AutoTokenizer

        source = resolve_model(source)
        folder = storage.local_copy(source) if storage.is_s3(source) else Path(source)
        if (folder / layout.MODEL_META_FILE).exists():
            model, tokenizer, meta = load_classifier(folder, device)
            return cls(model.encoder, tokenizer, meta.typed_markers,
                       max_length or meta.max_length)
        encoder = load_encoder(folder).to(device).eval()
        return cls(encoder, AutoTokenizer.from_pretrained(folder), False,
                   max_length or DEFAULT_MAX_LENGTH)

    def embed(self, instances: Sequence[Instance], batch_size: int = 64) -> torch.Tensor:
        """[N, 2H] L2-normalised pair embeddings, in input order."""
        return embed_pairs(self.encoder, self.tokenizer, instances, self.typed, self.max_length,
                           batch_size)


def fit_calibration(positives: Sequence[float], negatives: Sequence[float],
                    steps: int = 200) -> Calibration:
    """Logistic regression of same-relation on cosine, both classes weighted equally (an
    episode holds N - 1 negatives per positive, which would otherwise set the threshold)."""
    cos = torch.tensor([*positives, *negatives], dtype=torch.float64)
    target = torch.tensor([1.0] * len(positives) + [0.0] * len(negatives), dtype=torch.float64)
    weight = torch.where(target == 1, 0.5 / len(positives), 0.5 / len(negatives))
    # fit in a standardised variable (the cosines of one encoder span a narrow band)
    mean, std = float(cos.mean()), float(cos.std()) or 1.0
    scale = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([scale, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = scale * (cos - mean) / std + bias
        loss = (weight * F.binary_cross_entropy_with_logits(logits, target, reduction="none")
                ).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    a, b = float(scale.detach()), float(bias.detach())
    if a <= 0:
        raise ValueError("cosine does not separate same-relation from other-relation pairs")
    # a * (cos - mean) / std + b = (cos - threshold) / temperature
    return Calibration(threshold=mean - b * std / a, temperature=std / a)
