"""K-shot sampler: counts, determinism, disjointness."""

from collections import Counter

from tkre.data.sampling import sample_k_shot, seeded_subset, split_per_relation
from tkre.schema import Instance, Span


def make(i: int, relation: str) -> Instance:
    return Instance(id=f"x{i}", tokens=("a", "b", "c"), head=Span(0, 1, "a"),
                    tail=Span(2, 3, "c"), relation=relation)


POOL = ([make(i, "r1") for i in range(20)] + [make(100 + i, "r2") for i in range(12)]
        + [make(200 + i, "no_relation") for i in range(30)]
        + [make(300 + i, "rare") for i in range(3)])


def test_k_per_label_including_no_relation_and_rare_labels_keep_all():
    chosen = sample_k_shot(POOL, k=8, seed=42)
    counts = Counter(inst.relation for inst in chosen)
    assert counts == {"r1": 8, "r2": 8, "no_relation": 8, "rare": 3}
    assert len({inst.id for inst in chosen}) == len(chosen)


def test_deterministic_per_seed_and_different_across_seeds():
    ids = lambda seed: [inst.id for inst in sample_k_shot(POOL, 8, seed)]  # noqa: E731
    assert ids(13) == ids(13)
    assert ids(13) != ids(21)


def test_dev_is_disjoint_from_train():
    train = sample_k_shot(POOL, 8, 42)
    dev = sample_k_shot(POOL, 8, 42, exclude_ids={inst.id for inst in train})
    assert not {i.id for i in train} & {i.id for i in dev}
    assert Counter(i.relation for i in dev) == {"r1": 8, "r2": 4, "no_relation": 8}


def test_split_per_relation_is_disjoint_and_complete():
    train, dev, test = split_per_relation(POOL, k=5, seed=1)
    ids = [i.id for i in train + dev + test]
    assert len(ids) == len(set(ids)) == len(POOL)
    assert Counter(i.relation for i in train)["r1"] == 5
    assert Counter(i.relation for i in dev)["r1"] == 5
    assert Counter(i.relation for i in test)["r1"] == 10


def test_seeded_subset():
    assert seeded_subset(POOL, None, 0) == list(POOL)
    subset = seeded_subset(POOL, 10, 0)
    assert len(subset) == 10 and subset == seeded_subset(POOL, 10, 0)
    positions = [POOL.index(inst) for inst in subset]
    assert positions == sorted(positions)
