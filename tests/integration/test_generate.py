"""Knowledge generation on a local Ray cluster: backends, acceptance, retry cap, resume."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from tests.tiny import make_tiny_causal_lm
from tkre.config import DataConfig, GenerateConfig
from tkre.data import readers
from tkre.knowledge import job
from tkre.knowledge.ledger import Ledger
from tkre.knowledge.prompts import SAMPLE_JSON_SCHEMA, SAMPLE_REGEX

pytestmark = pytest.mark.integration

RELATIONS = 7  # the demo set's relations, no_relation left out


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    return str(make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm")))


def small(root, model: str, backend: str, **overrides) -> GenerateConfig:
    values = dict(root=str(root), model=model, backend=backend, data=DataConfig(k=8, seed=42),
                  explanations_per_relation=1, synthetic_per_relation=1, max_rounds=1,
                  oversample=1.0, max_tokens_explanation=8, max_tokens_sample=8, batch_size=8)
    values.update(overrides)
    return GenerateConfig(**values)


def ledger_ids(root) -> list[str]:
    folder = root / "knowledge" / "ledger"
    return [i for part in sorted(folder.glob("*.parquet"))
            for i in pq.read_table(part).column("request_id").to_pylist()]


def test_hf_backend_with_tiny_model(ray_cluster, tiny_lm, tmp_path):
    stats = job.run_generate(small(tmp_path, tiny_lm, "hf"))
    ids = ledger_ids(tmp_path)
    assert len(ids) == len(set(ids)) == 2 * RELATIONS  # one explanation + one sample each
    assert stats["generation"]["backend"] == "hf"
    assert stats["generation"]["rows_this_run"] == 2 * RELATIONS
    assert 0 < stats["generation"]["tokens_this_run"] <= 2 * RELATIONS * 8
    assert stats["totals"]["requested"] == RELATIONS
    # a random model's text is rejected, and every rejection is counted by reason
    assert stats["totals"]["accepted"] + sum(stats["totals"]["rejected"].values()) == RELATIONS
    # the artifacts hold exactly what the stats count, each row of the run's relations
    explanations = pq.read_table(tmp_path / "knowledge" / "explanations.parquet").to_pylist()
    synthetic = readers.read_parquet(tmp_path / "knowledge" / "synthetic.parquet")
    assert len(explanations) == stats["explanations"]["accepted"]
    assert len(synthetic) == stats["totals"]["accepted"]
    assert all(inst.source == "llm" and inst.provenance["model"] == tiny_lm
               for inst in synthetic)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_backend_through_ray_data_llm(ray_cluster, tiny_lm, tmp_path):
    """Constrained decoding makes even a random model's SCDG answers compact, schema-shaped
    JSON: every answer follows the constraint (a truncated one is a prefix of such an object),
    and every complete one parses with exactly the schema's keys."""
    import regex

    stats = job.run_generate(small(tmp_path, tiny_lm, "vllm", max_tokens_sample=1200,
                                   temperature=0.0))
    ids = ledger_ids(tmp_path)
    assert len(ids) == len(set(ids)) == 2 * RELATIONS
    assert stats["generation"]["backend"] == "vllm"
    assert stats["generation"]["tokens_this_run"] > 0
    samples = Ledger(str(tmp_path)).of_kind("scdg")
    assert len(samples) == RELATIONS
    complete = 0
    for row in samples:
        text = row["generated_text"]
        assert regex.fullmatch(SAMPLE_REGEX, text, partial=True), text[:200]
        if regex.fullmatch(SAMPLE_REGEX, text):
            complete += 1
            answer = json.loads(text)
            assert list(answer) == SAMPLE_JSON_SCHEMA["required"]
    assert complete >= 1
    # parsed, so no complete sample is rejected as unparseable (the schema checks judge them)
    assert stats["totals"]["rejected"].get("unparseable", 0) <= RELATIONS - complete


def scripted(valid_relations: set[str], calls: list[str], fail_after: int | None = None):
    """A backend stand-in: a valid sample for some relations, chatter otherwise."""

    def fake_generate(cfg, requests):
        for start in range(0, len(requests), 8):  # blocks of 8, like a backend's batches
            if fail_after is not None and start >= fail_after:
                raise KeyboardInterrupt("interrupted")
            yield [answer(request) for request in requests[start:start + 8]]

    def answer(request):
        calls.append(request["request_id"])
        messages = json.loads(request["messages"])
        prompt = messages[-1]["content"]
        relation = prompt.split('"')[1] if prompt.startswith("Relation:") else ""
        if relation in valid_relations:
            text = json.dumps({"relation": relation, "sentence": f"Mara Quill of Tessaly "
                               f"example {request['request_id'][-6:]} joined Brindle Works.",
                               "head": "Mara Quill", "head_type": "person",
                               "tail": "Brindle Works", "tail_type": "organization"})
        else:
            text = "Sure! Here is a new example for you."
        return {"request_id": request["request_id"], "generated_text": text,
                "num_generated_tokens": 5}

    return fake_generate


