"""jobs/extract.py without Ray: input files, the plan and its document ids, bad records, block
names, what a re-run skips, and the rows written per block."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tkre.config import ConfigError, ExtractJobConfig, parse_args
from tkre.extract import batch, corpus
from tkre.schema import DataError

JSONL = ['\ufeff{"text": "Ada Lovelace was born in London.", "id": 7}', "",
         '{"text": "Bob met Carol in Paris.", "lang": "en"}', '{"text": ""}',
         '{"text": "Dana works for Acme."}']
TXT = ["Eve lives in Rome.", "   ", "Frank founded Initech.", "Gina visited Oslo."]
PARQUET = [f"Parquet document {i}." for i in range(7)]


def write_corpus(folder: Path) -> dict[str, str]:
    """A folder of every format, plus files the listing must skip; {doc_id: text} expected."""
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl").write_text("\n".join(JSONL) + "\n", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("\r\n".join(TXT))  # CRLF, no final line end
    pq.write_table(pa.table({"text": PARQUET, "n": list(range(7))}), folder / "c.parquet",
                   row_group_size=3)
    for skipped in (".hidden.jsonl", "_SUCCESS", "notes.md"):
        (folder / skipped).write_text("not a document\n")
    return {"a.jsonl:1": "Ada Lovelace was born in London.",
            "a.jsonl:3": "Bob met Carol in Paris.", "a.jsonl:4": "",
            "a.jsonl:5": "Dana works for Acme.",
            "sub/b.txt:1": TXT[0], "sub/b.txt:3": TXT[2], "sub/b.txt:4": TXT[3],
            **{f"c.parquet:{i}": text for i, text in enumerate(PARQUET)}}


def read_all(blocks: list[corpus.Block]) -> dict[str, str]:
    out = {}
    for block in blocks:
        docs = corpus.read_block(block, "text")
        assert len(docs) == block.documents and docs[0][0] == block.first_row
        out.update({block.doc_id(row): text for row, text in docs})
    return out


def test_inputs_are_the_known_formats_of_a_folder_or_one_file(tmp_path: Path):
    write_corpus(tmp_path / "in")
    files = corpus.list_inputs(str(tmp_path / "in"))
    assert [f.path for f in files] == ["a.jsonl", "c.parquet", "sub/b.txt"]
    assert [f.format for f in files] == ["jsonl", "parquet", "txt"]
    assert files[2].uri == str(tmp_path / "in" / "sub" / "b.txt")
    [single] = corpus.list_inputs(str(tmp_path / "in" / "sub" / "b.txt"))
    assert single.path == "b.txt"
    with pytest.raises(ConfigError, match="^input: no such file or folder"):
        corpus.list_inputs(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="^input: .*notes.md is not a .jsonl, .parquet, .txt"):
        corpus.list_inputs(str(tmp_path / "in" / "notes.md"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="^input: no .jsonl, .parquet, .txt files under"):
        corpus.list_inputs(str(tmp_path / "empty"))


@pytest.mark.parametrize("block_size", [1, 2, 3, 100])
def test_blocks_read_back_every_document_once_under_a_stable_id(tmp_path: Path, block_size):
    expected = write_corpus(tmp_path / "in")
    files = corpus.list_inputs(str(tmp_path / "in"))
    blocks = corpus.plan(files, "text", block_size)
    assert read_all(blocks) == expected  # no document lost, none twice, ids as documented
    assert sum(b.documents for b in blocks) == len(expected)
    assert all(b.documents <= block_size for b in blocks)
    names = [b.name for b in blocks]
    assert len(set(names)) == len(names)
    assert corpus.plan(files, "text", block_size) == blocks  # planned again: the same blocks
    # a name depends on the file's path and the block's first row only
    assert blocks[0].name == corpus.block_name("a.jsonl", 1)
    assert re.fullmatch(r"part-a\.jsonl-[0-9a-f]{8}-000000001", blocks[0].name)
    assert corpus.block_name("a/b.jsonl", 1) != corpus.block_name("a_b.jsonl", 1)


BAD_LINES = [
    ("not json", "record 2: invalid JSON at column 1: Expecting value"),
    ("[1, 2]", "record 2: must be a JSON object, got list"),
    ('{"body": "x"}', "record 2, field 'text': is missing"),
    ('{"text": 3}', "record 2, field 'text': must be a string, got int"),
    ('{"text": null}', "record 2, field 'text': must be a string, got NoneType"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_a_bad_line_is_one_error_naming_file_line_and_field(tmp_path: Path, line, message):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        corpus.plan(corpus.list_inputs(str(path)), "text", 10)
    assert str(err.value).startswith(f"file {path}, {message}")
    path.write_bytes(b'{"text": "fine"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"record 2: not UTF-8 text"):
        corpus.plan(corpus.list_inputs(str(path)), "text", 10)


@pytest.mark.parametrize(("column", "message"), [
    (pa.array(["a", "b"]), "field 'body': column is missing"),
    (pa.array([1, 2]), "field 'text': column must hold strings, not int64"),
    (pa.array(["a", None]), "record 1, field 'text': is null"),
])
def test_a_bad_parquet_column_is_one_error(tmp_path: Path, column, message):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": column}), path)
    field = "body" if "body" in message else "text"
    with pytest.raises(DataError) as err:
        corpus.plan(corpus.list_inputs(str(path)), field, 10)
    assert str(err.value).startswith(f"file {path}, {message}")


def config(tmp_path: Path, **overrides) -> ExtractJobConfig:
    values = {"root": str(tmp_path / "root"), "input": str(tmp_path / "in"),
              "output": str(tmp_path / "out"), "block_size": 2} | overrides
    return ExtractJobConfig(**values)


def test_a_rerun_plans_nothing_and_must_be_the_same_job(tmp_path: Path, monkeypatch):
    write_corpus(tmp_path / "in")
    cfg = config(tmp_path)
    files = corpus.list_inputs(cfg.input)
    spec = batch.job_spec(cfg, "v1", None)
    blocks = batch.load_or_plan(cfg.output, spec, files)
    stored = json.loads((tmp_path / "out" / batch.JOB_FILE).read_text())
    assert stored["block_size"] == 2 and len(stored["blocks"]) == len(blocks)

    def no_reading(*args):
        raise AssertionError("a re-run must not plan again")

    monkeypatch.setattr(corpus, "plan", no_reading)
    assert batch.load_or_plan(cfg.output, spec, files) == blocks
    with pytest.raises(ConfigError, match="^block_size: .* was started with block_size 2, not 3"):
        batch.load_or_plan(cfg.output, batch.job_spec(config(tmp_path, block_size=3), "v1",
                                                      None), files)
    with pytest.raises(ConfigError, match="^root: the model in .* changed since"):
        batch.load_or_plan(cfg.output, batch.job_spec(cfg, "v2", None), files)
    with (tmp_path / "in" / "a.jsonl").open("a") as f:
        f.write('{"text": "One more."}\n')
    with pytest.raises(ConfigError, match="^input: a.jsonl changed since"):
        batch.load_or_plan(cfg.output, spec, corpus.list_inputs(cfg.input))
    (tmp_path / "in" / "d.txt").write_text("New.\n")
    os.remove(tmp_path / "in" / "a.jsonl")
    with pytest.raises(ConfigError, match="^input: a.jsonl is gone since"):
        batch.load_or_plan(cfg.output, spec, corpus.list_inputs(cfg.input))
    # a folder with other files in it is not taken for an output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="^output: .* holds files but no _job.json"):
        batch.load_or_plan(str(tmp_path / "other"), spec, files)


def test_the_model_version_and_relations_come_from_the_model_folder(tmp_path: Path):
    """--root may be a model folder, where the job's own writer lock lives: it is no part of
    the model's version; a re-exported file is."""
    from tkre import layout

    folder = tmp_path / "root" / "finetune" / "model"
    folder.mkdir(parents=True)
    (folder / layout.MODEL_META_FILE).write_text(json.dumps({"labels": ["no_relation", "a"]}))
    root = str(tmp_path / "root")
    assert batch.model_dir(root) == str(folder)
    assert batch.model_dir(str(folder)) == str(folder)
    with pytest.raises(DataError, match="holds no trained model"):
        batch.model_dir(str(tmp_path))
    version = batch.model_version(str(folder))
    Path(layout.lock_file(str(folder))).write_text('{"pid": 1}')
    assert batch.model_version(str(folder)) == version
    (folder / "head.safetensors").write_bytes(b"weights")
    assert batch.model_version(str(folder)) != version
    registered = Path(layout.relations_dir(root))
    registered.mkdir(parents=True)
    (registered / "org:parent.json").write_text("{}")
    assert batch.known_relations(root, str(folder)) == ["no_relation", "a", "org:parent"]
    assert batch.known_relations(str(folder), str(folder)) == ["no_relation", "a"]


