"""Batch extraction over a corpus, the library side of jobs/extract.py: the input's blocks
(`tkre.extract.corpus`) go through Ray Data to an actor pool, one `Extractor` per actor, and
each block's triples are written as soon as it is done.

OUTPUT (a folder or an s3:// prefix):

    _job.json                   the settings, the input files (size, modification time), the
                                model's version and the plan of blocks
    triples/<block>.parquet     one row per triple: doc_id, source, row, head_text,
                                head_start, head_end, head_type, tail_... (the same four),
                                relation, score, sentence (character offsets into the text)
    documents/<block>.parquet   one row per document of the block: doc_id, source, row,
                                n_triples (documents with no triple too)
    _summary.json               documents, triples, wall time, documents/s (at the end)

A block's two files are written whole (temp file and rename; one PUT on S3), triples first:
a block is done when its documents file exists. Names depend only on the block (its file and
first row), so a run that is killed, then started again, lists documents/, extracts only the
blocks missing there, and rewrites (never duplicates) a triples file left without its
documents file. A re-run must be the same job: another input, text field, block size, model,
thresholds, or an input file changed since, is a one-line error naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from tkre import layout, storage
from tkre.config import ConfigError, ExtractJobConfig
from tkre.extract import corpus
from tkre.extract.corpus import Block
from tkre.schema import DataError
from tkre.train.cluster import init_ray, worker_threads

JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
LOCK_FILE = "_writer.lock"
TRIPLES, DOCUMENTS = "triples", "documents"
# what must match between a run and the output it resumes
SPEC_KEYS = ("input", "text_field", "block_size", "root", "model_version", "thresholds")
PRINT_EVERY_S = 5.0


def triple_schema() -> Any:
    import pyarrow as pa

    arguments = [(f"{side}_{name}", kind) for side in ("head", "tail")
                 for name, kind in (("text", pa.string()), ("start", pa.int64()),
                                    ("end", pa.int64()), ("type", pa.string()))]
    return pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("row", pa.int64()),
                      *arguments, ("relation", pa.string()), ("score", pa.float64()),
                      ("sentence", pa.int64())])


def document_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("row", pa.int64()),
                      ("n_triples", pa.int64())])


# --- the model -------------------------------------------------------------------------------

def model_dir(root: str) -> str:
    """The model folder `Extractor.load(root)` loads: root itself, or ROOT/finetune/model."""
    if storage.exists(storage.join(root, layout.MODEL_META_FILE)):
        return root
    folder = layout.finetune_model(root)
    if not storage.exists(storage.join(folder, layout.MODEL_META_FILE)):
        raise DataError(f"{root} holds no trained model (neither {layout.MODEL_META_FILE} nor "
                        "finetune/model/ in it): run jobs/finetune.py on it first (or "
                        "jobs/pipeline.py)", field="root")
    return folder


def model_version(folder: str) -> str:
    """A hash of the model folder's files' versions (mtime and size, or ETags): a retrained or
    re-evaluated model gets another. A writer lock there (--root a model folder) is no part
    of the model."""
    lock = PurePosixPath(layout.lock_file(folder)).name
    versions = sorted((name, list(v) if isinstance(v, tuple) else v)
                      for name, v in storage.versions(folder).items() if name != lock)
    return hashlib.sha256(json.dumps(versions).encode()).hexdigest()[:16]


def known_relations(root: str, folder: str) -> list[str]:
    """The model's trained labels and, for a run root, its registered relations."""
    labels = list(storage.read_json(storage.join(folder, layout.MODEL_META_FILE))["labels"])
    if folder == root:
        return labels
    registered = storage.versions(layout.relations_dir(root))
    return labels + [name.removesuffix(".json") for name in registered
                     if name.endswith(".json") and not name.startswith(".")]


# --- the job file: plan once, resume against it ------------------------------------------------

def job_spec(cfg: ExtractJobConfig, version: str, thresholds: dict[str, float] | None) -> dict:
    return {"input": cfg.input, "text_field": cfg.text_field, "block_size": cfg.block_size,
            "root": cfg.root, "model_version": version, "thresholds": thresholds}


def load_or_plan(output: str, spec: dict, files: list[corpus.InputFile]) -> list[Block]:
    """The blocks of this job: from OUTPUT/_job.json when a run started there already (it must
    be the same job), else planned now (every document read and checked) and stored."""
    uri = storage.join(output, JOB_FILE)
    if storage.exists(uri):
        stored = storage.read_json(uri)
        check_same_job(output, stored, spec, files)
        return [Block(**block) for block in stored["blocks"]]
    present = [name for name in storage.list_files(output) if name != LOCK_FILE]
    if present:
        raise ConfigError(f"output: {output} holds files but no {JOB_FILE} ({present[0]}, ...): "
                          "give a new or empty folder")
    total = sum(f.size for f in files)
    print(f"[extract] planning: reading {len(files)} file(s), {total / 1e6:.1f} MB", flush=True)
    blocks = corpus.plan(files, spec["text_field"], spec["block_size"])
    if not blocks:
        raise DataError("holds no documents (only blank lines or empty files)", file=spec["input"])
    storage.write_json(uri, {**spec, "files": [asdict(f) for f in files],
                             "blocks": [b.to_dict() for b in blocks]})
    return blocks


