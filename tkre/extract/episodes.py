"""N-way K-shot episodes: how well prototypes of run-time relations work, and their calibration.

`evaluate_episodes` measures N-way K-shot accuracy on FewRel-style data: each episode draws N
relations, K support and Q query examples per relation, and a query is correct when its nearest
prototype is its own relation. The same episodes' (query, prototype) cosines fit the
`Calibration` that lets run-time relations compete with trained labels (`tkre.extract`).
`run_fewshot_eval` is the library side of `jobs/fewshot_eval.py`.

Reproduce the FewRel numbers:
    python jobs/fewshot_eval.py --data-dir ../shared/data/fewrel --episodes 500 --seed 42
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tkre import layout, storage
from tkre.extract.prototypes import PairEncoder, fit_calibration, prototype
from tkre.schema import Instance

if TYPE_CHECKING:
    from tkre.config import FewshotEvalConfig

SETTING = re.compile(r"^(\d+)x(\d+)$")


def parse_settings(text: str) -> list[tuple[int, int]]:
    """"5x1,5x5" -> [(5, 1), (5, 5)]; [] when malformed."""
    matches = [SETTING.match(part.strip()) for part in text.split(",")]
    if not all(matches):
        return []
    pairs = [(int(m.group(1)), int(m.group(2))) for m in matches]
    return pairs if all(n >= 2 and k >= 1 for n, k in pairs) else []


@dataclass(frozen=True)
class Episode:
    relations: tuple[str, ...]
    support: tuple[tuple[int, ...], ...]  # per relation, K instance indices
    queries: tuple[tuple[int, ...], ...]  # per relation, Q instance indices


def sample_episodes(by_relation: dict[str, list[int]], n_way: int, k_shot: int, queries: int,
                    episodes: int, seed: int) -> list[Episode]:
    """Seeded episodes; support and query examples of one relation never overlap."""
    eligible = sorted(r for r, rows in by_relation.items() if len(rows) >= k_shot + queries)
    if len(eligible) < n_way:
        raise ValueError(f"{n_way}-way {k_shot}-shot with {queries} queries needs {n_way} "
                         f"relations with >= {k_shot + queries} examples; only "
                         f"{len(eligible)} have them")
    rng = random.Random(seed)
    out = []
    for _ in range(episodes):
        relations = tuple(rng.sample(eligible, n_way))
        drawn = [rng.sample(by_relation[r], k_shot + queries) for r in relations]
        out.append(Episode(relations, tuple(tuple(d[:k_shot]) for d in drawn),
                           tuple(tuple(d[k_shot:]) for d in drawn)))
    return out


def _score_episode(episode: Episode, embeddings: dict[int, torch.Tensor]
                   ) -> tuple[int, int, list[float], list[float]]:
    """(correct, total, positive cosines, negative cosines) of one episode."""
    protos = torch.stack([prototype(torch.stack([embeddings[i] for i in rows]))
                          for rows in episode.support])
    correct = total = 0
    positives: list[float] = []
    negatives: list[float] = []
    for label, rows in enumerate(episode.queries):
        cosines = torch.stack([embeddings[i] for i in rows]) @ protos.T  # [Q, N]
        correct += int((cosines.argmax(-1) == label).sum())
        total += len(rows)
        positives += cosines[:, label].tolist()
        mask = torch.ones(len(episode.relations), dtype=torch.bool)
        mask[label] = False
        negatives += cosines[:, mask].flatten().tolist()
    return correct, total, positives, negatives


def evaluate_episodes(source: str | PairEncoder, instances: Sequence[Instance],
                      settings: Sequence[tuple[int, int]] = ((5, 1), (5, 5)),
                      episodes: int = 500, seed: int = 42, queries: int = 1,
                      batch_size: int = 64) -> dict:
    """N-way K-shot prototype accuracy for each (N, K) in settings, on the same encoder.

    `source` is a PairEncoder or anything PairEncoder.load takes. Only the instances some
    episode uses are embedded, once. Returns per setting: accuracy, its 95% interval half-width
    over episodes, episodes, queries, and the Calibration fitted on that setting's pairs; and
    one Calibration fitted on all settings' pairs together.
    """
    encoder = source if isinstance(source, PairEncoder) else PairEncoder.load(source)
    by_relation: dict[str, list[int]] = {}
    for index, inst in enumerate(instances):
        by_relation.setdefault(inst.relation, []).append(index)
    sampled = {(n, k): sample_episodes(by_relation, n, k, queries, episodes, seed + 1000 * n + k)
               for n, k in settings}
    needed = sorted({i for eps in sampled.values() for ep in eps
                     for rows in (*ep.support, *ep.queries) for i in rows})
    started = time.perf_counter()
    vectors = encoder.embed([instances[i] for i in needed], batch_size)
    embed_s = time.perf_counter() - started
    embeddings = dict(zip(needed, vectors, strict=True))
    results, pooled_pos, pooled_neg = {}, [], []
    for (n, k), eps in sampled.items():
        scored = [_score_episode(ep, embeddings) for ep in eps]
        pooled_pos += [p for *_, pos, _ in scored for p in pos]
        pooled_neg += [q for *_, neg in scored for q in neg]
        accuracies = [c / t for c, t, _, _ in scored]
        mean = sum(accuracies) / len(accuracies)
        spread = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / max(1, len(accuracies) - 1))
        calibration = fit_calibration([p for *_, pos, _ in scored for p in pos],
                                      [q for *_, neg in scored for q in neg])
        results[f"{n}-way-{k}-shot"] = {
            "n_way": n, "k_shot": k, "episodes": len(eps), "queries_per_relation": queries,
            "accuracy": mean, "ci95": 1.96 * spread / math.sqrt(len(accuracies)),
            "calibration": calibration.to_dict()}
    return {"settings": results, "seed": seed,
            "calibration": fit_calibration(pooled_pos, pooled_neg).to_dict(),
            "embedded_instances": len(needed),
            "embed_s": embed_s, "typed_markers": encoder.typed, "max_length": encoder.max_length}


def episode_accuracy(source: str | PairEncoder, instances: Sequence[Instance], n_way: int,
                     k_shot: int, episodes: int = 500, seed: int = 42, queries: int = 1,
                     batch_size: int = 64) -> dict:
    """One N-way K-shot setting of `evaluate_episodes`."""
    out = evaluate_episodes(source, instances, [(n_way, k_shot)], episodes, seed, queries,
                            batch_size)
    return out["settings"][f"{n_way}-way-{k_shot}-shot"] | {
        key: out[key] for key in ("seed", "embedded_instances", "embed_s")}


def run_fewshot_eval(cfg: FewshotEvalConfig) -> dict:
    """Evaluate, print one line per setting, and write the artifacts when a root is given."""
    from tkre.data.readers import read_fewrel

    path = Path(cfg.data_dir) / cfg.file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --data-dir (the folder holding "
                                f"{cfg.file}) or set $TKRE_DATA_DIR (its fewrel/ subfolder)")
    result = evaluate_episodes(cfg.encoder, read_fewrel(path), parse_settings(cfg.settings),
                               cfg.episodes, cfg.seed, cfg.queries, cfg.batch_size)
    result |= {"encoder": cfg.encoder, "data": str(path)}
    for name, row in result["settings"].items():
        print(f"[fewshot] {name}: accuracy {row['accuracy']:.4f} +- {row['ci95']:.4f} "
              f"({row['episodes']} episodes, seed {cfg.seed})", flush=True)
    if cfg.root:
        storage.write_json(layout.fewshot_metrics(cfg.root), result)
        storage.write_json(layout.calibration(cfg.root), result["calibration"])
    return result
