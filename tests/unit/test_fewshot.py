"""tkre.extract.prototypes and .episodes: prototypes, seeded episodes, calibration, and the
FewRel evaluation job with its config."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tests.tiny import make_tiny_encoder
from tkre.config import ConfigError, FewshotEvalConfig, parse_args
from tkre.extract.episodes import (
    Episode,
    _score_episode,
    episode_accuracy,
    parse_settings,
    run_fewshot_eval,
    sample_episodes,
)
from tkre.extract.prototypes import PairEncoder, fit_calibration, prototype
from tkre.schema import Instance, Span


def test_prototype_is_the_normalised_mean_of_normalised_vectors():
    vectors = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    assert torch.allclose(prototype(vectors), torch.tensor([2 ** -0.5, 2 ** -0.5]))


def test_episodes_are_seeded_and_support_never_meets_query():
    by_relation = {f"P{r}": list(range(10 * r, 10 * r + 10)) for r in range(8)}
    first = sample_episodes(by_relation, 5, 3, 2, episodes=20, seed=7)
    assert first == sample_episodes(by_relation, 5, 3, 2, episodes=20, seed=7)
    assert first != sample_episodes(by_relation, 5, 3, 2, episodes=20, seed=8)
    for episode in first:
        assert len(set(episode.relations)) == 5
        for relation, support, queries in zip(episode.relations, episode.support,
                                              episode.queries, strict=True):
            assert len(support) == 3 and len(queries) == 2 and not set(support) & set(queries)
            assert set(support) | set(queries) <= set(by_relation[relation])
    with pytest.raises(ValueError, match="needs 5 relations"):
        sample_episodes({"a": [1, 2], "b": [3, 4]}, 5, 1, 1, episodes=1, seed=0)


def test_scoring_picks_the_nearest_prototype():
    embeddings = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.0, 1.0]),
                  2: torch.tensor([0.8, 0.6]), 3: torch.tensor([0.6, 0.8])}
    episode = Episode(("a", "b"), ((0,), (1,)), ((2,), (3,)))
    correct, total, positives, negatives = _score_episode(episode, embeddings)
    assert (correct, total) == (2, 2)
    assert positives == pytest.approx([0.8, 0.8]) and negatives == pytest.approx([0.6, 0.6])


def test_calibration_puts_the_threshold_between_the_two_classes():
    rng = random.Random(0)
    positives = [rng.gauss(0.8, 0.05) for _ in range(500)]
    negatives = [rng.gauss(0.6, 0.05) for _ in range(2000)]  # imbalance is weighted out
    calibration = fit_calibration(positives, negatives)
    assert calibration.threshold == pytest.approx(0.7, abs=0.01)
    assert 0 < calibration.temperature < 0.05
    assert float(calibration.probability(torch.tensor(0.9))) > 0.95
    with pytest.raises(ValueError, match="does not separate"):
        fit_calibration(negatives[:100], positives[:100])


def test_settings_parse():
    assert parse_settings("5x1, 10x5") == [(5, 1), (10, 5)]
    assert parse_settings("5-1") == [] and parse_settings("1x1") == []


# --- the job's config: the FewRel folder comes from a flag or $TKRE_DATA_DIR, nowhere else ----

def test_config_without_data_dir_or_env_says_what_to_pass(monkeypatch):
    monkeypatch.delenv("TKRE_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match=r"^data_dir: .*--data-dir or set \$TKRE_DATA_DIR"):
        FewshotEvalConfig()


def test_config_data_dir_from_flag_else_env(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("TKRE_DATA_DIR", str(tmp_path))
    assert FewshotEvalConfig().data_dir == str(tmp_path / "fewrel")
    cfg = parse_args(FewshotEvalConfig, ["--data-dir", "/d", "--settings", "10x1"])
    assert cfg.data_dir == "/d" and cfg.settings == "10x1"
    with pytest.raises(ConfigError, match="^settings: must look like"):
        FewshotEvalConfig(settings="5-1")
    with pytest.raises(ConfigError, match="^episodes: must be >= 1"):
        FewshotEvalConfig(episodes=0)


def test_job_without_the_fewrel_file_names_the_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="val_wiki.json not found: pass --data-dir"):
        run_fewshot_eval(FewshotEvalConfig(data_dir=str(tmp_path)))


# --- on instances, with a tiny encoder and with the real FewRel file ---------------------------

def fewrel_like(relations: int = 6, per_relation: int = 6) -> dict:
    """A FewRel-format object whose relations differ in their connecting word."""
    words = ["born", "founded", "married", "attended", "lives", "works", "city", "school"]
    return {f"P{r}": [{"tokens": ["ada", words[r], "in", "paris", "."][:4 + (i % 2)],
                       "h": ["ada", "Q1", [[0]]], "t": ["paris", "Q2", [[3]]]}
                      for i in range(per_relation)] for r in range(relations)}


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    return str(make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder")))


def test_episode_accuracy_with_a_plain_encoder(tiny_encoder: str):
    instances = [Instance(id=f"{r}-{i}", tokens=("ada", word, "in", "paris"),
                          head=Span(0, 1, ""), tail=Span(3, 4, ""), relation=r)
                 for r, word in (("a", "born"), ("b", "founded"), ("c", "married"))
                 for i in range(4)]
    encoder = PairEncoder.load(tiny_encoder)
    assert encoder.typed is False and encoder.max_length == 128
    vectors = encoder.embed(instances[:3])
    assert vectors.shape == (3, 64) and torch.allclose(vectors.norm(dim=-1), torch.ones(3))
    result = episode_accuracy(encoder, instances, n_way=3, k_shot=1, episodes=5, seed=1)
    # identical sentences per relation: the prototype of the query's own relation is exact
    assert result["accuracy"] == 1.0 and result["episodes"] == 5
    assert set(result["calibration"]) == {"threshold", "temperature"}


def test_job_writes_metrics_and_calibration(tiny_encoder: str, tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "val_wiki.json").write_text(json.dumps(fewrel_like()))
    result = run_fewshot_eval(FewshotEvalConfig(
        data_dir=str(tmp_path / "data"), encoder=tiny_encoder, settings="3x1,3x2",
        episodes=4, root=str(tmp_path / "root")))
    assert set(result["settings"]) == {"3-way-1-shot", "3-way-2-shot"}
    saved = json.loads((tmp_path / "root" / "extract" / "calibration.json").read_text())
    assert saved == result["calibration"]
    assert (tmp_path / "root" / "extract" / "fewshot_metrics.json").exists()


@pytest.mark.real_model
def test_bundled_encoder_on_fewrel_val_wiki_beats_chance(shared_data: Path):
    from tkre.data.readers import read_fewrel
    from tkre.resources import ResourceError

    path = shared_data / "fewrel" / "val_wiki.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    try:
        encoder = PairEncoder.load("bundled-encoder")
    except ResourceError as err:
        pytest.skip(str(err))
    result = episode_accuracy(encoder, read_fewrel(path), n_way=5, k_shot=1, episodes=20,
                              seed=42)
    assert result["accuracy"] > 0.3  # chance is 0.2; 500 episodes give 0.478
