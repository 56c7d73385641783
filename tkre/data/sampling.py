"""K-shot sampling, the way the few-shot RE literature draws its splits (GenPT, TKRE).

Shuffle the pool with the seed, then keep the first K examples of every label in that order; the
no-relation label is a label like any other, and a label with fewer than K examples keeps them all.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from tkre.schema import Instance


def sample_k_shot(pool: Sequence[Instance], k: int, seed: int,
                  exclude_ids: Iterable[str] = ()) -> list[Instance]:
    """K instances per label from `pool` (minus `exclude_ids`), deterministic for a seed."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    excluded = set(exclude_ids)
    candidates = [inst for inst in pool if inst.id not in excluded]
    order = list(range(len(candidates)))
    random.Random(seed).shuffle(order)
    taken: Counter[str] = Counter()
    chosen = []
    for index in order:
        inst = candidates[index]
        if taken[inst.relation] < k:
            taken[inst.relation] += 1
            chosen.append(inst)
    return chosen


def split_per_relation(instances: Sequence[Instance], k: int, seed: int
                       ) -> tuple[list[Instance], list[Instance], list[Instance]]:
    """For data sets without official splits (FewRel): per relation K train, K dev, rest test."""
    by_relation: dict[str, list[Instance]] = defaultdict(list)
    for inst in instances:
        by_relation[inst.relation].append(inst)
    rng = random.Random(seed)
    train, dev, test = [], [], []
    for relation in sorted(by_relation):
        members = list(by_relation[relation])
        rng.shuffle(members)
        train += members[:k]
        dev += members[k:2 * k]
        test += members[2 * k:]
    return train, dev, test


def seeded_subset(instances: Sequence[Instance], size: int | None, seed: int) -> list[Instance]:
    """At most `size` instances, a seeded random subset in the original order (None: all)."""
    if size is None or size >= len(instances):
        return list(instances)
    keep = sorted(random.Random(seed).sample(range(len(instances)), size))
    return [instances[i] for i in keep]


def label_counts(instances: Iterable[Instance]) -> dict[str, int]:
    return dict(sorted(Counter(inst.relation for inst in instances).items()))
