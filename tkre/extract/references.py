"""Reference sentences of the trained labels, and the margin a run-time relation must beat.

A cosine threshold alone cannot keep a registered relation off sentences of a trained label
that resembles it: with the demo model, "X was born in London" is as close to a one-example
per:city_of_death prototype (cos 0.93) as "Y died in Rome" is. What separates them is that the
birth sentence is closer still to the model's own birth sentences. So a query x is held against
its nearest reference sentence (the K-shot train + dev sentences of the trained labels, embedded
by the same encoder):

    margin_r(x) = cos(x, prototype_r) - max_i cos(x, reference_i)

and r can be predicted only when margin_r(x) > threshold_r. The threshold comes from the
references themselves, leave-one-out: each reference's margin against the other references,
threshold_r = their ceil((n + 1)(1 - flip_rate))-th smallest (the largest when that exceeds n).
A sentence of the trained labels drawn like the references then passes with probability at most
`flip_rate` (the split-conformal bound; 1 / (n + 1) when the largest is used), for each
registered relation, however close it lies to a trained label.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tkre import layout
from tkre.finetune.model import ModelMeta, load_references

# the share of trained-label sentences (drawn like the references) allowed past each relation
FLIP_RATE = 0.02
_CHUNK = 1024  # reference rows compared at once (an n x n matrix would not fit for large n)


@dataclass(frozen=True)
class References:
    """Normalised pair embeddings [n, D] of sentences of the trained labels, n >= 2."""

    embeddings: torch.Tensor
    labels: list[str]
    source: str
    nearest: torch.Tensor = field(init=False, repr=False)  # [n] cos to the nearest other one
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        if len(self.embeddings) < 2 or len(self.embeddings) != len(self.labels):
            raise ValueError("references need at least two embeddings, one label each")
        nearest = torch.empty(len(self.embeddings))
        for start in range(0, len(self.embeddings), _CHUNK):
            block = self.embeddings[start:start + _CHUNK] @ self.embeddings.T
            rows = torch.arange(len(block))
            block[rows, rows + start] = -math.inf  # leave each reference out of its own
            nearest[start:start + len(block)] = block.max(-1).values
        object.__setattr__(self, "nearest", nearest)
        digest = hashlib.sha256(self.embeddings.float().numpy().tobytes()).hexdigest()
        object.__setattr__(self, "fingerprint", digest[:16])

    def margins(self, queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """[B, R]: cos(query, prototype) - cos(query, its nearest reference)."""
        nearest = (queries @ self.embeddings.T).max(-1, keepdim=True).values
        return queries @ prototypes.T - nearest

    def threshold(self, prototype: torch.Tensor, flip_rate: float = FLIP_RATE) -> float:
        """The margin a query must exceed for the relation of `prototype` (module docstring)."""
        loo = self.embeddings @ prototype - self.nearest
        n = len(loo)
        rank = min(n, math.ceil((n + 1) * (1 - flip_rate)))
        return float(loo.sort().values[rank - 1])

    def gate(self, prototype: torch.Tensor, flip_rate: float = FLIP_RATE) -> dict:
        """What a registration stores: the threshold and the references it was set from."""
        return {"margin": self.threshold(prototype, flip_rate), "flip_rate": flip_rate,
                "references": len(self.labels), "fingerprint": self.fingerprint}

    def describe(self) -> dict:
        return {"sentences": len(self.labels), "source": self.source,
                "fingerprint": self.fingerprint, "flip_rate": FLIP_RATE}


def load_for_root(root: str, model_dir: Path, meta: ModelMeta, embed) -> References | None:
    """The model folder's reference file; else ROOT/data's K-shot train + dev sentences,
    embedded now with `embed` (a model exported before reference files existed); else None."""
    stored = load_references(model_dir, meta)
    if stored is not None and len(stored[1]) >= 2:
        return References(stored[0], stored[1], f"{layout.MODEL_REFERENCE_FILE} in the model")
    if not layout.data_done(root):
        return None
    from tkre.data.datasets import load_prepared

    splits = load_prepared(root)
    known = set(meta.labels)
    sentences = [inst for inst in splits.train + splits.dev if inst.relation in known]
    if len(sentences) < 2:
        return None
    return References(embed(sentences), [inst.relation for inst in sentences],
                      f"{layout.data_dir(root)} train + dev, embedded at start")
