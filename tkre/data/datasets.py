"""From a DataConfig to the run's data artifact: ROOT/data/{train,dev,test}.parquet + meta.json.

train = K per label from the official train set; dev = K per label from the official dev set, or
(when the data set has none) from the train set minus the K-shot train; test = the full official
test set. FewRel has no splits: per relation K train, K dev and the rest test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

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


def _read_official(cfg: DataConfig) -> tuple[list, list | None, list, dict[str, str]]:
    """(train pool, dev pool or None, test, relation descriptions) as the data set ships them."""
    folder = demo_dir() if cfg.data == "demo" else Path(cfg.data_dir or "")
    if cfg.data != "demo" and not folder.is_dir():
        raise DataError("data_dir is not a folder", file=str(folder), field="data_dir")
    if cfg.data == "semeval":
        return (readers.read_semeval(_existing(folder / "TRAIN_FILE.TXT")), None,
                readers.read_semeval(_existing(folder / "TEST_FILE_FULL.TXT")), {})
    if cfg.data == "tacred":
        return tuple(readers.read_tacred(_existing(folder / f"{name}.json"))
                     for name in SPLITS) + ({},)
    if cfg.data == "fewrel":
        return _read_fewrel(folder, cfg)
    # demo and jsonl share our own format
    dev_path = _find_split(folder, "dev", required=False)
    return (readers.read_instances(_find_split(folder, "train", required=True)),
            readers.read_instances(dev_path) if dev_path else None,
            readers.read_instances(_find_split(folder, "test", required=True)), {})


def _read_fewrel(folder: Path, cfg: DataConfig) -> tuple[list, list, list, dict[str, str]]:
    names_file = folder / "pid2name.json"
    pid2name = readers.read_pid2name(names_file) if names_file.exists() else {}
    files = sorted(p for p in folder.glob("*.json") if p.name != "pid2name.json")
    if not files:
        raise DataError("no FewRel JSON files in the folder", file=str(folder))
    instances = [inst for path in files for inst in readers.read_fewrel(path, pid2name)]
    train, dev, test = split_per_relation(instances, cfg.k, cfg.seed)
    relations = {inst.relation for inst in instances}
    descriptions = {pid: f"{pid2name[pid][0]}: {pid2name[pid][1]}"
                    for pid in sorted(relations) if pid in pid2name}
    return train, dev, test, descriptions


def load_splits(cfg: DataConfig) -> Splits:
    """Read the data set and draw the K-shot train/dev split; test stays whole."""
    train_pool, dev_pool, test, descriptions = _read_official(cfg)
    no_relation = cfg.no_relation or _NO_RELATION.get(cfg.data, "no_relation")
    if cfg.data == "fewrel":
        train, dev = train_pool, dev_pool
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


def prepare(cfg: DataConfig, root: str) -> Splits:
    """Write ROOT/data once; later stages (and re-runs) read it back.

    A root already holding data drawn with a different data config is refused, so one run
    never mixes two K-shot draws.
    """
    meta_uri = layout.data_meta(root)
    if storage.exists(meta_uri):
        meta = storage.read_json(meta_uri)
        if meta["data_config"] != asdict(cfg):
            raise DataError(
                f"{root} already holds data drawn with {meta['data_config']}; this run asks for "
                f"{asdict(cfg)}. Use another --root, or remove {layout.data_dir(root)}.",
                field="root")
        return load_prepared(root)
    splits = load_splits(cfg)
    for name in SPLITS:
        fs, path = storage.arrow_filesystem(layout.data_split(root, name))
        readers.write_parquet(getattr(splits, name), path, filesystem=fs)
    storage.write_json(meta_uri, splits.meta())  # written last: its presence means complete
    return splits


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