class FakeExtractor:
    """Finds one triple in every text that says 'born'."""

    def __init__(self):
        self.calls = []

    def extract_texts(self, texts, thresholds=None, batch_size=64):
        self.calls.append((len(texts), thresholds, batch_size))
        return [[{"head": {"text": "Ada Lovelace", "start": 0, "end": 12, "type": "person"},
                  "tail": {"text": "London", "start": 25, "end": 31, "type": None},
                  "relation": "per:city_of_birth", "score": 0.9, "sentence": 0}]
                if "born" in text else [] for text in texts]


def test_a_block_writes_its_triples_and_every_document(tmp_path: Path):
    write_corpus(tmp_path / "in")
    blocks = corpus.plan(corpus.list_inputs(str(tmp_path / "in")), "text", 2)
    extractor = FakeExtractor()
    triples, documents = batch.extract_block(extractor, blocks[0], "text", {"*": 0.5}, 8)
    assert extractor.calls == [(2, {"*": 0.5}, 8)]
    assert documents == [
        {"doc_id": "a.jsonl:1", "source": "a.jsonl", "row": 1, "n_triples": 1},
        {"doc_id": "a.jsonl:3", "source": "a.jsonl", "row": 3, "n_triples": 0}]
    assert triples == [{
        "doc_id": "a.jsonl:1", "source": "a.jsonl", "row": 1, "head_text": "Ada Lovelace",
        "head_start": 0, "head_end": 12, "head_type": "person", "tail_text": "London",
        "tail_start": 25, "tail_end": 31, "tail_type": None, "relation": "per:city_of_birth",
        "score": 0.9, "sentence": 0}]
    out = str(tmp_path / "out")
    batch.write_block(out, blocks[0].name, triples, documents)
    assert pq.read_table(tmp_path / "out" / "triples").to_pylist() == triples
    assert batch.written_totals(out) == (2, 1)


