"""Backend choice and HTTP settings (the backends themselves run in tests/integration)."""

import importlib.util
import json
import os

import pytest

from tkre.config import GenerateConfig
from tkre.knowledge import backends


def test_auto_is_hf_on_cpu_and_vllm_with_gpus(monkeypatch):
    assert backends.choose_backend(GenerateConfig()) == "hf"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert backends.choose_backend(GenerateConfig(num_gpus=1)) == "vllm"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert backends.choose_backend(GenerateConfig(num_gpus=1)) == "hf"
    assert backends.choose_backend(GenerateConfig(backend="http")) == "http"


def test_http_settings_from_config_or_environment(monkeypatch):
    monkeypatch.delenv("TKRE_LLM_URL", raising=False)
    monkeypatch.delenv("TKRE_LLM_MODEL", raising=False)
    with pytest.raises(ValueError, match="^http_url:"):
        backends.http_settings(GenerateConfig(backend="http"))
    monkeypatch.setenv("TKRE_LLM_URL", "http://127.0.0.1:9/v1/chat/completions")
    monkeypatch.setenv("TKRE_LLM_MODEL", "m")
    monkeypatch.setenv("MY_KEY", "secret")
    url, model, headers = backends.http_settings(
        GenerateConfig(backend="http", http_api_key_env="MY_KEY"))
    assert (url, model) == ("http://127.0.0.1:9/v1/chat/completions", "m")
    assert headers["Authorization"] == "Bearer secret"
    url, model, headers = backends.http_settings(GenerateConfig(
        backend="http", http_url="http://127.0.0.1:8/x", http_model="n", http_api_key_env="NONE"))
    assert (url, model) == ("http://127.0.0.1:8/x", "n") and "Authorization" not in headers


def test_vllm_cpu_environment_uses_every_core_on_loopback():
    env = backends._vllm_env(GenerateConfig())
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and env["VLLM_HOST_IP"] == "127.0.0.1"
    # the model runs in the engine-core process, with every core's thread (not the actor's 1)
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env["OMP_NUM_THREADS"] == str(os.cpu_count())
    assert backends._vllm_env(GenerateConfig(num_gpus=1)) == {}


def test_vllm_dtype_is_float32_on_a_cpu_without_bf16_instructions(monkeypatch):
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
    assert backends.vllm_dtype(GenerateConfig()) == "float32"
    assert backends.vllm_dtype(GenerateConfig(num_gpus=1)) == "auto"
    assert backends.vllm_dtype(GenerateConfig(dtype="bfloat16")) == "bfloat16"
    assert backends.hf_dtype("auto", gpu=False) == "float32"
    assert backends.hf_dtype("auto", gpu=True) == "bfloat16"
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: True)
    assert backends.vllm_dtype(GenerateConfig()) == "bfloat16"
    assert backends.hf_dtype("auto", gpu=False) == "bfloat16"
    assert backends.hf_dtype("float32", gpu=False) == "float32"
    with pytest.raises(ValueError, match="^dtype:"):
        GenerateConfig(dtype="int8")


def _rows(structured: list[bool], constrained_pass: bool) -> list[dict]:
    return [{"id": i, "sampling_params": backends.vllm_sampling_params(
        {"max_tokens": 8, "seed": i, "structured": flag}, 0.7, 0.95, False, constrained_pass)}
        for i, flag in enumerate(structured)]


def test_vllm_rows_of_a_mixed_pass_concatenate_in_any_batching():
    """ray.data.llm's stages rebuild blocks from row dicts, so a batch holding only free
    requests must still concatenate with one holding constrained requests (Ray Data 2.60 raises
    TypeError when a struct field is all-null in one block: seen once in CI)."""
    import pyarrow as pa
    from ray.data._internal.arrow_ops import transform_pyarrow

    mixed = pa.Table.from_pylist(_rows([True, False], constrained_pass=True))
    # a batch sliced from a mixed block comes back as dicts with explicit None fields
    free_after_mixed = pa.Table.from_pylist(mixed.slice(1).to_pylist())
    for blocks in ([pa.Table.from_pylist(_rows([False], True)),
                    pa.Table.from_pylist(_rows([True], True))],
                   [free_after_mixed, pa.Table.from_pylist(_rows([True], True))],
                   [free_after_mixed, mixed]):
        combined = transform_pyarrow.concat(blocks).to_pylist()
        for row in combined:  # every request carries exactly one constraint for vLLM
            constraint = row["sampling_params"]["structured_outputs"]
            assert sum(value is not None for value in constraint.values()) == 1
    # the shape this replaced: the free request without the field fails Ray's concat
    bare = pa.Table.from_pylist(_rows([True, False], constrained_pass=False)).slice(1)
    with pytest.raises(TypeError):
        transform_pyarrow.concat([pa.Table.from_pylist(bare.to_pylist()),
                                  pa.Table.from_pylist(_rows([True], False))])


def test_a_pass_without_constrained_requests_sends_no_constraint():
    params = _rows([False, False], constrained_pass=False)
    assert all("structured_outputs" not in row["sampling_params"] for row in params)
    [free] = _rows([False], constrained_pass=True)
    assert free["sampling_params"]["structured_outputs"] == backends.ANY_TEXT


def _requests(sizes: list[tuple[int, int]]) -> list[dict]:
    """Requests of `chars`-long prompts (distinct unless equal) and `max_tokens` budgets."""
    return [{"request_id": f"r{i}", "messages": json.dumps([{"role": "user",
                                                             "content": "x" * chars}]),
             "max_tokens": budget, "structured": False, "seed": i}
            for i, (chars, budget) in enumerate(sizes)]


