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

from tkre.extract.extractor import Extractor

__all__ = ["Extractor"]
