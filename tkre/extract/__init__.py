"""Extraction: a trained model served on wire-format items, plus relations added at run time.

    wire.py        the request format: items (text + character offsets, or tokens + token
                   spans), request limits, predictions and results
    prototypes.py  entity-pair embeddings, prototypes of run-time relations, the calibration
                   that turns a cosine into a probability
    episodes.py    N-way K-shot episodes: prototype accuracy on FewRel and the calibration fit
                   (the library side of jobs/fewshot_eval.py)
    registry.py    run-time relations as files under ROOT/extract/relations/
    candidates.py  raw text -> sentences and candidate mentions (spaCy: entities and noun
                   chunks, or the caller's), type mapping, ordered pairs within a window
    triples.py     candidate pairs as Instances, and the decision that makes them triples
    thresholds.py  the no-relation threshold fitted on the dev set (after evaluation)
    references.py  the trained labels' reference sentences and the margin gate that keeps a
                   run-time relation off sentences it does not express
    corpus.py      a corpus (.jsonl / .parquet / .txt, local or s3://) as documents with
                   stable ids, cut into blocks
    batch.py       jobs/extract.py: the extractor over a corpus on a Ray Data actor pool,
                   Parquet per block, resumable
    extractor.py   `Extractor`: trained labels and run-time relations ranked together
                   (how the two combine is explained there)
    deployment.py  the Ray Serve deployment and its FastAPI routes (serve/app.py exposes it)

`Extractor` is the whole path without a service:

    from tkre import Extractor
    Extractor.load("runs/demo").extract([{"text": "Ada Lovelace was born in London .",
                                          "head": {"start": 0, "end": 12},
                                          "tail": {"start": 25, "end": 31}}])
    Extractor.load("runs/demo").extract_text("Ada Lovelace was born in London.")  # triples
"""

__all__ = ["Extractor"]


def __getattr__(name: str) -> object:
    # lazily: the batch job's driver and the config parsers import this package without
    # needing torch
    if name == "Extractor":
        from tkre.extract.extractor import Extractor

        return Extractor
    raise AttributeError(f"module 'tkre.extract' has no attribute {name!r}")
