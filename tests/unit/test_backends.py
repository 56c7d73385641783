"""Backend choice and HTTP settings (the backends themselves run in tests/integration)."""

import importlib.util

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
    assert backends._vllm_env(GenerateConfig(num_gpus=1)) == {}


def test_vllm_dtype_is_float32_on_a_cpu_without_bf16_instructions(monkeypatch):
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
    assert backends.vllm_dtype(GenerateConfig()) == "float32"
    assert backends.vllm_dtype(GenerateConfig(num_gpus=1)) == "auto"
    assert backends.vllm_dtype(GenerateConfig(dtype="bfloat16")) == "bfloat16"
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: True)
    assert backends.vllm_dtype(GenerateConfig()) == "bfloat16"
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