def check_same_job(output: str, stored: dict, spec: dict, files: list[corpus.InputFile]
                   ) -> None:
    """ConfigError naming the first setting, or input file, that differs from the run that
    started OUTPUT."""
    remedy = "use another --output, or the same settings and input"
    for key in SPEC_KEYS:
        if stored.get(key) == spec[key]:
            continue
        if key == "model_version":
            raise ConfigError(f"root: the model in {spec['root']} changed since {output} was "
                              f"started: {remedy}")
        raise ConfigError(f"{key}: {output} was started with {key} {stored.get(key)!r}, not "
                          f"{spec[key]!r}: {remedy}")
    before = {f["path"]: (f["size"], f["mtime_ns"]) for f in stored["files"]}
    now = {f.path: (f.size, f.mtime_ns) for f in files}
    for path in sorted(before.keys() | now.keys()):
        if before.get(path) != now.get(path):
            change = ("is new" if path not in before else "is gone" if path not in now
                      else "changed")
            raise ConfigError(f"input: {path} {change} since {output} was started: {remedy}")


def done_blocks(output: str) -> set[str]:
    """Names of the blocks whose documents file exists. A killed local run's temp files are
    removed (the output's lock says no other run writes here)."""
    done = set()
    for sub in (DOCUMENTS, TRIPLES):
        for name in storage.list_files(storage.join(output, sub)):
            if name.startswith(".") and name.endswith(".tmp"):
                if not storage.is_s3(output):
                    storage.delete(storage.join(output, sub, name))
            elif sub == DOCUMENTS and name.endswith(".parquet"):
                done.add(name.removesuffix(".parquet"))
    return done


# --- one block -----------------------------------------------------------------------------

def flatten(doc_id: str, source: str, row: int, triple: dict) -> dict:
    out = {"doc_id": doc_id, "source": source, "row": row}
    for side in ("head", "tail"):
        for key in ("text", "start", "end", "type"):
            out[f"{side}_{key}"] = triple[side][key]
    return out | {"relation": triple["relation"], "score": float(triple["score"]),
                  "sentence": triple["sentence"]}


def extract_block(extractor: Any, block: Block, text_field: str,
                  thresholds: dict[str, float] | None, batch_size: int
                  ) -> tuple[list[dict], list[dict]]:
    """(triple rows, document rows) of one block; every document gets a document row."""
    documents = corpus.read_block(block, text_field)
    found = extractor.extract_texts([text for _, text in documents], thresholds, batch_size)
    triples, rows = [], []
    for (row, _), doc_triples in zip(documents, found, strict=True):
        doc_id = block.doc_id(row)
        rows.append({"doc_id": doc_id, "source": block.path, "row": row,
                     "n_triples": len(doc_triples)})
        triples += [flatten(doc_id, block.path, row, t) for t in doc_triples]
    return triples, rows


def write_block(output: str, name: str, triples: list[dict], documents: list[dict]) -> None:
    """The triples file, then the documents file that marks the block done."""
    import pyarrow as pa

    storage.write_table(storage.join(output, TRIPLES, f"{name}.parquet"),
                        pa.Table.from_pylist(triples, schema=triple_schema()))
    storage.write_table(storage.join(output, DOCUMENTS, f"{name}.parquet"),
                        pa.Table.from_pylist(documents, schema=document_schema()))


class BlockExtractor:
    """A Ray Data actor: one Extractor, loaded once; each call extracts the blocks of its batch
    and writes their files; returns one summary row per block."""

    def __init__(self, root: str, output: str, text_field: str,
                 thresholds: dict[str, float] | None, batch_size: int, device: str):
        from tkre.extract.extractor import Extractor

        worker_threads()  # torch threads: the CPUs this actor reserved
        self.extractor = Extractor.load(root, device=device)
        self.output, self.text_field = output, text_field
        self.thresholds, self.batch_size = thresholds, batch_size

    def __call__(self, batch: Any) -> dict[str, list]:
        out: dict[str, list] = {"name": [], "documents": [], "triples": [], "seconds": []}
        for row in batch.to_pylist():
            started = time.perf_counter()
            block = Block(**row)
            triples, documents = extract_block(self.extractor, block, self.text_field,
                                               self.thresholds, self.batch_size)
            write_block(self.output, block.name, triples, documents)
            for key, value in (("name", block.name), ("documents", len(documents)),
                               ("triples", len(triples)),
                               ("seconds", time.perf_counter() - started)):
                out[key].append(value)
        return out


# --- the job -------------------------------------------------------------------------------