def test_only_blocks_with_a_documents_file_are_done(tmp_path: Path):
    """A kill between a block's two files leaves its triples file alone: the block is not
    done, and doing it again replaces that file instead of adding one."""
    write_corpus(tmp_path / "in")
    blocks = corpus.plan(corpus.list_inputs(str(tmp_path / "in")), "text", 2)
    out = str(tmp_path / "out")
    extractor = FakeExtractor()
    batch.write_block(out, blocks[0].name, *batch.extract_block(extractor, blocks[0], "text",
                                                                None, 8))
    half, _ = batch.extract_block(extractor, blocks[1], "text", None, 8)
    (tmp_path / "out" / "triples" / f"{blocks[1].name}.parquet").write_bytes(
        (tmp_path / "out" / "triples" / f"{blocks[0].name}.parquet").read_bytes())
    leftover = tmp_path / "out" / "documents" / f".{blocks[1].name}.parquet.x1y2.tmp"
    leftover.write_bytes(b"partial")
    assert batch.done_blocks(out) == {blocks[0].name}
    assert not leftover.exists()
    for block in blocks:
        if block.name not in batch.done_blocks(out):
            batch.write_block(out, block.name, *batch.extract_block(extractor, block, "text",
                                                                    None, 8))
    documents = pq.read_table(tmp_path / "out" / "documents").to_pylist()
    assert len({d["doc_id"] for d in documents}) == len(documents) == 14
    triples = pq.read_table(tmp_path / "out" / "triples").column("doc_id").to_pylist()
    assert triples == ["a.jsonl:1"]  # once, though block 1's file held a copy of it


