"""A corpus for batch extraction: its input files, their documents, and the plan of blocks.

Input: one file, or a folder (searched recursively) of such files, local or s3://:

    .jsonl    one JSON object a line, the text in `text_field` (other fields are ignored)
    .parquet  a string column `text_field`, one document a row
    .txt      one document a line

Blank lines (.jsonl, .txt) are not documents; files and folders whose name starts with "." or
"_" are skipped (temp files, _SUCCESS markers), and so are other suffixes. A document's id is
`<file>:<row>`: the file's path relative to the input folder (its name when the input is one
file) and its row, the line number (from 1) in .jsonl and .txt, the row index (from 0) in
.parquet, as in the readers' errors.

`plan` reads every document once and checks it: a line that is not UTF-8 or not a JSON object,
a missing field, a value that is not a string, a Parquet column that is missing or not of
strings, a null, each is a DataError naming the file, the record and the field, before any
extraction starts. It cuts each file into blocks of `block_size` documents; a block knows the
byte offset (the row index, for Parquet) where it starts, so a worker reads it alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from tkre import storage
from tkre.config import ConfigError
from tkre.schema import DataError

FORMATS = {".jsonl": "jsonl", ".parquet": "parquet", ".txt": "txt"}
READ_BUFFER = 1 << 20


@dataclass(frozen=True)
class InputFile:
    """One input file: its path relative to the input (the document ids' prefix), its URI and
    the size and modification time that tell a changed file."""

    path: str
    uri: str
    size: int
    mtime_ns: int

    @property
    def format(self) -> str:
        return FORMATS[PurePosixPath(self.path).suffix.lower()]


@dataclass(frozen=True)
class Block:
    """`documents` consecutive documents of one file, from row `first_row`; reading starts at
    byte `start` (.jsonl, .txt) or row index `start` (.parquet). `name` names its output
    files: it depends only on the file's path and the first row."""

    name: str
    path: str
    uri: str
    format: str
    start: int
    first_row: int
    documents: int
    size: int
    mtime_ns: int

    def doc_id(self, row: int) -> str:
        return f"{self.path}:{row}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def block_name(path: str, first_row: int) -> str:
    """`part-<path, made file-name safe>-<hash of the path>-<first row>`: the same block gets
    the same name in every run, and two paths never share one (the hash)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", path)[-80:]
    digest = hashlib.sha256(path.encode()).hexdigest()[:8]
    return f"part-{slug}-{digest}-{first_row:09d}"


# --- listing ---------------------------------------------------------------------------------

def _arrow_error(uri: str, err: OSError) -> storage.StorageError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return storage.StorageError(f"input {uri}: {first}")


def list_inputs(uri: str) -> list[InputFile]:
    """The input files of a file or folder URI, sorted by relative path; ConfigError when
    there is nothing to read."""
    import pyarrow.fs as pafs

    fs, base = storage.arrow_filesystem(uri)
    try:
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            raise ConfigError(f"input: no such file or folder: {uri}")
        if info.type == pafs.FileType.File:
            name = PurePosixPath(info.path).name
            if PurePosixPath(name).suffix.lower() not in FORMATS:
                raise ConfigError(f"input: {uri} is not a {', '.join(FORMATS)} file")
            return [InputFile(name, uri, info.size, info.mtime_ns)]
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except OSError as err:
        raise _arrow_error(uri, err) from None
    files = []
    for entry in infos:
        rel = entry.path[len(base.rstrip("/")) + 1:]
        parts = rel.split("/")
        if (entry.type != pafs.FileType.File or any(p.startswith((".", "_")) for p in parts)
                or PurePosixPath(rel).suffix.lower() not in FORMATS):
            continue
        files.append(InputFile(rel, storage.join(uri, rel), entry.size, entry.mtime_ns))
    if not files:
        raise ConfigError(f"input: no {', '.join(FORMATS)} files under {uri}")
    return sorted(files, key=lambda f: f.path)


# --- reading ---------------------------------------------------------------------------------

def numbered_lines(stream: Any, start: int = 0, number: int = 1
                   ) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line without its end) of a binary stream positioned at
    byte `start`, which holds line `number`."""
    offset = start
    for raw in io.BufferedReader(stream, buffer_size=READ_BUFFER):
        yield number, offset, raw.rstrip(b"\n").removesuffix(b"\r")
        offset += len(raw)
        number += 1


def line_text(raw: bytes, file: InputFile | Block, number: int, text_field: str) -> str | None:
    """The document of one line, None for a blank line; DataError when the line is bad."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text: {err.reason} at byte {err.start}", file=file.uri,
                        record=number) from None
    if number == 1:
        line = line.removeprefix("\ufeff")  # a byte-order mark
    if not line.strip():
        return None
    if file.format == "txt":
        return line
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON at column {err.colno}: {err.msg}", file=file.uri,
                        record=number) from None
    if not isinstance(row, dict):
        raise DataError(f"must be a JSON object, got {type(row).__name__}", file=file.uri,
                        record=number)
    if text_field not in row:
        raise DataError("is missing (the text field: --text-field)", file=file.uri,
                        record=number, field=text_field)
    text = row[text_field]
    if not isinstance(text, str):
        raise DataError(f"must be a string, got {type(text).__name__}", file=file.uri,
                        record=number, field=text_field)
    return text


def _parquet_file(uri: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = storage.arrow_filesystem(uri)
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read as Parquet: {err}", file=uri) from None


def _text_column(parquet: Any, uri: str, text_field: str) -> None:
    import pyarrow as pa

    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise DataError("column is missing (the text column: --text-field)", file=uri,
                        field=text_field)
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_string_view(kind)):
        raise DataError(f"column must hold strings, not {kind}", file=uri, field=text_field)


def read_block(block: Block, text_field: str) -> list[tuple[int, str]]:
    """(row, text) of every document of the block."""
    if block.format == "parquet":
        return _read_parquet_block(block, text_field)
    fs, path = storage.arrow_filesystem(block.uri)
    out: list[tuple[int, str]] = []
    with fs.open_input_file(path) as stream:
        stream.seek(block.start)
        for number, _, raw in numbered_lines(stream, block.start, block.first_row):
            text = line_text(raw, block, number, text_field)
            if text is not None:
                out.append((number, text))
                if len(out) == block.documents:
                    break
    if len(out) != block.documents:
        raise DataError(f"holds {len(out)} documents from line {block.first_row}, "
                        f"{block.documents} when this output was started: the file changed",
                        file=block.uri)
    return out


def _read_parquet_block(block: Block, text_field: str) -> list[tuple[int, str]]:
    """Only the row groups that hold the block's rows are read."""
    parquet = _parquet_file(block.uri)
    _text_column(parquet, block.uri, text_field)
    stop = block.start + block.documents
    groups, first, offset = [], None, 0
    for index in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(index).num_rows
        if offset < stop and offset + rows > block.start:
            groups.append(index)
            first = offset if first is None else first
        offset += rows
    if offset < stop:
        raise DataError(f"has {offset} rows, fewer than when this output was started: the "
                        "file changed", file=block.uri)
    column = parquet.read_row_groups(groups, columns=[text_field]).column(text_field)
    texts = column.slice(block.start - first, block.documents).to_pylist()
    return [(block.start + i, _not_null(text, block.uri, block.start + i, text_field))
            for i, text in enumerate(texts)]


def _not_null(text: str | None, uri: str, row: int, text_field: str) -> str:
    if text is None:
        raise DataError("is null", file=uri, record=row, field=text_field)
    return text


# --- planning --------------------------------------------------------------------------------

def plan(files: list[InputFile], text_field: str, block_size: int) -> list[Block]:
    """The blocks of every file, in file order; every document is read and checked once."""
    blocks = []
    for file in files:
        plan_file = _plan_parquet if file.format == "parquet" else _plan_lines
        blocks += plan_file(file, text_field, block_size)
    return blocks


def _block(file: InputFile, start: int, first_row: int, documents: int) -> Block:
    return Block(block_name(file.path, first_row), file.path, file.uri, file.format, start,
                 first_row, documents, file.size, file.mtime_ns)


def _plan_lines(file: InputFile, text_field: str, block_size: int) -> list[Block]:
    starts: list[tuple[int, int]] = []  # (byte offset, line number) of each block's first line
    count = 0
    fs, path = storage.arrow_filesystem(file.uri)
    try:
        stream = fs.open_input_stream(path)  # one sequential read (a single GET on S3)
    except OSError as err:
        raise _arrow_error(file.uri, err) from None
    with stream:
        for number, offset, raw in numbered_lines(stream):
            if line_text(raw, file, number, text_field) is None:
                continue
            if count % block_size == 0:
                starts.append((offset, number))
            count += 1
    sizes = [block_size] * len(starts)
    if starts:
        sizes[-1] = count - block_size * (len(starts) - 1)
    return [_block(file, offset, number, size)
            for (offset, number), size in zip(starts, sizes, strict=True)]


def _plan_parquet(file: InputFile, text_field: str, block_size: int) -> list[Block]:
    import pyarrow.compute as pc

    parquet = _parquet_file(file.uri)
    _text_column(parquet, file.uri, text_field)
    row = 0
    for batch in parquet.iter_batches(columns=[text_field]):
        column = batch.column(0)
        if column.null_count:
            first = pc.index(pc.is_null(column), True).as_py()
            raise DataError("is null", file=file.uri, record=row + first, field=text_field)
        row += len(column)
    return [_block(file, start, start, min(block_size, row - start))
            for start in range(0, row, block_size)]