@dataclass
class Progress:
    """Documents and triples of this run's finished blocks; a line at most every
    PRINT_EVERY_S seconds, and at the last block."""

    blocks: int
    documents: int
    started: float = field(default_factory=time.perf_counter)
    done_blocks: int = 0
    done_documents: int = 0
    triples: int = 0
    printed: float = float("-inf")

    def add(self, row: dict) -> None:
        self.done_blocks += 1
        self.done_documents += int(row["documents"])
        self.triples += int(row["triples"])
        now = time.perf_counter()
        if now - self.printed >= PRINT_EVERY_S or self.done_blocks == self.blocks:
            self.printed = now
            print(f"[extract] {self.done_blocks}/{self.blocks} blocks, "
                  f"{self.done_documents}/{self.documents} documents, {self.triples} triples, "
                  f"{self.rate:.1f} documents/s", flush=True)

    @property
    def rate(self) -> float:
        return self.done_documents / max(time.perf_counter() - self.started, 1e-9)


def run_blocks(cfg: ExtractJobConfig, todo: list[Block], thresholds: dict[str, float] | None,
               progress: Progress) -> None:
    """The blocks through an actor pool (min_actors..max_actors), one block per call."""
    import ray

    init_ray(cfg.ray_address)
    local = not (cfg.ray_address or os.environ.get("RAY_ADDRESS"))
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if local and cfg.num_gpus and gpus < cfg.num_gpus * cfg.min_actors:
        raise ConfigError(f"num_gpus: {cfg.min_actors} actor(s) x {cfg.num_gpus} GPU need "
                          f"{cfg.num_gpus * cfg.min_actors:g}, this machine has {gpus:g}")
    ray.data.DataContext.get_current().enable_progress_bars = False  # Progress prints instead
    # one block of the dataset per block of the corpus: each goes to whichever actor is free
    dataset = ray.data.from_items([b.to_dict() for b in todo], override_num_blocks=len(todo))
    dataset = dataset.map_batches(
        BlockExtractor,
        fn_constructor_kwargs={"root": cfg.root, "output": cfg.output,
                               "text_field": cfg.text_field, "thresholds": thresholds,
                               "batch_size": cfg.batch_size,
                               "device": "cuda" if cfg.num_gpus else "cpu"},
        batch_size=1, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors),
        num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus or None)
    progress.started = time.perf_counter()  # documents/s from here: actors start, then work
    for row in dataset.iter_rows():
        progress.add(row)


def written_totals(output: str) -> tuple[int, int]:
    """(documents, triples) recorded under OUTPUT/documents, read one column at a time."""
    import pyarrow.dataset as pads

    fs, path = storage.arrow_filesystem(storage.join(output, DOCUMENTS))
    documents = triples = 0
    for batch in pads.dataset(path, filesystem=fs, format="parquet").to_batches(
            columns=["n_triples"]):
        documents += batch.num_rows
        triples += sum(batch.column(0).to_pylist())
    return documents, triples


def run_extract(cfg: ExtractJobConfig) -> dict:
    """Extract every document of the input not yet done under OUTPUT; write the summary."""
    started = time.perf_counter()
    with storage.exclusive(storage.join(cfg.output, LOCK_FILE), name=cfg.output):
        folder = model_dir(cfg.root)
        thresholds = cfg.threshold_map()
        if thresholds is not None:
            from tkre.extract.triples import check_thresholds

            check_thresholds(thresholds, known_relations(cfg.root, folder))
        files = corpus.list_inputs(cfg.input)
        spec = job_spec(cfg, model_version(folder), thresholds)
        blocks = load_or_plan(cfg.output, spec, files)
        done = done_blocks(cfg.output)
        todo = [b for b in blocks if b.name not in done]
        total = sum(b.documents for b in blocks)
        progress = Progress(len(todo), sum(b.documents for b in todo))
        print(f"[extract] {total} documents in {len(blocks)} blocks; {len(blocks) - len(todo)} "
              f"block(s) done already, {len(todo)} to extract", flush=True)
        if todo:
            run_blocks(cfg, todo, thresholds, progress)
        documents, triples = written_totals(cfg.output)
        wall_s = time.perf_counter() - started
        summary = {"input": cfg.input, "output": cfg.output, "root": cfg.root,
                   "documents": total, "documents_written": documents, "triples": triples,
                   "blocks": len(blocks), "complete": documents == total,
                   "this_run": {"blocks": len(todo), "documents": progress.done_documents,
                                "triples": progress.triples, "wall_s": round(wall_s, 2),
                                "documents_per_s": round(progress.done_documents / wall_s, 2)}}
        storage.write_json(storage.join(cfg.output, SUMMARY_FILE), summary)
    print(f"[extract] {documents}/{total} documents, {triples} triples in {cfg.output}; this "
          f"run: {progress.done_documents} documents in {wall_s:.1f} s, "
          f"{summary['this_run']['documents_per_s']:.1f} documents/s", flush=True)
    return summary