def test_config_checks_name_the_field(tmp_path: Path):
    assert config(tmp_path, thresholds="per:spouse=0.8, *=0.5").threshold_map() == {
        "per:spouse": 0.8, "*": 0.5}
    for bad in ("per:spouse", "x=2", "x=nan", "=0.5"):
        with pytest.raises(ConfigError, match="^thresholds: must look like"):
            config(tmp_path, thresholds=bad)
    with pytest.raises(ConfigError, match="^output: must not lie inside the input"):
        config(tmp_path, output=str(tmp_path / "in" / "triples"))
    with pytest.raises(ConfigError, match="^output: must not lie inside the input"):
        config(tmp_path, input="s3://bucket/corpus", output="s3://bucket/corpus/out")
    assert config(tmp_path, input="s3://bucket/corpus", output="s3://bucket/corpus2")
    with pytest.raises(ConfigError, match=r"^max_actors: must be >= min_actors \(2\)"):
        config(tmp_path, min_actors=2)
    with pytest.raises(ConfigError, match="^input: is required"):
        config(tmp_path, input=None)
    assert config(tmp_path, input="docs.jsonl").input == str(Path.cwd() / "docs.jsonl")


def test_the_readme_cluster_command_parses():
    """The README's local command runs in tests/integration/test_extract_job.py; its cluster
    one (S3, GPUs) can only be parsed here: every flag must exist."""
    from tests.unit.test_readme import bash_blocks

    lines = [line for block in bash_blocks() for line in block.splitlines()
             if "jobs/extract.py" in line]
    assert [line.split()[0] for line in lines] == ["python", "ray"]
    args = shlex.split(lines[1].split(" -- ", 1)[1])
    assert args[:2] == ["python", "jobs/extract.py"]
    cfg = parse_args(ExtractJobConfig, args[2:])
    assert cfg.input.startswith("s3://") and cfg.num_gpus == 1 and cfg.max_actors == 8


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, monkeypatch):
    """Before Ray starts: the flags, the model, then every record of the input."""
    from tests.unit.test_jobs_cli import run_in_process
    from tkre import layout

    model = tmp_path / "model"
    model.mkdir()
    (model / layout.MODEL_META_FILE).write_text(json.dumps({"labels": ["no_relation"]}))
    (tmp_path / "docs.jsonl").write_text('{"text": "fine"}\n{"body": "x"}\n')
    out = str(tmp_path / "out")
    cases = [
        ([], "error: input: is required"),
        (["--root", str(tmp_path), "--input", "docs.jsonl", "--output", out],
         f"error: field 'root': {tmp_path} holds no trained model"),
        (["--root", str(model), "--input", "docs.jsonl", "--output", out],
         f"error: file {tmp_path / 'docs.jsonl'}, record 2, field 'text': is missing"),
        (["--root", str(model), "--input", "docs.jsonl", "--output", out, "--thresholds",
          "per:spouse=0.5"], "error: field 'thresholds.per:spouse': 'per:spouse' is not a "),
    ]
    for args, expected in cases:
        code, _, err = run_in_process("extract", *args, cwd=tmp_path, capsys=capsys,
                                      monkeypatch=monkeypatch)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(expected), err
