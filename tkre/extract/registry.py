"""Run-time relations on storage: ROOT/extract/relations/<name>.json, one file each.

Files, not replica memory, so registrations survive restarts and every replica sees them: each
replica compares the folder's listing (mtime/size locally, ETags on S3) at most every
`refresh_s` seconds and embeds the examples of new or changed files itself (a file this replica
wrote itself is embedded once, when it is added). A name is a file name, so it must match
NAME_PATTERN whole; files whose name does not are skipped.

A file also keeps the relation's gate (`tkre.extract.references`: its margin threshold and the
references it was set from); a replica whose references differ (another model) sets it again.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tkre import storage
from tkre.extract.prototypes import prototype
from tkre.schema import DataError, Instance

log = logging.getLogger(__name__)
# matched whole (fullmatch): with match and "$", "abc\n" passed and became the file "abc\n.json"
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")


def check_name(name: object) -> str:
    """A relation name, which is also its file name; DataError (field "name") otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise DataError("must be 1-64 characters: a letter, then letters, digits, _ . : -",
                        field="name")
    return name


@dataclass
class Registered:
    name: str
    description: str
    examples: list[Instance]
    prototype: torch.Tensor = field(repr=False)
    gate: dict | None = None  # {"margin": threshold, ...}; None: no reference sentences


class RelationRegistry:
    """The relations of one folder and their prototypes; thread-safe."""

    def __init__(self, folder: str, embed: Callable[[Sequence[Instance]], torch.Tensor],
                 refresh_s: float = 1.0,
                 gate: Callable[[torch.Tensor, dict | None], dict | None] | None = None):
        """`gate(prototype, stored gate or None)`: the gate to use (the stored one when it
        still holds); without it relations have none."""
        self.folder, self.embed, self.refresh_s = folder, embed, refresh_s
        self.gate = gate or (lambda prototype, stored: None)
        self._entries: dict[str, Registered] = {}
        self._versions: dict[str, Any] = {}
        self._checked = float("-inf")
        self._dirty = False  # changed here since the last listing: rebuild on the next refresh
        self._lock = threading.Lock()

    def _listing(self) -> dict[str, Any]:
        """{file name: version marker} of the *.json files."""
        return {name: version for name, version in storage.versions(self.folder).items()
                if name.endswith(".json") and not name.startswith(".")}

    def refresh(self, force: bool = False) -> bool:
        """Re-read changed files (at most every refresh_s unless forced); True when changed."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._checked < self.refresh_s:
                return False
            self._checked = now
            listing = self._listing()
            if listing == self._versions and not self._dirty:
                return False
            entries = {}
            for file, version in listing.items():
                name = file[:-len(".json")]
                if not NAME_PATTERN.fullmatch(name):
                    log.warning("skipping relation file %s: not a relation name", file)
                    continue
                if self._versions.get(file) == version and name in self._entries:
                    entries[name] = self._entries[name]
                    continue
                try:
                    entries[name] = self._read(file, name)
                except FileNotFoundError:  # deleted between listing and reading
                    continue
                except (DataError, KeyError, TypeError, ValueError) as err:
                    log.warning("skipping unreadable relation file %s: %s", file, err)
            self._entries, self._versions, self._dirty = entries, listing, False
            return True

    def _read(self, file: str, name: str) -> Registered:
        """The relation in `file`; embedded unless it holds what this replica has already (the
        file it wrote itself on `add`, whose stored version it learns only now)."""
        row = storage.read_json(storage.join(self.folder, file))
        examples = [Instance.from_dict(e) for e in row["examples"]]
        description = row.get("description", "")
        known = self._entries.get(name)
        if known and known.examples == examples and known.description == description:
            return known
        vector = prototype(self.embed(examples))
        return Registered(name, description, examples, vector,
                          self.gate(vector, row.get("threshold")))

    def snapshot(self) -> tuple[list[str], torch.Tensor | None, torch.Tensor | None]:
        """The names, sorted, their prototypes stacked [R, D] and margin thresholds [R] (-inf:
        no gate); None, None when there are none."""
        with self._lock:
            names = sorted(self._entries)
            if not names:
                return [], None, None
            entries = [self._entries[n] for n in names]
            margins = [e.gate["margin"] if e.gate else -math.inf for e in entries]
            return (names, torch.stack([e.prototype for e in entries]),
                    torch.tensor(margins, dtype=torch.float32))

    def entries(self) -> list[Registered]:
        with self._lock:
            return [self._entries[n] for n in sorted(self._entries)]

    def add(self, name: str, description: str, examples: list[Instance]) -> Registered:
        """Embed the examples and write the relation's file (replacing one by that name)."""
        check_name(name)
        vector = prototype(self.embed(examples))
        entry = Registered(name, description, examples, vector, self.gate(vector, None))
        storage.write_json(storage.join(self.folder, f"{name}.json"), {
            "name": name, "description": description,
            "examples": [e.to_dict() for e in examples], "threshold": entry.gate,
            "created": time.time()})
        with self._lock:
            self._entries[name] = entry
            self._versions.pop(f"{name}.json", None)  # learnt on refresh, not re-embedded
            self._checked, self._dirty = float("-inf"), True
        return entry

    def remove(self, name: str) -> bool:
        """Delete the relation's file; False when there is none by that name."""
        self.refresh(force=True)
        with self._lock:
            known = name in self._entries
        if known:
            storage.delete(storage.join(self.folder, f"{name}.json"))
            with self._lock:
                self._entries.pop(name, None)
                self._checked, self._dirty = float("-inf"), True
        return known
