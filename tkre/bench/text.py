"""Raw text: candidate generation and a trained model on sentences given without markers.

    from tkre.bench.text import measure_text_quality
    measure_text_quality(Extractor.from_root("ROOT"), instances, "Other")

Every gold sentence goes in as plain text (its tokens joined by single spaces, no entity
markers); the extractor finds the mentions (spaCy), pairs them and scores every pair, as
`Extractor.extract_texts` does. Against the gold pair of each sentence:

    pair_recall           share of gold pairs among the candidate pairs (either order)
    end_to_end_recall     share of gold pairs of a relation (not the no-relation label) emitted
                          as a triple with the gold relation: (e1, e2, r), or (e2, e1, r
                          reversed) for a directed label such as SemEval's "Cause-Effect(e1,e2)";
                          on FewRel, whose relations are not the model's, each relation is
                          first registered at run time from a few examples outside the sample
    triples_per_sentence  triples emitted per sentence, whatever their pair
    no_relation_silence   share of no-relation sentences whose gold pair yields no triple

A mention stands for a gold entity when it ends where the entity ends and starts at or before
it: spaCy's noun chunk "the burst" stands for SemEval's nominal "burst" (English base noun
phrases end in their head noun), "burst pipe" does not stand for "burst". Pairs too long for
the model's window are not scored and count as not found.

Speed (`extract_speed`): documents/s of the corpus job (`tkre.extract.batch.run_extract`: Ray
Data, an actor pool, length-sorted batches over all pairs of a block) against a plain loop that
calls `Extractor.extract_text` on one sentence at a time; same model, same texts, one run each,
Ray's start-up included in the job's time.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tkre.pretrain.data import from_instance
from tkre.schema import Instance, label_direction


def reversed_label(label: str) -> str | None:
    """The label of the same relation read from the other argument ("X(e1,e2)" <->
    "X(e2,e1)"), or None for an undirected label."""
    kind, direction = label_direction(label)
    if direction is None:
        return None
    return f"{kind}({'e2,e1' if direction == 'e1,e2' else 'e1,e2'})"


def stands_for(start: int, end: int, gold: tuple[int, int]) -> bool:
    """Does the mention [start, end) stand for the gold entity (see the module docstring)?"""
    return end == gold[1] and start <= gold[0]


def _pair_is(head: dict, tail: dict, first: tuple[int, int], second: tuple[int, int]) -> bool:
    return (stands_for(head["start"], head["end"], first)
            and stands_for(tail["start"], tail["end"], second))


def plain_texts(instances: Sequence[Instance]) -> list[tuple[str, tuple[int, int],
                                                          tuple[int, int]]]:
    """(text, head characters, tail characters) of each instance, without markers."""
    out = []
    for inst in instances:
        example = from_instance(inst)
        out.append((example.text, example.head, example.tail))
    return out


def score_documents(golds: Sequence[tuple[tuple[int, int], tuple[int, int], str | None]],
                    candidates: Sequence[list[tuple[dict, dict]]],
                    triples: Sequence[list[dict]], no_relation: str) -> dict[str, Any]:
    """The figures of the module docstring from each document's gold pair (head, tail,
    relation), its candidate pairs and its triples. A relation of None (not a label of the
    model) counts towards pair recall and triples per sentence only."""
    found = related = hit = other = silent = emitted = 0
    for (head, tail, relation), pairs, emitted_triples in zip(golds, candidates, triples,
                                                               strict=True):
        found += any(_pair_is(h, t, head, tail) or _pair_is(h, t, tail, head)
                     for h, t in pairs)
        emitted += len(emitted_triples)
        on_pair = [t for t in emitted_triples
                   if _pair_is(t["head"], t["tail"], head, tail)
                   or _pair_is(t["head"], t["tail"], tail, head)]
        if relation is None:  # not a label of the model (FewRel): candidates only
            continue
        if relation == no_relation:
            other += 1
            silent += not on_pair
            continue
        related += 1
        back = reversed_label(relation)
        hit += any((_pair_is(t["head"], t["tail"], head, tail) and t["relation"] == relation)
                   or (back is not None and _pair_is(t["head"], t["tail"], tail, head)
                       and t["relation"] == back) for t in on_pair)
    n = len(golds)
    return {"sentences": n, "pair_recall": found / max(n, 1),
            "end_to_end_recall": hit / related if related else None,
            "related_sentences": related,
            "triples_per_sentence": emitted / max(n, 1),
            "no_relation_silence": silent / other if other else None,
            "no_relation_sentences": other}


def measure_text_quality(extractor: Any, instances: Sequence[Instance], no_relation: str,
                         batch_size: int = 64, judge_relations: bool = True) -> dict[str, Any]:
    """Candidates and triples of each instance's plain sentence, scored against its gold pair;
    the model's fitted no-relation threshold decides, as for any caller of the extractor.
    `judge_relations` off: the instances' relations are not the model's (pair recall only)."""
    texts = plain_texts(instances)
    started = time.perf_counter()
    plan, encoded = extractor.prepare_texts([text for text, _, _ in texts])
    predictions = extractor.predict(encoded, 1, batch_size)
    triples = extractor.text_results(plan, predictions)
    wall = time.perf_counter() - started
    candidates: list[list[tuple[dict, dict]]] = [[] for _ in texts]
    for candidate in plan.candidates:
        candidates[candidate.document].append((candidate.head.to_dict(),
                                               candidate.tail.to_dict()))
    golds = [(head, tail, inst.relation if judge_relations else None)
             for (_, head, tail), inst in zip(texts, instances, strict=True)]
    return {**score_documents(golds, candidates, triples, no_relation),
            "candidate_pairs": plan.pairs, "wall_s": wall,
            "no_relation_threshold": extractor.no_relation_threshold}


def extract_speed(model: str, texts: Sequence[str], ray_address: str | None = None
                  ) -> dict[str, dict[str, Any]]:
    """{"ours": the corpus job over `texts`, "plain": one `extract_text` call per text}, each
    with documents/s and triples emitted (the same model folder, on the CPU, with as many
    torch threads: the job's one actor gets this process's thread count as its CPUs)."""
    import torch

    from tkre.config import ExtractJobConfig
    from tkre.extract.batch import run_extract
    from tkre.extract.extractor import Extractor

    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        started = time.perf_counter()
        summary = run_extract(ExtractJobConfig(root=model, input=str(corpus),
                                               output=str(Path(folder) / "out"),
                                               num_cpus=float(torch.get_num_threads()),
                                               ray_address=ray_address))
        job_s = time.perf_counter() - started
    ours = {"documents": len(texts), "wall_s": job_s, "documents_per_s": len(texts) / job_s,
            "triples": summary.get("triples")}
    started = time.perf_counter()
    extractor = Extractor.load(model, device="cpu")
    loaded = time.perf_counter()
    emitted = sum(len(extractor.extract_text(text)) for text in texts)
    done = time.perf_counter()
    plain = {"documents": len(texts), "wall_s": done - started, "load_s": loaded - started,
             "documents_per_s": len(texts) / (done - started), "triples": emitted}
    return {"ours": ours, "plain": plain}


# FewRel val_wiki sentences scored (a seeded sample of its 11,200)
FEWREL_SENTENCES = 500
# examples each FewRel relation is registered from before its sentences are scored
FEWREL_SHOTS = 5
# SemEval test sentences the speed comparison extracts from
SPEED_SENTENCES = 500


def model_root(cfg: Any) -> str:
    """The model every text unit measures: the first draw's (`quality.first_trained_root`)."""
    from tkre.bench.quality import first_trained_root

    return first_trained_root(cfg)