def test_acceptance_target_retry_cap_and_resume(monkeypatch, tmp_path):
    monkeypatch.setattr(job, "init_ray", lambda address=None: None)
    cfg = small(tmp_path, "scripted", "hf", synthetic_per_relation=2, max_rounds=3,
                oversample=1.5, explanations_per_relation=2)
    calls: list[str] = []
    monkeypatch.setattr(job, "generate", scripted({"per:employee_of"}, calls, fail_after=16))
    with pytest.raises(KeyboardInterrupt):
        job.run_generate(cfg)
    persisted = set(ledger_ids(tmp_path))
    assert len(persisted) == 16  # the two blocks finished before the interruption survived

    calls.clear()
    monkeypatch.setattr(job, "generate", scripted({"per:employee_of"}, calls))
    stats = job.run_generate(cfg)
    assert not persisted & set(calls), "the re-run asked again for rows already written"
    ids = ledger_ids(tmp_path)
    assert len(ids) == len(set(ids))

    employee = stats["relations"]["per:employee_of"]
    assert employee["accepted"] == 2 and employee["requested"] == 3  # ceil(2 * 1.5), 1 round
    founded = stats["relations"]["org:founded_by"]
    # never valid: 3 requests per round, 3 rounds, then the cap stops it
    assert founded["accepted"] == 0 and founded["requested"] == 9
    assert founded["rejected"] == {"unparseable": 9}
    synthetic = readers.read_parquet(tmp_path / "knowledge" / "synthetic.parquet")
    assert Counter(i.relation for i in synthetic) == {"per:employee_of": 2}
    assert all(i.source == "llm" and i.provenance["model"] == "scripted" for i in synthetic)
    assert synthetic[0].head.text == "Mara Quill" and synthetic[0].tail.text == "Brindle Works"

    # a third run finds everything in the ledger and generates nothing
    calls.clear()
    again = job.run_generate(cfg)
    assert calls == [] and again["relations"] == stats["relations"]
    assert len(Ledger(str(tmp_path)).rows) == len(ids)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def openai_server(tiny_lm):
    """vLLM's OpenAI-compatible server on 127.0.0.1 with the tiny model."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1",
           "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    # the OpenAI server module, not the `vllm` CLI: vllm-cpu's CLI looks up the distribution
    # name "vllm" for --version and fails before starting
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_lm,
         "--host", "127.0.0.1", "--port", str(port),
         "--served-model-name", "tiny", "--dtype", "bfloat16", "--max-model-len", "2048",
         "--enforce-eager"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("vllm serve did not come up")
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_http_backend_against_vllm_openai_server(ray_cluster, openai_server, tmp_path):
    stats = job.run_generate(small(tmp_path, "tiny", "http", http_url=openai_server,
                                   http_model="tiny"))
    ids = ledger_ids(tmp_path)
    assert len(ids) == len(set(ids)) == 2 * RELATIONS
    assert stats["generation"]["backend"] == "http"
    assert 0 < stats["generation"]["tokens_this_run"] <= 2 * RELATIONS * 8


def test_job_killed_midway_resumes_without_duplicates(tiny_lm, tmp_path):
    """`jobs/generate.py` killed (SIGKILL) after its first ledger part; the re-run completes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    args = [sys.executable, str(REPO / "jobs" / "generate.py"), "--root", str(tmp_path),
            "--model", tiny_lm, "--backend", "hf", "--explanations-per-relation", "4",
            "--synthetic-per-relation", "1", "--max-rounds", "1", "--oversample", "1",
            "--max-tokens-explanation", "8", "--max-tokens-sample", "8", "--batch-size", "4"]
    ledger = tmp_path / "knowledge" / "ledger"
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(ledger.glob("*.parquet")):
        assert first.poll() is None, "the job ended before writing anything"
        assert time.monotonic() < deadline, "no ledger part within 300 s"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    written = ledger_ids(tmp_path)
    assert 0 < len(written) < 35  # 28 explanations + 7 samples requested

    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"({len(written)} already in the ledger)" in done.stdout
    ids = ledger_ids(tmp_path)
    assert len(ids) == len(set(ids)) == 35
