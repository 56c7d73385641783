"""The FLOP limit of a generation pass, the fraction of it reached, and what a pass sends."""

from __future__ import annotations

import json

import pytest

from tests.tiny import make_tiny_causal_lm
from tkre.config import DataConfig, GenerateConfig
from tkre.knowledge import job, throughput
from tkre.schema import Instance, RelationSchema, Span
from tkre.train import flops
from tkre.train.flops import DecoderShape, generation_flops

TINY = DecoderShape(layers=2, attention_width=4, hidden=4, vocab_size=10,
                    non_embedding_params=100)


def test_generation_flops_match_a_hand_count():
    # 3 prompt tokens, 2 generated: positions 0..3 go through the model (the last generated
    # token is never fed back); position p attends to p + 1 keys; 2 LM-head projections
    linear = 4 * 2 * 100
    attention = sum(4 * 2 * 4 * (p + 1) for p in range(4))
    head = 2 * 2 * 10 * 4
    assert generation_flops(TINY, 3, 2) == linear + attention + head == 1280
    # an empty answer still took the step that produced its end token
    assert generation_flops(TINY, 3, 0) == generation_flops(TINY, 3, 1)


def test_decoder_shape_counts_parameters_without_embeddings(tmp_path):
    shape = DecoderShape.of_model(str(make_tiny_causal_lm(tmp_path / "lm")))
    hidden, inner = 128, 256
    attention = 4 * hidden * hidden  # q, k, v, o with 2 heads of 64 (as many kv heads)
    mlp = 3 * hidden * inner  # gate, up, down
    norms = 2 * hidden + hidden  # two per layer, one final
    assert shape.layers == 1 and shape.attention_width == hidden and shape.hidden == hidden
    assert shape.non_embedding_params == attention + mlp + norms


def record(backend: str, sizes: list[tuple[int, int]], prompts: list[str], wall: float) -> dict:
    rec = throughput.new_pass(backend)
    rows = [{"request_id": str(i), "num_prompt_tokens": p, "num_generated_tokens": g}
            for i, (p, g) in enumerate(sizes)]
    throughput.count(rec, rows, {str(i): text for i, text in enumerate(prompts)})
    rec["wall_s"] = wall
    return rec


def test_fraction_of_limit_is_the_limit_over_wall_time(monkeypatch):
    monkeypatch.setattr(throughput, "model_shape", lambda cfg: TINY)
    monkeypatch.setattr(throughput, "generation_peak", lambda *args: (640.0, "fake peak"))
    passes = [record("hf", [(3, 2), (3, 2), (5, 1)], ["a", "a", "b"], wall=8.0)]
    stats = throughput.generation_stats(GenerateConfig(), passes, "hf")
    work = 2 * 1280 + generation_flops(TINY, 5, 1)
    assert stats["limit_s"] == pytest.approx(work / 640.0)
    assert stats["fraction_of_limit"] == pytest.approx(work / 640.0 / 8.0)
    assert stats["tokens_per_s"] == pytest.approx(5 / 8.0)
    assert (stats["prompt_tokens"], stats["generated_tokens"]) == (11, 5)
    assert stats["distinct_prompt_tokens"] == 8  # "a" counted once
    assert (stats["peak_flops"], stats["peak_source"], stats["backend"]) == (640.0, "fake peak",
                                                                              "hf")
    # passes on engines of different dtypes each use their own peak
    monkeypatch.setattr(throughput, "vllm_dtype", lambda cfg: "bfloat16")
    monkeypatch.setattr(throughput, "hf_dtype", lambda dtype, gpu: "float32")
    monkeypatch.setattr(throughput, "generation_peak",
                        lambda dtype, *args: (1280.0 if dtype == "bfloat16" else 640.0, dtype))
    two = passes + [record("vllm", [(3, 2)], ["a"], wall=2.0)]
    stats = throughput.generation_stats(GenerateConfig(), two, "hf")
    assert stats["limit_s"] == pytest.approx(work / 640.0 + 1.0)
    assert stats["fraction_of_limit"] == pytest.approx((work / 640.0 + 1.0) / 10.0)
    assert stats["peak_flops"] is None and stats["backend"] == "hf,vllm"


def test_no_limit_without_a_model_config_or_a_known_peak(monkeypatch):
    passes = [record("hf", [(3, 2)], ["a"], wall=1.0)]
    stats = throughput.generation_stats(GenerateConfig(model="not-a-model"), passes, "hf")
    assert stats["limit_s"] is None and stats["fraction_of_limit"] is None
    assert stats["tokens_per_s"] == 2.0
    assert throughput.generation_stats(GenerateConfig(), [], "hf")["fraction_of_limit"] is None
    assert flops.generation_peak("bfloat16", 1, 1, "B999")[0] is None
    peak, source = flops.generation_peak("bfloat16", 1, 2, "H100")
    assert peak == 2 * 989e12 and "H100" in source


def test_a_relations_scdg_requests_share_one_prompt_per_round():
    people = [Instance(id=f"i{n}", tokens=("Ann", str(n), "joined", "Acme", "."),
                       head=Span(0, 2, f"Ann {n}", "person"), tail=Span(3, 4, "Acme", "org"),
                       relation="per:employee_of") for n in range(6)]
    schemas = {"per:employee_of": RelationSchema("per:employee_of", "", ("person",), ("org",))}
    cfg = GenerateConfig(root="/tmp/unused", data=DataConfig(), demonstrations=4, oversample=2.0)
    first = job.synthetic_requests(cfg, people, schemas, {"per:employee_of": 3}, 0)
    assert len(first) == 6 and len({r["request_id"] for r in first}) == 6
    assert len({r["messages"] for r in first}) == 1  # byte-identical: one prefix to compute
    shown = [line for line in json.loads(first[0]["messages"])[-1]["content"].splitlines()
             if line.startswith("{")]
    assert len(shown) == 4
    later = job.synthetic_requests(cfg, people, schemas, {"per:employee_of": 1}, 1)
    assert later[0]["messages"] != first[0]["messages"]  # a new draw each round
