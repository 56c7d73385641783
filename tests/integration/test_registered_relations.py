"""A relation registered at run time on the demo model (the bundled encoder fine-tuned on the
demo data, one epoch) takes the sentences that express it and leaves the others alone.

Before the reference gate (issue 14), registering per:city_of_death from one example flipped
all three unrelated sentences below on a one-epoch demo model, and "Ada Lovelace was born in
London." on the ten-epoch one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tkre import layout
from tkre.config import FinetuneConfig, TrainConfig
from tkre.data.datasets import load_prepared
from tkre.extract import Extractor
from tkre.finetune.markers import encode
from tkre.finetune.run import run_finetune

pytestmark = [pytest.mark.integration, pytest.mark.real_model]


def item(text: str, head: str, tail: str, head_type: str, tail_type: str) -> dict:
    start, end = text.index(head), text.index(tail)
    return {"text": text, "head": {"start": start, "end": start + len(head), "type": head_type},
            "tail": {"start": end, "end": end + len(tail), "type": tail_type}}


UNRELATED = [
    item("Ada Lovelace was born in London .", "Ada Lovelace", "London", "person", "city"),
    item("Steve Jobs founded Apple in 1976 .", "Apple", "Steve Jobs", "organization", "person"),
    item("Marie Curie studied at the University of Paris .", "Marie Curie",
         "University of Paris", "person", "organization")]
EXAMPLE = item("Oscar Wilde died in Paris in 1900 .", "Oscar Wilde", "Paris", "person", "city")
DEATH = item("Abraham Lincoln died in Washington in 1865 .", "Abraham Lincoln", "Washington",
             "person", "city")


@pytest.fixture(scope="module")
def demo_root(ray_cluster, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    run_finetune(FinetuneConfig(root=str(root), epochs=1, train=TrainConfig(cpus_per_worker=2)))
    return root


def test_a_registered_relation_takes_only_its_sentences(demo_root: Path):
    assert (demo_root / "finetune" / "model" / layout.MODEL_REFERENCE_FILE).exists()
    extractor = Extractor.from_root(str(demo_root), refresh_s=0)
    assert extractor.info()["references"]["sentences"] == 128  # K-shot train + dev, 8 x 8 each
    test = load_prepared(str(demo_root)).test
    encoded = [encode(extractor.tokenizer, inst, extractor.meta.typed_markers,
                      extractor.meta.max_length) for inst in test]
    before = extractor.extract(UNRELATED, top_k=1)
    test_before = [p.relation for p in extractor.predict(encoded, top_k=1)]

    info = extractor.register("per:city_of_death", [EXAMPLE])
    assert info["margin_threshold"] is not None
    after = extractor.extract([*UNRELATED, DEATH], top_k=1)
    assert [r["relation"] for r in after[:3]] == [r["relation"] for r in before]
    assert after[3]["relation"] == "per:city_of_death"
    test_after = [p.relation for p in extractor.predict(encoded, top_k=1)]
    flipped = sum(a == "per:city_of_death" != b
                  for a, b in zip(test_after, test_before, strict=True))
    assert flipped / len(test) < 0.05
