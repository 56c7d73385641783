"""Run-time relations on a trained model: do they take only the sentences that express them?

    from tkre.bench.openset import fewrel_relations, measure_openset
    measure_openset("runs/demo", fewrel_relations("../shared/data/fewrel/val_wiki.json"))

For each new relation and each K in `shots`, the relation is registered from K seeded examples
(in a temporary registry: the root's own is untouched) and the served prediction
(`Extractor.predict`, gates included) is compared with the prediction without it:

    flip_rate       share of ROOT's test sentences (the trained labels) now predicted as it
    own_recall      share of its held-out queries (not among the K examples) predicted as it
    other_new_rate  share of the other new relations' queries predicted as it

The encoder's forward pass does not depend on the registrations, so it runs once per sentence.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tkre.data.datasets import load_prepared
from tkre.extract.extractor import Extractor
from tkre.extract.references import FLIP_RATE
from tkre.finetune.markers import encode
from tkre.schema import Instance


class _CachedForward(Extractor):
    """An Extractor whose forward pass is computed once per distinct padded batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cache: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}

    def _forward(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        key = b"".join(tensors[k].numpy().tobytes()
                       for k in ("input_ids", "head_pos", "tail_pos"))
        if key not in self._cache:
            self._cache[key] = super()._forward(tensors)
        return self._cache[key]


def fewrel_relations(path: str | Path) -> dict[str, list[Instance]]:
    """FewRel relations (pid2name.json beside the file gives them their names) -> instances."""
    from tkre.data.readers import read_fewrel, read_pid2name

    path = Path(path)
    names = path.parent / "pid2name.json"
    relations: dict[str, list[Instance]] = {}
    for inst in read_fewrel(path, read_pid2name(names) if names.exists() else None):
        relations.setdefault(inst.relation, []).append(inst)
    return relations


def measure_openset(root: str, new: dict[str, list[Instance]], shots: Sequence[int] = (1, 5),
                    queries: int = 50, seed: int = 42, device: str | None = None
                    ) -> dict[str, Any]:
    """The rows (one per new relation and K) and their means per K; see the module docstring.
    Relations of `new` that are labels of the model are left out (and listed)."""
    base = Extractor.from_root(root, device)
    trained = sorted(name for name in new if base.is_trained(name))
    new = {name: rows for name, rows in new.items() if name not in trained}
    fits = encodable(base)
    test = [inst for inst in load_prepared(root).test if fits(inst)]
    rng = random.Random(seed)
    drawn = {name: rng.sample(kept, min(len(kept), max(shots) + queries))
             for name, rows in sorted(new.items())
             for kept in [[inst for inst in rows if fits(inst)]]}
    with tempfile.TemporaryDirectory() as registry:
        extractor = _CachedForward(base.model, base.tokenizer, base.meta, registry,
                                   base.calibration, refresh_s=0, references=base.references)

        def predicted(instances: list[Instance]) -> list[str]:
            encoded = [encode(base.tokenizer, inst, base.meta.typed_markers,
                              base.meta.max_length) for inst in instances]
            return [p.relation for p in extractor.predict(encoded, top_k=1)]

        held_out = {name: rows[max(shots):] for name, rows in drawn.items()}
        before = predicted(test)
        rows = []
        for name, pool in drawn.items():
            others = [inst for other, rows_ in held_out.items() if other != name
                      for inst in rows_[:10]]
            for k in shots:
                extractor.register(name, [wire_example(inst) for inst in pool[:k]])
                after = predicted(test)
                own = predicted(held_out[name])
                other = predicted(others)
                extractor.unregister(name)
                flipped = sum(a == name != b for a, b in zip(after, before, strict=True))
                rows.append({"relation": name, "k": k, "flipped": flipped,
                             "flip_rate": flipped / max(1, len(test)),
                             "own_recall": sum(p == name for p in own) / max(1, len(own)),
                             "queries": len(own),
                             "other_new_rate": sum(p == name for p in other) / max(1, len(other))})
    return {"root": root, "test_sentences": len(test), "flip_rate_target": FLIP_RATE,
            "references": base.references.describe() if base.references else None,
            "calibration": base.calibration.to_dict(), "seed": seed, "rows": rows,
            "by_k": summarize(rows), "left_out_trained": trained}


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per K: mean and max flip rate, mean own recall, mean rate on other new relations."""
    out = {}
    for k in sorted({row["k"] for row in rows}):
        cell = [row for row in rows if row["k"] == k]
        out[str(k)] = {"relations": len(cell),
                       "flip_rate_mean": sum(r["flip_rate"] for r in cell) / len(cell),
                       "flip_rate_max": max(r["flip_rate"] for r in cell),
                       "own_recall_mean": sum(r["own_recall"] for r in cell) / len(cell),
                       "other_new_rate_mean": sum(r["other_new_rate"] for r in cell) / len(cell)}
    return out


def encodable(extractor: Extractor):
    """Whether the model can encode an instance (entities within its max_length)."""
    def fits(inst: Instance) -> bool:
        try:
            encode(extractor.tokenizer, inst, extractor.meta.typed_markers,
                   extractor.meta.max_length)
        except ValueError:
            return False
        return True
    return fits


def wire_example(inst: Instance) -> dict:
    """An Instance as a wire-format example (tokens and token spans)."""
    def span(s) -> dict:
        return {"start": s.start, "end": s.end} | ({"type": s.type} if s.type else {})
    return {"tokens": list(inst.tokens), "head": span(inst.head), "tail": span(inst.tail)}
