"""Knowledge generation, driver side: requests -> Ray Data backend -> ledger -> artifacts.

One pass generates the explanations (EDKG) and the first SCDG round together; each later SCDG
round asks only for what relations still lack, and the rounds stop at `max_rounds` (the retry
cap), so generation always ends. Acceptance is replayed from the ledger in a fixed order, so a
resumed run reaches the same artifacts as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import replace

import pyarrow as pa

from tkre import layout, storage
from tkre.config import GenerateConfig
from tkre.data import datasets, readers
from tkre.knowledge import prompts, throughput
from tkre.knowledge.backends import choose_backend, generate
from tkre.knowledge.filters import (
    Limits,
    check_candidate,
    check_explanation,
    explanation_spans,
)
from tkre.knowledge.ledger import Ledger
from tkre.schema import Instance, RelationSchema, derive_schemas
from tkre.train.cluster import init_ray


def _request_id(kind: str, *parts: object) -> str:
    digest = hashlib.sha256(json.dumps([kind, *parts], default=str).encode()).hexdigest()
    return f"{kind}-{digest[:20]}"


def _seed(request_id: str) -> int:
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16)


def _request(kind: str, messages: list[dict], max_tokens: int, structured: bool,
             cfg: GenerateConfig, relation: str, round_: int, index: int, source_id: str
             ) -> dict:
    phash = prompts.prompt_hash(messages)
    request_id = _request_id(kind, cfg.model, phash, relation, round_, index, source_id,
                             cfg.generation_seed)
    return {"request_id": request_id, "kind": kind, "relation": relation, "round": round_,
            "index": index, "source_id": source_id, "model": cfg.model, "prompt_hash": phash,
            "prompt": prompts.prompt_text(messages), "messages": json.dumps(messages),
            "max_tokens": max_tokens, "structured": structured,
            "seed": _seed(request_id) + cfg.generation_seed}


def explanation_requests(cfg: GenerateConfig, train: list[Instance], relations: list[str],
                         schemas: dict[str, RelationSchema]) -> list[dict]:
    by_relation: dict[str, list[Instance]] = defaultdict(list)
    for inst in train:
        by_relation[inst.relation].append(inst)
    requests = []
    for relation in relations:
        for index, inst in enumerate(by_relation[relation][:cfg.explanations_per_relation]):
            messages = prompts.edkg_messages(inst, schemas[relation].description)
            requests.append(_request("edkg", messages, cfg.max_tokens_explanation, False, cfg,
                                     relation, 0, index, inst.id))
    return requests


def synthetic_requests(cfg: GenerateConfig, train: list[Instance], schemas: dict,
                       missing: dict[str, int], round_: int) -> list[dict]:
    """`oversample` requests per missing sentence. The demonstrations (and their order) are
    drawn once per relation and round, so a relation's requests of a round send the same
    prompt: engines compute it once (prefix caching) and sampling makes the answers differ."""
    requests = []
    for relation, count in sorted(missing.items()):
        pool = [inst for inst in train if inst.relation == relation]
        rng = random.Random(f"{cfg.generation_seed}-{relation}-{round_}")
        demos = rng.sample(pool, min(cfg.demonstrations, len(pool)))
        messages = prompts.scdg_messages(schemas[relation], demos)
        for index in range(math.ceil(count * cfg.oversample)):
            requests.append(_request("scdg", messages, cfg.max_tokens_sample, cfg.structured,
                                     cfg, relation, round_, index, ""))
    return requests


def run_pass(cfg: GenerateConfig, ledger: Ledger, requests: list[dict], passes: list[dict]
             ) -> None:
    """Generate what the ledger lacks; each finished block goes to the ledger at once. The pass's
    sizes and wall time go to `passes` (throughput.new_pass)."""
    todo = [req for req in requests if req["request_id"] not in ledger]
    skipped = len(requests) - len(todo)
    if not todo:
        return
    sent = [{k: req[k] for k in ("request_id", "messages", "max_tokens", "structured", "seed")}
            for req in todo]
    record = throughput.new_pass(choose_backend(cfg, sent))
    print(f"[generate] {len(todo)} requests to the {record['backend']} backend"
          + (f" ({skipped} already in the ledger)" if skipped else ""), flush=True)
    by_id = {req["request_id"]: req for req in todo}
    prompts_by_id = {req["request_id"]: req["messages"] for req in todo}
    for block in generate(cfg, sent):
        ledger.append([{**by_id[row["request_id"]], **row} for row in block])
        throughput.count(record, block, prompts_by_id)
        print(f"[generate] {record['rows']}/{len(todo)} rows, {record['generated_tokens']} "
              f"tokens, {time.perf_counter() - record['started']:.0f} s", flush=True)
    throughput.finish(record)
    passes.append(record)


def accepted_synthetic(ledger: Ledger, cfg: GenerateConfig, train: list[Instance],
                       schemas: dict[str, RelationSchema]) -> tuple[dict, dict]:
    """Replay SCDG rows in order: accepted Instances per relation and rejection counts."""
    limits = Limits(min_words=cfg.min_words, max_words=cfg.max_words)
    demos = defaultdict(list)
    for inst in train:
        demos[inst.relation].append(inst)
    seen: set[str] = set()
    accepted: dict[str, list[Instance]] = defaultdict(list)
    verdicts: dict[str, Counter] = defaultdict(Counter)
    for row in ledger.of_kind("scdg"):
        relation = row["relation"]
        if relation not in schemas:
            continue
        inst, reason = check_candidate(row["generated_text"], schemas[relation],
                                       demos[relation], row["prompt"], seen, limits,
                                       request_id=row["request_id"])
        verdicts[relation]["requested"] += 1
        if inst is None:
            verdicts[relation][reason] += 1
        elif len(accepted[relation]) < cfg.synthetic_per_relation:
            provenance = {"model": row["model"], "prompt_hash": row["prompt_hash"],
                          "request_id": row["request_id"], "round": str(row["round"])}
            accepted[relation].append(replace(inst, provenance=provenance))
        else:
            verdicts[relation]["surplus"] += 1
    return accepted, verdicts


EXPLANATION_SCHEMA = pa.schema([
    ("id", pa.string()), ("instance_id", pa.string()), ("relation", pa.string()),
    ("text", pa.string()), ("head", pa.string()), ("tail", pa.string()),
    ("head_start", pa.int32()), ("head_end", pa.int32()), ("tail_start", pa.int32()),
    ("tail_end", pa.int32()), ("model", pa.string()), ("prompt_hash", pa.string()),
])


def accepted_explanations(ledger: Ledger, train: list[Instance]) -> tuple[list[dict], Counter]:
    """EDKG rows that mention both entities, with the entities' character offsets in the text
    (on token boundaries, as the explanation's own words: `filters.explanation_spans`)."""
    by_id = {inst.id: inst for inst in train}
    rows, verdicts = [], Counter()
    for row in ledger.of_kind("edkg"):
        inst = by_id.get(row["source_id"])
        if inst is None:  # a ledger row of another K-shot draw
            continue
        verdicts["requested"] += 1
        text, reason = check_explanation(row["generated_text"], inst)
        if text is None:
            verdicts[reason] += 1
            continue
        spans = explanation_spans(text, inst)
        if spans is None:  # both entities are there, but only overlapping each other
            verdicts["entity_offsets_not_found"] += 1
            continue
        (head_start, head_end), (tail_start, tail_end) = spans
        verdicts["accepted"] += 1
        rows.append({"id": row["request_id"], "instance_id": inst.id, "relation": inst.relation,
                     "text": text, "head": text[head_start:head_end],
                     "tail": text[tail_start:tail_end], "head_start": head_start,
                     "head_end": head_end, "tail_start": tail_start, "tail_end": tail_end,
                     "model": row["model"], "prompt_hash": row["prompt_hash"]})
    return rows, verdicts


def missing_counts(accepted: dict, relations: list[str], target: int) -> dict[str, int]:
    return {r: target - len(accepted.get(r, [])) for r in relations
            if len(accepted.get(r, [])) < target}


def run_generate(cfg: GenerateConfig, splits: datasets.Splits | None = None) -> dict:
    """Write the knowledge artifacts: explanations, synthetic sentences and stats (resumable).
    `splits`: the prepared data when the caller (the pipeline) already has it."""
    started = time.perf_counter()
    splits = splits or datasets.prepare(cfg.data, cfg.root)
    schemas = derive_schemas(splits.train, splits.descriptions, cfg.relation_schemas)
    relations = [r for r in schemas if cfg.include_no_relation or r != splits.no_relation]
    init_ray(cfg.ray_address)
    ledger, passes = Ledger(cfg.root), []
    first = explanation_requests(cfg, splits.train, relations, schemas)
    missing = {r: cfg.synthetic_per_relation for r in relations if cfg.synthetic_per_relation}
    for round_ in range(cfg.max_rounds):
        requests = synthetic_requests(cfg, splits.train, schemas, missing, round_)
        run_pass(cfg, ledger, (first if round_ == 0 else []) + requests, passes)
        accepted, verdicts = accepted_synthetic(ledger, cfg, splits.train, schemas)
        missing = missing_counts(accepted, relations, cfg.synthetic_per_relation)
        if cfg.synthetic_per_relation:  # SCDG off: there are no rounds to report
            print(f"[generate] after round {round_ + 1}/{cfg.max_rounds}: "
                  f"{sum(len(v) for v in accepted.values())} synthetic sentences accepted"
                  + (f"; still missing {missing}" if missing else ""), flush=True)
        if not missing:
            break
    explanations, explanation_verdicts = accepted_explanations(ledger, splits.train)
    synthetic = [inst for relation in relations for inst in accepted.get(relation, [])]
    storage.write_table(layout.explanations(cfg.root),
                        pa.Table.from_pylist(explanations, schema=EXPLANATION_SCHEMA))
    fs, path = storage.arrow_filesystem(layout.synthetic(cfg.root))
    readers.write_parquet(synthetic, path, filesystem=fs)
    stats = build_stats(cfg, relations, accepted, verdicts, explanation_verdicts, passes,
                        time.perf_counter() - started)
    storage.write_json(layout.knowledge_stats(cfg.root), stats)  # last: the stage is complete
    print(f"[generate] {len(explanations)} explanations, {len(synthetic)} synthetic sentences "
          f"in {layout.knowledge_dir(cfg.root)}; "
          f"{stats['generation']['tokens_per_s']:.1f} generated tokens/s"
          + (f", {stats['generation']['fraction_of_limit']:.2f} of the FLOP limit"
             if stats["generation"]["fraction_of_limit"] is not None else ""))
    return stats


def build_stats(cfg: GenerateConfig, relations: list[str], accepted: dict, verdicts: dict,
                explanation_verdicts: Counter, passes: list[dict], wall_s: float) -> dict:
    per_relation = {}
    for relation in relations:
        counts = dict(verdicts.get(relation, Counter()))
        requested = counts.pop("requested", 0)
        per_relation[relation] = {"requested": requested,
                                  "accepted": len(accepted.get(relation, [])),
                                  "surplus": counts.pop("surplus", 0),
                                  "rejected": dict(sorted(counts.items()))}
    rejected_total = Counter()
    for entry in per_relation.values():
        rejected_total.update(entry["rejected"])
    explained = dict(explanation_verdicts)
    return {
        "relations": per_relation,
        "explanations": {"requested": explained.pop("requested", 0),
                         "accepted": explained.pop("accepted", 0),
                         "rejected": dict(sorted(explained.items()))},
        "totals": {"requested": sum(e["requested"] for e in per_relation.values()),
                   "accepted": sum(e["accepted"] for e in per_relation.values()),
                   "rejected": dict(sorted(rejected_total.items()))},
        "generation": throughput.generation_stats(cfg, passes, choose_backend(cfg)),
        "wall_s": round(wall_s, 2),
    }
