"""jobs/extract.py end to end on a tiny trained model: a run killed (SIGKILL to its process
group) after its first blocks, then the same command, leaves every document exactly once; and
the README's command under `ray job submit` on a loopback head. Also the blocks' reading and
writing on S3 (a local S3 server), without Ray."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO
from tests.integration.conftest import submit
from tests.tiny import make_tiny_encoder
from tests.unit.test_extract import make_model_root

pytestmark = pytest.mark.integration

DEMO_TEST = REPO / "tkre" / "data" / "demo" / "test.jsonl"


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    """A tiny random model whose no-relation label never wins (its bias -50): every candidate
    pair is a triple, whatever the random weights, so there are offsets to check."""
    from safetensors.torch import load_file, save_file

    encoder = make_tiny_encoder(tmp_path_factory.mktemp("encoder"))
    root = make_model_root(tmp_path_factory.mktemp("root"), encoder)
    head = root / "finetune" / "model" / "head.safetensors"
    weights = load_file(str(head))
    weights["3.bias"][0] = -50.0  # the last Linear; label 0 is no_relation
    save_file(weights, str(head))
    return root


def demo_texts() -> list[str]:
    return [json.loads(line)["text"] for line in DEMO_TEST.read_text().splitlines()]


def write_corpus(folder: Path, texts: list[str]) -> dict[str, str]:
    """Two thirds of the texts as .jsonl, the rest as .txt; {doc_id: text}."""
    folder.mkdir(parents=True)
    cut = 2 * len(texts) // 3
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:cut]))
    (folder / "b.txt").write_text("".join(t + "\n" for t in texts[cut:]))
    return ({f"a.jsonl:{i}": t for i, t in enumerate(texts[:cut], 1)}
            | {f"b.txt:{i}": t for i, t in enumerate(texts[cut:], 1)})


def check_output(out: str, texts: dict[str, str]) -> dict:
    """Every document once in documents/, each triple once in triples/ at its offsets."""
    import pyarrow.parquet as pq

    from tkre import storage

    fs, path = storage.arrow_filesystem(out)
    documents = pq.read_table(f"{path}/documents", filesystem=fs).to_pylist()
    ids = [d["doc_id"] for d in documents]
    assert len(ids) == len(set(ids)) and set(ids) == set(texts)
    triples = pq.read_table(f"{path}/triples", filesystem=fs).to_pylist()
    assert Counter(t["doc_id"] for t in triples) == {
        d["doc_id"]: d["n_triples"] for d in documents if d["n_triples"]}
    assert triples, "the tiny model finds no triple: nothing checks the offsets"
    for t in triples:
        text = texts[t["doc_id"]]
        assert text[t["head_start"]:t["head_end"]] == t["head_text"]
        assert text[t["tail_start"]:t["tail_end"]] == t["tail_text"]
    summary = storage.read_json(storage.join(out, "_summary.json"))
    assert summary["complete"] and summary["documents"] == len(texts)
    assert summary["triples"] == len(triples)
    return summary


def test_a_killed_run_resumes_with_every_document_once(model_root: Path, tmp_path: Path):
    texts = write_corpus(tmp_path / "corpus", demo_texts()[:24])
    out = tmp_path / "out"
    args = [sys.executable, "jobs/extract.py", "--root", str(model_root), "--input",
            str(tmp_path / "corpus"), "--output", str(out), "--block-size", "2"]
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        first = subprocess.Popen(args, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    done = out / "documents"
    deadline = time.monotonic() + 600
    while not list(done.glob("*.parquet")):
        assert first.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    tree = psutil.Process(first.pid).children(recursive=True)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"left running: {alive}"
    kept = len(list(done.glob("*.parquet")))
    assert 0 < kept < 12, log.read_text()[-3000:]

    rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"{kept} block(s) done already, {12 - kept} to extract" in rerun.stdout
    assert "documents/s" in rerun.stdout
    summary = check_output(str(out), texts)
    assert summary["this_run"]["blocks"] == 12 - kept


def test_blocks_on_s3(s3_bucket: str, tmp_path: Path):
    """What the job's driver and actors do with an s3:// input and output, without Ray and
    without a model (an actor's work is `extract_block` + `write_block`)."""
    from tests.unit.test_extract_batch import FakeExtractor
    from tkre import storage
    from tkre.config import ExtractJobConfig
    from tkre.extract import batch, corpus

    texts = write_corpus(tmp_path / "corpus" / "part 1", demo_texts()[:9])
    texts = {f"part 1/{doc_id}": text for doc_id, text in texts.items()}
    cfg = ExtractJobConfig(root=str(tmp_path), input=f"s3://{s3_bucket}/corpus",
                           output=f"s3://{s3_bucket}/out", block_size=4)
    storage.upload_dir(tmp_path / "corpus", cfg.input)
    with storage.exclusive(storage.join(cfg.output, batch.LOCK_FILE), name=cfg.output):
        files = corpus.list_inputs(cfg.input)
        assert [f.path for f in files] == ["part 1/a.jsonl", "part 1/b.txt"]
        spec = batch.job_spec(cfg, "v1", None)
        blocks = batch.load_or_plan(cfg.output, spec, files)
        assert [b.documents for b in blocks] == [4, 2, 3]
        for block in blocks[:2]:
            batch.write_block(cfg.output, block.name, *batch.extract_block(
                FakeExtractor(), block, "text", None, 8))
        assert batch.done_blocks(cfg.output) == {b.name for b in blocks[:2]}
        # resumed: the plan comes from _job.json, and only the last block is left
        assert batch.load_or_plan(cfg.output, spec, corpus.list_inputs(cfg.input)) == blocks
        batch.write_block(cfg.output, blocks[2].name, *batch.extract_block(
            FakeExtractor(), blocks[2], "text", None, 8))
        documents, triples = batch.written_totals(cfg.output)
    assert documents == 9 and triples == sum("born" in t for t in texts.values()) > 0
    fs, path = storage.arrow_filesystem(cfg.output)
    import pyarrow.parquet as pq

    ids = pq.read_table(f"{path}/documents", filesystem=fs).column("doc_id").to_pylist()
    assert sorted(ids) == sorted(texts)


def test_readme_command_runs_under_ray_job_submit(ray_head, model_root: Path, tmp_path: Path):
    """The README's command as written (the demo test sentences as a corpus, read from the
    uploaded working directory), with the tiny model as ROOT and a temporary OUTPUT."""
    from tests.unit.test_readme import bash_blocks

    _, address, env = ray_head
    [line] = [line for block in bash_blocks() for line in block.splitlines()
              if line.startswith("python jobs/extract.py")]
    out = tmp_path / "triples"
    assert "--root runs/demo " in line and "--output runs/demo-triples" in line
    line = (line.replace("--root runs/demo ", f"--root {model_root} ")
            .replace("--output runs/demo-triples", f"--output {out}"))
    command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address,
               "--working-dir", ".", "--", *shlex.split(line)]
    result = submit(command, env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "succeeded" in result.stdout.lower() and "documents/s" in result.stdout
    check_output(str(out), {f"test.jsonl:{i}": text for i, text in enumerate(demo_texts(), 1)})
