"""Configs: defaults run the embedded default; bad values name the field; YAML < flags."""

import os
import re

import pytest

from tkre.config import (
    ConfigError,
    EvaluateConfig,
    FinetuneConfig,
    GenerateConfig,
    PipelineConfig,
    PretrainConfig,
    build_parser,
    from_dict,
    parse_args,
)


def test_defaults_are_the_embedded_default():
    cfg = FinetuneConfig()
    assert cfg.root == os.path.abspath("runs/demo")
    assert cfg.data.data == "demo" and cfg.encoder == "auto"
    assert cfg.data.k == 8 and cfg.data.seed == 42 and cfg.train.num_workers == 1


def test_the_default_preset_file_is_the_no_argument_run():
    # the embedded default lives in PipelineConfig and is written out in tkre/configs/default.yaml
    # (`--config default`); each stage must get the same config from both
    plain = parse_args(PipelineConfig, [])
    preset = parse_args(PipelineConfig, ["--config", "default"])
    assert plain.data == preset.data and plain.stage_list == preset.stage_list
    for section, cls in [("generate", GenerateConfig), ("pretrain", PretrainConfig),
                         ("finetune", FinetuneConfig), ("evaluate", EvaluateConfig)]:
        assert plain.stage_config(section, cls) == preset.stage_config(section, cls), section


@pytest.mark.parametrize("cls", [FinetuneConfig, EvaluateConfig, PretrainConfig, GenerateConfig,
                                 PipelineConfig])
def test_local_roots_become_absolute_and_s3_roots_stay(cls, tmp_path, monkeypatch):
    # paths derived from the root reach Ray workers, which run in another working directory
    monkeypatch.chdir(tmp_path)
    assert cls(root="runs/x").root == str(tmp_path / "runs" / "x")
    assert cls(root="s3://bucket/run").root == "s3://bucket/run"


@pytest.mark.parametrize(("values", "field"), [
    ({"epochs": 0}, "epochs"),
    ({"lr": -1.0}, "lr"),
    ({"marker": "fancy"}, "marker"),
    ({"data": {"data": "conll"}}, "data.data"),
    ({"data": {"data": "semeval"}}, "data.data_dir"),
    ({"data": {"k": 0}}, "data.k"),
    ({"train": {"num_workers": 0}}, "train.num_workers"),
    ({"nonsense": 1}, "nonsense"),
])
def test_invalid_values_name_the_field(values, field):
    with pytest.raises(ConfigError) as err:
        from_dict(FinetuneConfig, values)
    assert str(err.value).startswith(f"{field}:")


def test_cli_flags_follow_the_contract():
    cfg = parse_args(FinetuneConfig, ["--data", "semeval", "--data-dir", "/d", "--k", "16",
                                      "--seed", "13", "--root", "/r", "--num-workers", "2",
                                      "--no-use-synthetic", "--max-test", "none"])
    data = cfg.data
    assert (data.data, data.data_dir, data.k, data.seed) == ("semeval", "/d", 16, 13)
    assert cfg.root == "/r" and cfg.train.num_workers == 2 and cfg.use_synthetic is False
    assert cfg.data.max_test is None


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text("epochs: 3\nlr: 0.001\ndata:\n  k: 16\n  seed: 21\ntrain:\n  num_workers: 2\n")
    cfg = parse_args(FinetuneConfig, ["--config", str(path), "--k", "32"])
    assert cfg.epochs == 3 and cfg.lr == 0.001 and cfg.train.num_workers == 2
    assert cfg.data.k == 32 and cfg.data.seed == 21


def test_yaml_error_names_nested_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  k: -3\n")
    with pytest.raises(ConfigError, match=r"^data\.k: must be >= 1"):
        parse_args(FinetuneConfig, ["--config", str(path)])


def test_bad_flag_type_exits_with_usage():
    with pytest.raises(SystemExit):
        parse_args(FinetuneConfig, ["--k", "eight"])


def test_help_mentions_every_flag():
    text = build_parser(EvaluateConfig).format_help()
    for flag in ("--root", "--data", "--data-dir", "--k", "--seed", "--batch-size", "--plot"):
        assert flag in text


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("epochs: 1.5\n", "epochs: must be an integer, got 1.5"),
    ("data: {k: 2.5}\n", "data.k: must be an integer, got 2.5"),
    ("data: {k: true}\n", "data.k: must be an integer, got True"),
    ("lr: fast\n", "lr: must be a number, got 'fast'"),
    ("use_synthetic: 'no'\n", "use_synthetic: must be true or false, got 'no'"),
    ("epochs: [1\n", "not valid YAML at line 2"),
])
def test_yaml_values_are_type_checked_naming_the_field(yaml_text, message, tmp_path):
    """YAML gives any type: 1.5 epochs failed in the worker after minutes, k: 2.5 drew 3 per
    label, k: true drew 1, and malformed YAML gave a traceback (issue 14)."""
    from tkre.config import FinetuneConfig, parse_args

    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_args(FinetuneConfig, ["--config", str(path)])


def test_yaml_1_1_exponent_floats_are_read_as_numbers(tmp_path):
    from tkre.config import FinetuneConfig, parse_args

    path = tmp_path / "lr.yaml"
    path.write_text("lr: 1e-4\n")  # a string to PyYAML (no dot)
    assert parse_args(FinetuneConfig, ["--config", str(path)]).lr == pytest.approx(1e-4)
