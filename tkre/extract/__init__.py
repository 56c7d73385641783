"""Extraction: a trained model served on wire-format items, plus relations added at run time.

    wire.py        the request format: items (text + character offsets, or tokens + token
                   spans), request limits, predictions and results
    prototypes.py  entity-pair embeddings, prototypes of run-time relations, the calibration
                   that turns a cosine into a probability
    episodes.py    N-way K-shot episodes: prototype accuracy on FewRel and the calibration fit
                   (the library side of jobs/fewshot_eval.py)
    registry.py    run-time relations as files under ROOT/extract/relations/
    extractor.py   `Extractor`: trained labels and run-time relations ranked together
                   (how the two combine is explained there)
    deployment.py  the Ray Serve deployment and its FastAPI routes (serve/app.py exposes it)

`Extractor` is the whole path without a service:

    from tkre.extract import Extractor
    Extractor.from_root("runs/demo").extract([{"text": "Ada Lovelace was born in London .",
                                               "head": {"start": 0, "end": 12},
                                               "tail": {"start": 25, "end": 31}}])
"""

from tkre.extract.extractor import Extractor

__all__ = ["Extractor"]