def test_auto_on_a_cpu_picks_vllm_only_for_a_pass_big_enough(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    small = [(2800 + i, 192) for i in range(8)]  # 8 distinct ~700-token prompts
    big = [(2800 + i, 192) for i in range(400)]
    assert backends.choose_backend(GenerateConfig(), _requests(small)) == "hf"
    assert backends.choose_backend(GenerateConfig(), _requests(big)) == "vllm"
    # the decision follows the cost model: equal costs at the crossover
    hf, vllm = backends.CPU_COSTS["hf"], backends.CPU_COSTS["vllm"]
    prompt, budget = backends.pass_size(_requests(big))
    assert vllm.seconds(prompt, budget) < hf.seconds(prompt, budget)
    assert backends.pass_size(_requests([(40, 8), (40, 8)]))[0] == pytest.approx(
        len(_requests([(40, 8)])[0]["messages"]) / backends.CHARS_PER_TOKEN)  # shared once
    # overrides win, and without vllm installed auto stays on hf
    assert backends.choose_backend(GenerateConfig(backend="hf"), _requests(big)) == "hf"
    assert backends.choose_backend(GenerateConfig(backend="vllm"), _requests(small)) == "vllm"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert backends.choose_backend(GenerateConfig(), _requests(big)) == "hf"


def test_a_pass_goes_shortest_prompt_first_with_identical_prompts_together():
    requests = _requests([(30, 8), (10, 8), (20, 8), (10, 8), (20, 8)])
    requests[4]["messages"] = requests[4]["messages"].replace("x", "y")  # same length, other text
    ordered = backends.order_requests(requests)
    assert [r["request_id"] for r in ordered] == ["r1", "r3", "r2", "r4", "r0"]
    assert sorted(map(id, ordered)) == sorted(map(id, requests))  # the rows themselves, ids kept


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """HFGenerator on a tiny Llama whose weights are scaled up so that greedy answers depend on
    the prompt (a freshly initialised one repeats one token)."""
    import torch

    from tests.tiny import make_tiny_causal_lm

    folder = make_tiny_causal_lm(tmp_path_factory.mktemp("lm"))
    gen = backends.HFGenerator(str(folder), temperature=0.0, top_p=1.0, threads=1,
                               dtype="float32")
    torch.manual_seed(0)
    with torch.no_grad():
        for param in gen.model.parameters():
            param.normal_(0.0, 0.3)
    return gen


def test_hf_prefills_each_distinct_prompt_once_and_answers_as_one_at_a_time(generator):
    import torch

    texts = ["Born in Brennholm , Arvid", "The mayor proudly noted that Olivia Trent was born",
             "Born in Brennholm , Arvid"]
    messages = [json.dumps([{"role": "user", "content": t}]) for t in texts]
    batch = {backends.ID: ["a", "b", "c"], "messages": messages, "max_tokens": [10, 6, 10],
             "seed": [0, 0, 0], "structured": [False] * 3}
    before = generator.prefilled_tokens
    out = generator(batch)
    prompts = [generator.encode(m) for m in messages]
    assert out["num_prompt_tokens"] == [len(p) for p in prompts]
    assert generator.prefilled_tokens - before == len(prompts[0]) - 1 + len(prompts[1]) - 1
    expected = []
    for prompt, limit in zip(prompts, [10, 6, 10], strict=True):
        ids = torch.tensor([prompt])
        row = generator.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=limit, do_sample=False,
                                       pad_token_id=generator.tokenizer.pad_token_id)
        expected.append(generator.tokenizer.decode(row[0, len(prompt):],
                                                   skip_special_tokens=True))
    assert out["generated_text"] == expected and len(set(expected)) == 2
    assert out[backends.ID] == ["a", "b", "c"] and out["num_generated_tokens"] == [10, 6, 10]
    # no prompt repeated: generate() prefills the padded batch, with the same answers
    distinct = {key: value[:2] for key, value in batch.items()}
    before = generator.prefilled_tokens
    assert generator.shared_prefill(prompts[:2]) is None
    assert generator(distinct)["generated_text"] == expected[:2]
    assert generator.prefilled_tokens - before == sum(map(len, prompts[:2]))


def test_vllm_rows_carry_the_prompt_tokens_hf_would_compute(generator, monkeypatch):
    monkeypatch.setattr(backends, "resolve_model", lambda model: model)
    items = [{backends.ID: "a", "messages": json.dumps([{"role": "user", "content": "Hi ."}])}]
    cfg = GenerateConfig(model=str(generator.tokenizer.name_or_path))
    [row] = backends.with_prompt_ids(cfg, items)
    assert row["prompt_ids"] == generator.encode(items[0]["messages"])
    assert row[backends.ID] == "a" and row["messages"] == items[0]["messages"]


def test_a_json_row_stops_once_its_sample_object_is_complete(generator):
    import torch

    tok = generator.tokenizer
    prompt = [5, 6, 7]  # the answer starts after the (padded) prompt's width

    def stops(answer: str, json_row: bool = True) -> bool:
        ids = torch.tensor([prompt + tok(answer, add_special_tokens=False)["input_ids"]])
        return backends.JSONAnswerStop(tok, len(prompt), [json_row])(ids, None).tolist()[0]

    sample = '{"sentence": "Ann joined Acme .", "head": "Ann"}'
    assert stops(sample) and stops("Sure! " + sample)
    assert not stops(sample[:-1])  # not closed yet
    assert not stops('{"head": "Ann"}')  # no sentence: the filter would look further
    assert not stops(sample, json_row=False)  # an explanation runs to its end
    assert not backends.JSONAnswerStop(tok, 3, [False]).active


def test_hf_cpu_threads_sleep_at_barriers_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert backends._hf_env(GenerateConfig()) == {"OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert backends._hf_env(GenerateConfig()) == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert backends._hf_env(GenerateConfig(num_gpus=1)) == {}
