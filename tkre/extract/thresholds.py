"""The no-relation threshold of a trained model, fitted on the run's dev set, and the relation
types raw-text extraction filters by; both go to ROOT/finetune/model/text_extraction.json.

On raw text most candidate pairs hold no relation. A model trained with a no-relation label
says so itself; one trained without (FewRel) gives every pair its best label, so a pair is kept
only when its best relation's score reaches a threshold. The threshold is fitted on the dev set
as the one that maximises micro-F1 (no-relation excluded) of the decision the extractor makes
(`tkre.extract.triples.Decision`), over

- positives: the dev instances, their gold pair with their gold types; a hit when the best
  relation is the gold one, the schema takes the types and the score reaches the threshold;
- negatives: the dev instances labelled no-relation, and every other candidate pair of the dev
  sentences (spaCy, as on raw text; pairs that overlap a gold pair in either direction left
  out): each one kept is a false positive.

F1 is evaluated at every distinct score; the threshold is halfway between the lowest kept score
and the next one down (0 when keeping everything is best; ties go to the lower threshold).
Models with a no-relation label get one too: it only removes what raises dev F1. Without the
`text` extra only the no-relation dev instances are negatives, and a model without that label
then keeps threshold 0 (said in the file and on stdout).

It runs after evaluation (`evaluate_and_fit`: jobs/evaluate.py and the pipeline's evaluate
stage), on the data the evaluation read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from tkre import layout, storage
from tkre.config import EvaluateConfig
from tkre.data import datasets
from tkre.extract.candidates import CandidateFinder
from tkre.extract.extractor import Extractor, types_from_data
from tkre.extract.triples import Decision, plan_texts
from tkre.finetune.evaluate import run_evaluate
from tkre.finetune.markers import encode
from tkre.finetune.model import load_classifier
from tkre.resources import ResourceError
from tkre.schema import Instance


def best_threshold(kept: Sequence[tuple[float, bool]], positives: int
                   ) -> tuple[float, float, float]:
    """(threshold, F1 at it, F1 at 0) from the dev units that yield a relation at threshold
    0, each (score, correct), and the number of positives."""
    def f1(tp: int, fp: int) -> float:
        return 2 * tp / (2 * tp + fp + (positives - tp)) if tp else 0.0

    ranked = sorted(kept, key=lambda unit: -unit[0])
    best_f1, best_at, tp, fp = 0.0, -1, 0, 0  # best_at: index of the lowest kept unit
    for i, (score, correct) in enumerate(ranked):
        tp, fp = tp + correct, fp + (not correct)
        if i + 1 < len(ranked) and ranked[i + 1][0] == score:
            continue  # a threshold keeps all units of one score or none
        if f1(tp, fp) >= best_f1 and (tp or fp):
            best_f1, best_at = f1(tp, fp), i
    everything = f1(tp, fp)
    if best_at in (-1, len(ranked) - 1):  # nothing yields at all, or keeping all is best
        return 0.0, everything, everything
    return (ranked[best_at][0] + ranked[best_at + 1][0]) / 2, best_f1, everything


def _joined(inst: Instance) -> tuple[str, tuple[int, int, int, int]]:
    """The instance's sentence as text (tokens joined by spaces) and its gold head and tail
    as character spans of it."""
    starts, cursor = [], 0
    for token in inst.tokens:
        starts.append(cursor)
        cursor += len(token) + 1

    def chars(first: int, stop: int) -> tuple[int, int]:
        return starts[first], starts[stop - 1] + len(inst.tokens[stop - 1])

    return " ".join(inst.tokens), (*chars(inst.head.start, inst.head.end),
                                   *chars(inst.tail.start, inst.tail.end))


def dev_outcomes(extractor: Extractor, dev: Sequence[Instance],
                 finder: CandidateFinder | None, batch_size: int = 64
                 ) -> tuple[list[tuple[float, bool]], dict[str, int]]:
    """The (score, correct) of every dev unit that yields a relation at threshold 0, and the
    counts of positives and negatives."""
    labels, no_relation = extractor.meta.labels, extractor.meta.no_relation
    decision = Decision(no_relation, extractor.types)
    gold = [inst for inst in dev if inst.relation in labels]
    encoded, scored = [], []
    for inst in gold:
        try:
            encoded.append(encode(extractor.tokenizer, inst, extractor.meta.typed_markers,
                                  extractor.meta.max_length))
        except ValueError:  # entities too far apart for the model: not a dev unit
            continue
        scored.append(inst)
    kept: list[tuple[float, bool]] = []
    for inst, p in zip(scored, extractor.predict(encoded, 1, batch_size), strict=True):
        if p.relation != no_relation and p.score >= decision.threshold(p.relation) and (
                extractor.types.allows(p.relation, inst.head.type, inst.tail.type)):
            kept.append((p.score, p.relation == inst.relation))
    counts = {"positives": sum(i.relation != no_relation for i in scored),
              "no_relation_instances": sum(i.relation == no_relation for i in scored),
              "candidate_pairs": 0}
    if finder is not None:
        sentences: dict[str, list[tuple[int, int, int, int]]] = {}
        for inst in dev:
            text, spans = _joined(inst)
            sentences.setdefault(text, []).append(spans)
        texts = list(sentences)
        plan, instances = plan_texts(texts, finder.sentences(texts), extractor.types,
                                     extractor.candidate_config.window,
                                     exclude=dict(enumerate(sentences.values())))
        plan, encoded = extractor.encode_plan(plan, instances)
        best: dict[tuple[int, int], float] = {}
        for c, p in zip(plan.candidates, extractor.predict(encoded, 1, batch_size),
                        strict=True):
            if decision.passes(c, p):
                key = (c.document, c.pair)
                best[key] = max(best.get(key, 0.0), p.score)
        kept += [(score, False) for score in best.values()]
        counts["candidate_pairs"] = plan.pairs
    return kept, counts


def fit_text_settings(root: str, dev: Sequence[Instance] | None = None,
                      finder: CandidateFinder | None = None, batch_size: int = 64
                      ) -> dict[str, Any]:
    """Fit the threshold of ROOT/finetune/model on `dev` (default: ROOT/data's dev split) and
    write text_extraction.json into the model folder; returns what was written."""
    started = time.perf_counter()
    model_dir = layout.finetune_model(root)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer, meta = load_classifier(storage.local_copy(model_dir), device)
    extractor = Extractor(model, tokenizer, meta, source=model_dir,
                          types=types_from_data(root, meta.no_relation))
    dev = list(dev) if dev is not None else datasets.load_prepared(root).dev
    kept, counts = dev_outcomes(extractor, dev, finder, batch_size)
    threshold, f1, f1_at_zero = best_threshold(kept, counts["positives"])
    negatives = counts["no_relation_instances"] + counts["candidate_pairs"]
    note = "" if negatives else "no negatives on the dev set: threshold 0"
    settings = {
        "threshold": threshold if negatives else 0.0,
        "relation_types": extractor.types.to_dict(),
        "fit": {"dev_micro_f1": f1, "dev_micro_f1_without_threshold": f1_at_zero, **counts,
                "candidates": finder.describe() if finder else None, "note": note,
                "wall_s": round(time.perf_counter() - started, 1)},
    }
    storage.write_json(layout.text_extraction(model_dir), settings)
    print(f"[threshold] no-relation threshold {settings['threshold']:.3f} (dev micro-F1 "
          f"{f1_at_zero:.4f} -> {f1:.4f}; {counts['positives']} positives, {negatives} "
          f"negatives{'; ' + note if note else ''}); written to "
          f"{layout.text_extraction(model_dir)}", flush=True)
    return settings


def default_finder() -> CandidateFinder | None:
    """spaCy's candidates, or None (with a note) when the `text` extra is not installed."""
    try:
        return CandidateFinder()
    except ResourceError as err:
        print(f"[threshold] note: {err}; fitting on the no-relation dev instances only",
              flush=True)
        return None


def evaluate_and_fit(cfg: EvaluateConfig, splits: datasets.Splits | None = None) -> dict:
    """Evaluate ROOT's model on the test set, then fit its raw-text settings on the dev set."""
    metrics = run_evaluate(cfg, splits)
    dev = splits.dev if splits is not None else datasets.load_prepared(cfg.root).dev
    settings = fit_text_settings(cfg.root, dev, default_finder(), cfg.batch_size)
    return metrics | {"no_relation_threshold": settings["threshold"]}

