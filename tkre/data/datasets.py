"""From a DataConfig to the run's data artifact: ROOT/data/{train,dev,test}.parquet + meta.json.

train = K per label from the official train set; dev = K per label from the official dev set, or
(when the data set has none) from the train set minus the K-shot train; test = the full official
test set. FewRel has no splits: per relation K train, K dev and the rest test.

The artifact is keyed by what it was drawn from: meta.json holds the data config and the sha256
of every input file. A run with another config is refused (one root, one draw); a run whose
input files changed reads them again and re-draws. With a `Window` (the classifier's max_length)
records whose two entities lie too far apart to be encoded are dropped, with a warning per file
naming the first records; a relation left with no training example is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Protocol

from tkre import layout, storage
from tkre.config import DataConfig
from tkre.data import readers
from tkre.data.sampling import (
    label_counts,
    sample_k_shot,
    seeded_subset,
    split_per_relation,
)
from tkre.schema import DataError, Instance

SPLITS = layout.SPLITS
_NO_RELATION = {"semeval": "Other"}
PID2NAME = "pid2name.json"
# the stages built from each split: they are stale once it changes
_BUILT_FROM = {"train": ("knowledge", "mslm", "scl", "finetune", "evaluate"),
               "dev": ("finetune", "evaluate"), "test": ("evaluate",)}


class Window(Protocol):
    """What the model can encode (tkre.finetune.markers.EncoderWindow)."""

    def fits(self, instances: Sequence[Instance]) -> list[bool]: ...

    def describe(self) -> str: ...


@dataclass
class Splits:
    train: list[Instance]
    dev: list[Instance]
    test: list[Instance]
    labels: list[str]
    no_relation: str
    has_types: bool
    descriptions: dict[str, str] = field(default_factory=dict)
    data_config: dict = field(default_factory=dict)

    def meta(self) -> dict:
        return {"labels": self.labels, "no_relation": self.no_relation,
                "has_types": self.has_types, "descriptions": self.descriptions,
                "data_config": self.data_config,
                "sizes": {name: len(getattr(self, name)) for name in SPLITS}}


def demo_dir() -> Path:
    return Path(str(resources.files("tkre.data") / "demo"))


def _existing(path: Path) -> Path:
    if not path.exists():
        raise DataError("file not found", file=str(path))
    return path


def _find_split(folder: Path, name: str, required: bool) -> Path | None:
    for suffix in (".jsonl", ".parquet"):
        if (folder / f"{name}{suffix}").exists():
            return folder / f"{name}{suffix}"
    if required:
        raise DataError(f"no {name}.jsonl or {name}.parquet in the folder", file=str(folder))
    return None


def input_files(cfg: DataConfig) -> dict[str, Path]:
    """Every file the data set is read from: split name -> file (FewRel: file name -> file)."""
    folder = demo_dir() if cfg.data == "demo" else Path(cfg.data_dir or "")
    if cfg.data != "demo" and not folder.is_dir():
        raise DataError("data_dir is not a folder", file=str(folder), field="data_dir")
    if cfg.data == "semeval":
        return {"train": _existing(folder / "TRAIN_FILE.TXT"),
                "test": _existing(folder / "TEST_FILE_FULL.TXT")}
    if cfg.data == "tacred":
        return {name: _existing(folder / f"{name}.json") for name in SPLITS}
    if cfg.data == "fewrel":
        files = {p.name: p for p in sorted(folder.glob("*.json"))}
        if not set(files) - {PID2NAME}:
            raise DataError("no FewRel JSON files in the folder", file=str(folder))
        return files
    # demo and jsonl share our own format
    files = {"train": _find_split(folder, "train", required=True),
             "dev": _find_split(folder, "dev", required=False),
             "test": _find_split(folder, "test", required=True)}
    return {name: path for name, path in files.items() if path is not None}


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_official(cfg: DataConfig, files: dict[str, Path]
                   ) -> tuple[list, list | None, list, dict[str, str]]:
    """(train pool, dev pool or None, test, relation descriptions) as the data set ships them;
    FewRel: (every instance, None, [], descriptions), split per relation by the caller."""
    if cfg.data == "semeval":
        train, test = readers.read_semeval(files["train"]), readers.read_semeval(files["test"])
        described = {label: readers.semeval_description(label)
                     for label in {inst.relation for inst in train + test}}
        return train, None, test, {label: text for label, text in described.items() if text}
    if cfg.data == "tacred":
        return tuple(readers.read_tacred(files[name]) for name in SPLITS) + ({},)
    if cfg.data == "fewrel":
        return _read_fewrel(files)
    return (readers.read_instances(files["train"]),
            readers.read_instances(files["dev"]) if "dev" in files else None,
            readers.read_instances(files["test"]), {})


def _read_fewrel(files: dict[str, Path]) -> tuple[list, None, list, dict[str, str]]:
    """Without pid2name.json the relation ids are the names: FewRel's train/val files are
    often copied without it, and the ids are valid labels (it only adds descriptions)."""
    names_file = files.get(PID2NAME)
    pid2name = readers.read_pid2name(names_file) if names_file else None
    data_files = [path for name, path in files.items() if name != PID2NAME]
    if pid2name is None:
        print(f"[data] note: no {PID2NAME} in {data_files[0].parent}: relation ids serve as "
              "relation names", flush=True)
    instances = [inst for path in data_files for inst in readers.read_fewrel(path, pid2name)]
    relations = sorted({inst.relation for inst in instances})
    descriptions = {pid: f"{pid2name[pid][0]}: {pid2name[pid][1]}"
                    for pid in relations if pid2name and pid in pid2name}
    return instances, None, [], descriptions


def encodable(instances: list[Instance], window: Window, paths: dict[str, Path | str],
              training: bool = False) -> list[Instance]:
    """The instances `window` fits; each file with dropped records gets one warning naming
    the first few. `paths`: provenance file name -> full path ("" for records without one).
    `training`: a relation left with no instance is refused (DataError)."""
    ok = window.fits(instances) if instances else []
    kept = [inst for inst, good in zip(instances, ok, strict=True) if good]
    if len(kept) == len(instances):
        return instances
    dropped: dict[str, list[str]] = {}
    file_of: dict[str, str] = {}  # relation -> a file where one of its records was dropped
    for inst, good in zip(instances, ok, strict=True):
        if not good:
            name = inst.provenance.get("file", "")
            where = str(paths.get(name, name or "(no file)"))
            dropped.setdefault(where, []).append(inst.provenance.get("record", inst.id))
            file_of.setdefault(inst.relation, where)
    for where, records in dropped.items():
        more = f" and {len(records) - 5} more" if len(records) > 5 else ""
        print(f"[data] warning: {where}: dropped {len(records)} record(s) whose two entities "
              f"are more than {window.describe()} apart, records {', '.join(records[:5])}{more}",
              flush=True)
    lost = sorted({inst.relation for inst in instances} - {inst.relation for inst in kept})
    if training and lost:
        raise DataError(
            f"relation {lost[0]!r}{f' (and {len(lost) - 1} more)' if len(lost) > 1 else ''} "
            f"has no training example whose entities lie within {window.describe()}: raise "
            "max_length or give shorter examples", file=file_of[lost[0]], field="max_length")
    return kept


def load_splits(cfg: DataConfig, window: Window | None = None,
                files: dict[str, Path] | None = None) -> Splits:
    """Read the data set and draw the K-shot train/dev split; test stays whole. With a
    window, records it cannot fit leave the pools before the draw."""
    files = files or input_files(cfg)
    train_pool, dev_pool, test, descriptions = _read_official(cfg, files)
    if window is not None:
        paths = {path.name: path for path in files.values()}
        train_pool = encodable(train_pool, window, paths, training=True)
        dev_pool = encodable(dev_pool, window, paths) if dev_pool is not None else None
        test = encodable(test, window, paths)
    no_relation = cfg.no_relation or _NO_RELATION.get(cfg.data, "no_relation")
    if cfg.data == "fewrel":
        train, dev, test = split_per_relation(train_pool, cfg.k, cfg.seed)
    else:
        train = sample_k_shot(train_pool, cfg.k, cfg.seed)
        if dev_pool is None:  # no official dev set: draw it from what train did not take
            dev = sample_k_shot(train_pool, cfg.k, cfg.seed, exclude_ids={i.id for i in train})
        else:
            dev = sample_k_shot(dev_pool, cfg.k, cfg.seed)
    if not train:
        raise DataError("the data set has no training examples: nothing to draw a K-shot set "
                        "from", file=str(demo_dir() if cfg.data == "demo" else cfg.data_dir),
                        field="train")
    short = {label: n for label, n in sorted(label_counts(train).items()) if n < cfg.k}
    if short:
        print(f"[data] warning: fewer than k={cfg.k} training examples for "
              + ", ".join(f"{label} ({n})" for label, n in short.items()), flush=True)
    test = seeded_subset(test, cfg.max_test, cfg.seed)
    labels = sorted({inst.relation for inst in train_pool + test})
    if no_relation in labels:  # the no-relation label always gets id 0
        labels = [no_relation] + [label for label in labels if label != no_relation]
    has_types = all(inst.head.type and inst.tail.type for inst in train_pool)
    return Splits(train, dev, test, labels, no_relation, has_types, descriptions, asdict(cfg))


def prepare(cfg: DataConfig, root: str, window: Window | None = None) -> Splits:
    """Write ROOT/data, holding ROOT's writer lock; later stages (and re-runs) read it back
    while its input files are unchanged, and draw it again when they changed.

    A root already holding data drawn with a different data config is refused, so one run
    never mixes two K-shot draws. `window`: see `encodable`; data prepared under another
    window is checked again here, in memory.
    """
    meta_uri = layout.data_meta(root)
    with layout.writing(root):
        files = input_files(cfg)
        inputs = {path.name: _sha256(path) for path in files.values()}
        old = storage.read_json(meta_uri) if storage.exists(meta_uri) else None
        if old is not None:
            if old["data_config"] != asdict(cfg):
                raise DataError(
                    f"{root} already holds data drawn with {old['data_config']}; this run asks "
                    f"for {asdict(cfg)}. Use another --root, or remove {layout.data_dir(root)}.",
                    field="root")
            if old.get("inputs") == inputs:
                splits = load_prepared(root)
                if window is None or old.get("window") == window.describe():
                    return splits
                return _fitted(splits, window, files)
            changed = sorted(name for name in inputs.keys() | old.get("inputs", {}).keys()
                             if inputs.get(name) != old.get("inputs", {}).get(name))
            print(f"[data] {', '.join(changed)} changed since {layout.data_dir(root)} was "
                  "prepared: reading the data set again", flush=True)
        splits = load_splits(cfg, window, files)
        for name in SPLITS:
            fs, path = storage.arrow_filesystem(layout.data_split(root, name))
            readers.write_parquet(getattr(splits, name), path, filesystem=fs)
        meta = splits.meta() | {"inputs": inputs,
                                "window": window.describe() if window else None,
                                "split_sha256": {name: _split_sha256(getattr(splits, name))
                                                 for name in SPLITS}}
        storage.write_json(meta_uri, meta)  # written last: its presence means complete
        if old is not None:
            _warn_stale_stages(root, old, meta)
    return splits


def _fitted(splits: Splits, window: Window, files: dict[str, Path]) -> Splits:
    paths = {path.name: path for path in files.values()}
    splits.train = encodable(splits.train, window, paths, training=True)
    splits.dev = encodable(splits.dev, window, paths)
    splits.test = encodable(splits.test, window, paths)
    return splits


def _split_sha256(instances: list[Instance]) -> str:
    rows = json.dumps([inst.to_dict() for inst in instances], sort_keys=True)
    return hashlib.sha256(rows.encode()).hexdigest()


def _warn_stale_stages(root: str, old: dict, new: dict) -> None:
    """Name the later stages on ROOT that were built from a split that has now changed."""
    changed = [name for name in SPLITS
               if old.get("split_sha256", {}).get(name) != new["split_sha256"][name]]
    stale = {stage for name in changed for stage in _BUILT_FROM[name]}
    built = [stage for stage, done in layout.STAGE_DONE.items() if stage in stale and done(root)]
    print(f"[data] re-drawn: {', '.join(changed) or 'no'} split(s) changed", flush=True)
    if built:
        print(f"[data] warning: {root} still holds {', '.join(built)} built from the previous "
              "data; remove those folders (or use another --root) to rebuild them", flush=True)


def load_prepared(root: str) -> Splits:
    """The data artifact written by `prepare`."""
    meta_uri = layout.data_meta(root)
    if not storage.exists(meta_uri):
        raise DataError(f"no prepared data: run {layout.WRITERS['data']} first", file=meta_uri)
    meta = storage.read_json(meta_uri)
    parts = {}
    for name in SPLITS:
        fs, path = storage.arrow_filesystem(layout.data_split(root, name))
        parts[name] = readers.read_parquet(path, filesystem=fs)
    return Splits(parts["train"], parts["dev"], parts["test"], meta["labels"],
                  meta["no_relation"], meta["has_types"], meta.get("descriptions", {}),
                  meta["data_config"])
