"""Few-shot relations from examples: entity-pair embeddings, prototypes, episodes, calibration.

A relation given by K examples is represented by a prototype (Snell et al., 2017): the mean of
the examples' L2-normalised entity-pair embeddings, normalised again; a query is scored by its
cosine similarity to each prototype. The pair embedding is the classifier's own input,
[h_@ ; h_#], the encoder states at the two start markers (`tkre.finetune.markers`), so the
same code serves a trained model folder (ROOT/finetune/model: its fine-tuned encoder, its marker
format, no head) and a plain transformers encoder (the bundled one, or a pre-trained
ROOT/pretrain/scl/model).

`evaluate_episodes` measures N-way K-shot accuracy on FewRel-style data: each episode draws N
relations, K support and Q query examples per relation, and a query is correct when its nearest
prototype is its own relation. It also fits `Calibration`: a logistic curve that turns a cosine
into the probability that the query expresses that relation, P = sigmoid((cos - threshold) /
temperature), from the episodes' (query, prototype) pairs, positives and negatives weighted
equally. `tkre.extract` uses it to let run-time relations compete with trained labels.

Reproduce the FewRel numbers:
    python jobs/fewshot_eval.py --data-dir ../shared/data/fewrel --episodes 500 --seed 42
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tkre import storage
from tkre.config import DATA_ENV, _check, _help
from tkre.finetune.markers import Encoded, encode
from tkre.finetune.model import META_FILE, collate, load_classifier, load_encoder
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


def pair_embedding(encoder: nn.Module, input_ids, attention_mask, head_pos, tail_pos
                   ) -> torch.Tensor:
    """[h_@ ; h_#]: the states at the two start markers, concatenated (as the classifier's)."""
    states = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows = torch.arange(states.size(0), device=states.device)
    return torch.cat([states[rows, head_pos], states[rows, tail_pos]], dim=-1)


def length_batches(encoded: Sequence[Encoded], pad_id: int, batch_size: int
                   ) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(input indices, padded tensors) in batches of similar length, so little is padding."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        yield indices, collate([encoded[i] for i in indices], pad_id)


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
        if (folder / META_FILE).exists():
            model, tokenizer, meta = load_classifier(folder, device)
            return cls(model.encoder, tokenizer, meta.typed_markers,
                       max_length or meta.max_length)
        encoder = load_encoder(folder).to(device).eval()
        return cls(encoder, AutoTokenizer.from_pretrained(folder), False,
                   max_length or DEFAULT_MAX_LENGTH)

    @torch.inference_mode()
    def embed(self, instances: Sequence[Instance], batch_size: int = 64) -> torch.Tensor:
        """[N, 2H] L2-normalised pair embeddings, in input order."""
        encoded = [encode(self.tokenizer, inst, self.typed, self.max_length) for inst in instances]
        device = next(self.encoder.parameters()).device
        hidden = self.encoder.config.hidden_size
        out = torch.empty(len(encoded), 2 * hidden)
        for indices, tensors in length_batches(encoded, self.tokenizer.pad_token_id, batch_size):
            tensors = {k: v.to(device) for k, v in tensors.items()}
            pairs = pair_embedding(self.encoder, **tensors)
            out[torch.tensor(indices)] = F.normalize(pairs.float(), dim=-1).cpu()
        return out


# --- episodes ------------------------------------------------------------------------------

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


def fit_calibration(positives: Sequence[float], negatives: Sequence[float],
                    steps: int = 200) -> Calibration:
    """Logistic regression of same-relation on cosine, both classes weighted equally."""
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


# --- the job -------------------------------------------------------------------------------

SETTING = re.compile(r"^(\d+)x(\d+)$")


def parse_settings(text: str) -> list[tuple[int, int]]:
    """"5x1,5x5" -> [(5, 1), (5, 5)]; [] when malformed."""
    matches = [SETTING.match(part.strip()) for part in text.split(",")]
    if not all(matches):
        return []
    pairs = [(int(m.group(1)), int(m.group(2))) for m in matches]
    return pairs if all(n >= 2 and k >= 1 for n, k in pairs) else []


@dataclass
class FewshotEvalConfig:
    """N-way K-shot prototype accuracy on FewRel val_wiki (or any FewRel-format file)."""

    data_dir: str | None = _help(
        "folder holding the FewRel file; default: $TKRE_DATA_DIR/fewrel, else "
        "../shared/data/fewrel", default=None)
    file: str = _help("FewRel JSON file inside data_dir", default="val_wiki.json")
    encoder: str = _help(
        "a trained model folder (ROOT/finetune/model), a plain encoder folder "
        "(ROOT/pretrain/scl/model) or 'bundled-encoder'", default="bundled-encoder")
    settings: str = _help("comma-separated NxK settings (N-way K-shot)", default="5x1,5x5")
    episodes: int = _help("episodes per setting", default=500)
    queries: int = _help("query examples per relation in each episode", default=1)
    seed: int = _help("episode sampling seed", default=42)
    batch_size: int = _help("embedding batch size", default=64)
    root: str | None = _help(
        "run root: when given, write ROOT/extract/fewshot_metrics.json and the fitted "
        "calibration to ROOT/extract/calibration.json (what the extractor uses)", default=None)

    def __post_init__(self) -> None:
        for name in ("episodes", "queries", "batch_size"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _check(bool(parse_settings(self.settings)), "settings",
               f"must look like 5x1,10x5 (N >= 2, K >= 1), got {self.settings!r}")


def run_fewshot_eval(cfg: FewshotEvalConfig) -> dict:
    """Evaluate, print one line per setting, and write the artifacts when a root is given."""
    from tkre.data.readers import read_fewrel

    folder = Path(cfg.data_dir or Path(os.environ.get(DATA_ENV) or
                                       Path(__file__).resolve().parents[2] / "shared" / "data")
                  / "fewrel")
    path = folder / cfg.file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --data-dir or set {DATA_ENV}")
    result = evaluate_episodes(cfg.encoder, read_fewrel(path), parse_settings(cfg.settings),
                               cfg.episodes, cfg.seed, cfg.queries, cfg.batch_size)
    result |= {"encoder": cfg.encoder, "data": str(path)}
    for name, row in result["settings"].items():
        print(f"[fewshot] {name}: accuracy {row['accuracy']:.4f} +- {row['ci95']:.4f} "
              f"({row['episodes']} episodes, seed {cfg.seed})", flush=True)
    if cfg.root:
        storage.write_json(storage.join(cfg.root, "extract", "fewshot_metrics.json"), result)
        storage.write_json(storage.join(cfg.root, "extract", "calibration.json"),
                           result["calibration"])
    return result
