"""Pipeline config, presets and stage skipping (the end-to-end run is the README test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tkre import pipeline
from tkre.config import (
    PRESET_DIR,
    ConfigError,
    EvaluateConfig,
    FinetuneConfig,
    GenerateConfig,
    PipelineConfig,
    PretrainConfig,
    parse_args,
)

SECTIONS = (("generate", GenerateConfig), ("pretrain", PretrainConfig),
            ("finetune", FinetuneConfig), ("evaluate", EvaluateConfig))


def stage_configs(cfg: PipelineConfig) -> dict:
    return {name: cfg.stage_config(name, cls) for name, cls in SECTIONS}


def test_no_arguments_is_the_default_preset():
    assert stage_configs(parse_args(PipelineConfig, [])) == \
        stage_configs(parse_args(PipelineConfig, ["--config", "default"]))


@pytest.mark.parametrize("name", ["default", "single-gpu", "cluster-paper"])
def test_presets_build_every_stage_config(name):
    cfg = parse_args(PipelineConfig, ["--config", name])
    configs = stage_configs(cfg)
    assert all(c.root == cfg.root and c.data == cfg.data for c in configs.values())


def test_cluster_preset_is_the_paper_setting():
    cfg = parse_args(PipelineConfig, ["--config", str(PRESET_DIR / "cluster-paper.yaml")])
    pre, gen = cfg.stage_config("pretrain", PretrainConfig), cfg.stage_config(
        "generate", GenerateConfig)
    assert cfg.root.startswith("s3://") and gen.backend == "vllm"
    assert pre.encoder == "roberta-large" and pre.strategy == "deepspeed"
    assert pre.zero_stage in (2, 3) and pre.train.use_gpu and pre.lr == 2e-5
    assert (pre.tau, pre.mask_relation, pre.mask_entity, pre.mask_other) == (0.1, 0.8, 0.5, 0.2)


def test_bad_sections_name_the_field(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^pretrain\.zero_stage"):
        PipelineConfig(pretrain={"zero_stage": 7})
    with pytest.raises(ConfigError, match=r"^finetune\.epoch: unknown field"):
        PipelineConfig(finetune={"epoch": 3})
    with pytest.raises(ConfigError, match="^stages"):
        PipelineConfig(stages="knowledge,sft")
    with pytest.raises(ConfigError, match="^generate: root and data"):
        PipelineConfig(generate={"root": "x"})
    with pytest.raises(ConfigError, match="preset"):
        parse_args(PipelineConfig, ["--config", "no-such-preset"])


def test_complete_stages_are_skipped_and_missing_ones_run(tmp_path: Path, monkeypatch):
    ran, prepared = [], []
    done = {"knowledge": True, "mslm": True, "scl": False, "finetune": False, "evaluate": False}

    def fake_runners(cfg):
        return {name: (lambda splits, name=name: ran.append((name, id(splits))))
                for name in done}

    real_prepare = pipeline.datasets.prepare

    def counting_prepare(*args):
        prepared.append(args)
        return real_prepare(*args)

    monkeypatch.setattr(pipeline, "stage_runners", fake_runners)
    monkeypatch.setattr(pipeline.layout, "STAGE_DONE",
                        {name: (lambda root, name=name: done[name]) for name in done})
    monkeypatch.setattr(pipeline.datasets, "prepare", counting_prepare)
    # given out of order: the pipeline runs them in the method's order
    report = pipeline.run_pipeline(PipelineConfig(root=str(tmp_path / "run"),
                                                  stages="finetune,scl,mslm,knowledge"))
    assert [name for name, _ in ran] == ["scl", "finetune"]
    # the data split is prepared once and the same splits reach every stage
    assert len(prepared) == 1 and len({splits for _, splits in ran}) == 1
    assert report["stages"]["knowledge"] == {"skipped": True}
    assert report["stages"]["scl"]["wall_s"] >= 0
    assert (tmp_path / "run" / "pipeline.json").exists()