def test_set_quality(cfg: Any) -> dict[str, Any]:
    """The first draw's model on its own test set (SemEval's whole test set), as plain text."""
    from tkre.data.datasets import load_prepared
    from tkre.extract.extractor import Extractor

    root = model_root(cfg)
    splits = load_prepared(root)
    extractor = Extractor.from_root(root, "cuda" if cfg.use_gpu else "cpu")
    return {"root": root, "source": f"{cfg.data} test, markers removed",
            **measure_text_quality(extractor, splits.test, splits.no_relation)}


def registration_examples(relations: dict[str, list[Instance]], held_out: Sequence[Instance],
                          shots: int, seed: int = 42,
                          fits: Any = None) -> dict[str, list[Instance]]:
    """Per relation, `shots` seeded examples to register it from, none of them in `held_out`
    (the sentences it is then measured on) and, with `fits`, each one the model can encode."""
    import random

    rng = random.Random(seed)
    excluded = {id(inst) for inst in held_out}
    out = {}
    for name in sorted(relations):
        kept = [inst for inst in relations[name]
                if id(inst) not in excluded and (fits is None or fits(inst))]
        out[name] = rng.sample(kept, min(shots, len(kept)))
    return out


def fewrel_quality(cfg: Any, sentences: int = FEWREL_SENTENCES, seed: int = 42,
                   shots: int = FEWREL_SHOTS) -> dict[str, Any]:
    """Pair recall, end-to-end recall and triples per sentence on a seeded sample of FewRel
    sentences. FewRel's relations are not the model's, so each is registered at run time from
    `shots` examples outside the sample, as a caller of the service would (in a temporary
    registry: the root's own is untouched), and takes part beside the trained labels; a relation
    the model was trained on (a name among its labels) is not registered, its label answers."""
    import random

    from tkre.bench.openset import encodable, fewrel_relations, wire_example
    from tkre.extract.extractor import Extractor

    root = model_root(cfg)
    relations = fewrel_relations(cfg.fewrel_file)
    pool = [inst for rows in relations.values() for inst in rows]
    # a preset with a test subset (the quick one) takes as many FewRel sentences
    sentences = min(sentences, cfg.max_test or sentences, len(pool))
    drawn = random.Random(seed).sample(pool, sentences)
    base = Extractor.from_root(root, "cuda" if cfg.use_gpu else "cpu")
    new = {name: rows for name, rows in relations.items() if not base.is_trained(name)}
    examples = {name: rows for name, rows in
                registration_examples(new, drawn, shots, seed, encodable(base)).items() if rows}
    with tempfile.TemporaryDirectory() as registry:
        extractor = Extractor(base.model, base.tokenizer, base.meta, registry,
                              base.calibration, refresh_s=0, source=base.source,
                              types=base.types, no_relation_threshold=base.no_relation_threshold,
                              candidates=base.candidate_config, references=base.references)
        for name, rows in examples.items():
            extractor.register(name, [wire_example(inst) for inst in rows])
        measured = measure_text_quality(extractor, drawn, base.meta.no_relation)
    return {"root": root, "source": f"FewRel {Path(cfg.fewrel_file).name}, {len(drawn)} "
            f"sentences (seed {seed}), its {len(examples)} relations registered from {shots} "
            "examples each", "registered": {name: len(rows) for name, rows in examples.items()},
            "shots": shots, **measured}


def text_speed(cfg: Any, sentences: int = SPEED_SENTENCES) -> dict[str, Any]:
    """The corpus job against a plain loop on the first draw's model and test sentences."""
    from tkre import layout
    from tkre.data.datasets import load_prepared

    root = model_root(cfg)
    texts = [text for text, _, _ in plain_texts(load_prepared(root).test[:sentences])]
    return {"root": root, **extract_speed(layout.finetune_model(root), texts)}


def run_text(cfg: Any, guard: Any) -> dict[str, dict]:
    """The raw-text quality units (the quality data's test set, FewRel), each reused when
    already measured."""
    from tkre.bench.units import cached

    out = {}
    for name, measure in (("test", test_set_quality), ("fewrel", fewrel_quality)):
        result = guard(f"text-{name}", lambda n=name, m=measure: cached(
            cfg, f"text-{n}", lambda: m(cfg)))
        if result is not None:
            out[name] = result
    return out
