"""The run-root contract: every artifact path, every "is this stage complete", every start encoder.

A run lives under one root, a local folder or `s3://bucket/prefix`:

    ROOT/data/{train,dev,test}.parquet, meta.json        the K-shot draw (meta.json last)
    ROOT/knowledge/explanations.parquet                  EDKG rows with entity offsets
    ROOT/knowledge/synthetic.parquet                     accepted SCDG Instances
    ROOT/knowledge/stats.json                            counts; written last: complete
    ROOT/knowledge/ledger/                               every generated row (resume)
    ROOT/pretrain/{mslm,scl}/                            Ray Train runs (checkpoints)
    ROOT/pretrain/{mslm,scl}/model/, metrics.json        exported encoder; complete
    ROOT/finetune/                                       Ray Train run (checkpoints)
    ROOT/finetune/model/, metrics.json                   the classifier; complete
    ROOT/finetune/model/text_extraction.json             its no-relation threshold (dev set)
                                                         and relation types, for raw text
    ROOT/eval/metrics.json, predictions.parquet, confusion.png   test-set scores
    ROOT/extract/relations/<name>.json                   run-time relations
    ROOT/extract/calibration.json, fewshot_metrics.json  prototype calibration
    ROOT/pipeline.json                                   per-stage wall time and memory
    ROOT/bench/                                          the benchmark's units and report
    ROOT/writer.lock                                     who writes the root now (`writing`)

No other module spells one of these paths: stages meet only through the functions below. Each
"complete" check looks at the file its stage writes last, so an interrupted stage is never
taken for a finished one.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from tkre import storage
from tkre.resources import BUNDLED_ENCODER, resolve_model
from tkre.schema import DataError

SPLITS = ("train", "dev", "test")
PRETRAIN_STAGES = ("mslm", "scl")
# the file a trained classifier folder always holds (written by finetune.model.save_classifier)
MODEL_META_FILE = "tkre_model.json"
# the K-shot train + dev sentences' pair embeddings in a classifier folder: what run-time
# relations are held against (written at export; tkre.extract.references)
MODEL_REFERENCE_FILE = "reference.safetensors"
TEXT_EXTRACTION_FILE = "text_extraction.json"
# which job writes each stage's artifacts (named in the error when they are missing)
WRITERS = {"data": "jobs/finetune.py or jobs/generate.py", "knowledge": "jobs/generate.py",
           "mslm": "jobs/pretrain.py --stage mslm", "scl": "jobs/pretrain.py --stage scl",
           "finetune": "jobs/finetune.py", "evaluate": "jobs/evaluate.py"}


# --- one writer per root -----------------------------------------------------------------

def lock_file(root: str) -> str:
    """The lock every job writing ROOT holds (a flock'd file; a lease object on S3)."""
    return storage.join(root, "writer.lock")


def writing(root: str) -> AbstractContextManager[None]:
    """Hold ROOT's writer lock for a with-block: re-entrant in this process, a one-line
    StorageError at once when another process holds it or the root cannot be written."""
    try:
        storage.join(root)
    except ValueError as err:  # "s3://" without a bucket
        raise storage.StorageError(f"root {root!r}: {err}") from None
    return storage.exclusive(lock_file(root), name=root)


# --- data --------------------------------------------------------------------------------

def data_dir(root: str) -> str:
    return storage.join(root, "data")


def data_split(root: str, name: str) -> str:
    return storage.join(root, "data", f"{name}.parquet")


def data_meta(root: str) -> str:
    return storage.join(root, "data", "meta.json")


# --- knowledge ---------------------------------------------------------------------------

def knowledge_dir(root: str) -> str:
    return storage.join(root, "knowledge")


def explanations(root: str) -> str:
    return storage.join(root, "knowledge", "explanations.parquet")


def synthetic(root: str) -> str:
    return storage.join(root, "knowledge", "synthetic.parquet")


def knowledge_stats(root: str) -> str:
    return storage.join(root, "knowledge", "stats.json")


def ledger_dir(root: str) -> str:
    return storage.join(root, "knowledge", "ledger")


# knowledge artifacts in the order they are written: stats.json, last, marks completeness
def knowledge_files(root: str) -> tuple[str, ...]:
    return explanations(root), synthetic(root), knowledge_stats(root)


# --- pre-training ------------------------------------------------------------------------

def pretrain_stage_dir(root: str, stage: str) -> str:
    """A pre-training stage's Ray Train run folder (checkpoints)."""
    return storage.join(root, "pretrain", stage)


def pretrain_model(root: str, stage: str) -> str:
    return storage.join(root, "pretrain", stage, "model")


def pretrain_metrics(root: str, stage: str) -> str:
    return storage.join(root, "pretrain", stage, "metrics.json")


def failure_marker(run_dir: str) -> str:
    """Fault injection's record that a run already failed once (tests only)."""
    return storage.join(run_dir, "injected_failure.json")


# --- fine-tuning and evaluation ----------------------------------------------------------

def finetune_dir(root: str) -> str:
    """Ray Train's run folder of fine-tuning (its checkpoints)."""
    return storage.join(root, "finetune")


def finetune_model(root: str) -> str:
    return storage.join(root, "finetune", "model")


def finetune_metrics(root: str) -> str:
    return storage.join(root, "finetune", "metrics.json")


def eval_metrics(root: str) -> str:
    return storage.join(root, "eval", "metrics.json")


def eval_predictions(root: str) -> str:
    """One row per test sentence: id, gold and predicted label (paired comparisons)."""
    return storage.join(root, "eval", "predictions.parquet")


def confusion_plot(root: str) -> str:
    return storage.join(root, "eval", "confusion.png")


# --- extraction --------------------------------------------------------------------------

def text_extraction(model_dir: str) -> str:
    """A trained model folder's raw-text settings (no-relation threshold fitted on the dev set,
    relation types), written into the folder (finetune_model(root)) at evaluate time by
    tkre.extract.thresholds, so a re-exported model never carries a stale one."""
    return storage.join(model_dir, TEXT_EXTRACTION_FILE)


def relations_dir(root: str) -> str:
    return storage.join(root, "extract", "relations")


def calibration(root: str) -> str:
    return storage.join(root, "extract", "calibration.json")


def fewshot_metrics(root: str) -> str:
    return storage.join(root, "extract", "fewshot_metrics.json")


def pipeline_report(root: str) -> str:
    return storage.join(root, "pipeline.json")


# --- the benchmark -----------------------------------------------------------------------

def bench_unit(root: str, name: str) -> str:
    return storage.join(root, "bench", "units", f"{name}.json")


def bench_report(root: str, name: str) -> str:
    """report.json, report.md and the plots."""
    return storage.join(root, "bench", name)


def bench_run(root: str, *parts: str) -> str:
    """A run root of its own inside the bench (a draw, a speed measurement)."""
    return storage.join(root, "bench", *parts)


# --- is a stage complete? ----------------------------------------------------------------

def data_done(root: str) -> bool:
    return storage.exists(data_meta(root))


def knowledge_done(root: str) -> bool:
    return storage.exists(knowledge_stats(root))


def pretrain_done(root: str, stage: str) -> bool:
    return (storage.exists(storage.join(pretrain_model(root, stage), "config.json"))
            and storage.exists(pretrain_metrics(root, stage)))


def finetune_done(root: str) -> bool:
    return (storage.exists(finetune_metrics(root))
            and storage.exists(storage.join(finetune_model(root), MODEL_META_FILE)))


def evaluate_done(root: str) -> bool:
    return storage.exists(eval_metrics(root))


STAGE_DONE = {"knowledge": knowledge_done,
              "mslm": lambda root: pretrain_done(root, "mslm"),
              "scl": lambda root: pretrain_done(root, "scl"),
              "finetune": finetune_done, "evaluate": evaluate_done}


def require(root: str, stage: str, needed_by: str) -> None:
    """DataError naming the missing artifact and the job that writes it."""
    done = data_done(root) if stage == "data" else STAGE_DONE[stage](root)
    if not done:
        raise DataError(f"{needed_by} needs the {stage} stage's artifacts, and {root} has "
                        f"none: run {WRITERS[stage]} on this root first (or jobs/pipeline.py, "
                        "which runs every stage in order)", field="root")


# --- which encoder a stage starts from ---------------------------------------------------

def pretrain_start(root: str, stage: str, encoder: str, scl_init: str = "mslm") -> str:
    """Stage 1 starts from `encoder`; stage 2 from stage 1's export (or `encoder`)."""
    if stage == "mslm" or scl_init == "encoder":
        return resolve_model(encoder)
    require(root, "mslm", "stage scl")
    return pretrain_model(root, "mslm")


def finetune_start(root: str, encoder: str) -> str:
    """'auto': the newest pre-trained encoder under ROOT (stage 2, else stage 1), else the
    bundled one; anything else is resolved as a model name or folder."""
    if encoder != "auto":
        return resolve_model(encoder)
    for stage in reversed(PRETRAIN_STAGES):
        if pretrain_done(root, stage):
            return pretrain_model(root, stage)
    return resolve_model(BUNDLED_ENCODER)
