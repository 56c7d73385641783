"""The generation ledger: every generated row, persisted in small Parquet parts as it arrives.

ROOT/knowledge/ledger/part-*.parquet holds one row per finished request (its stable id, what was
asked, what came back), one part per block the backend finishes. A re-run loads it and skips those
ids, so an interrupted job loses at most the blocks in flight and never writes a row twice; the
explanation, synthetic and stats artifacts are rebuilt from it.
"""

from __future__ import annotations

import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from tkre import layout, storage

LEDGER_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("kind", pa.string()), ("relation", pa.string()),
    ("round", pa.int32()), ("index", pa.int32()), ("source_id", pa.string()),
    ("model", pa.string()), ("prompt_hash", pa.string()), ("prompt", pa.string()),
    ("generated_text", pa.string()), ("num_generated_tokens", pa.int64()),
])


class Ledger:
    """Rows by request id; `append` writes a part file (atomic per file)."""

    def __init__(self, root: str):
        self.folder = layout.ledger_dir(root)
        self.rows: dict[str, dict] = {}
        for name in storage.list_files(self.folder):
            if name.endswith(".parquet"):
                fs, path = storage.arrow_filesystem(storage.join(self.folder, name))
                for row in pq.read_table(path, filesystem=fs).to_pylist():
                    self.rows.setdefault(row["request_id"], row)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.rows

    def append(self, rows: list[dict]) -> None:
        fresh = [row for row in rows if row["request_id"] not in self.rows]
        if not fresh:
            return
        name = f"part-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        uri = storage.join(self.folder, name)
        table = pa.Table.from_pylist(
            [{field.name: row.get(field.name) for field in LEDGER_SCHEMA} for row in fresh],
            schema=LEDGER_SCHEMA)
        storage.write_table(uri, table)
        for row in fresh:
            self.rows[row["request_id"]] = row

    def of_kind(self, kind: str) -> list[dict]:
        """Rows of one kind in a deterministic order (round, relation, index)."""
        rows = [row for row in self.rows.values() if row["kind"] == kind]
        return sorted(rows, key=lambda r: (r["round"], r["relation"], r["index"]))
