"""Evaluate ROOT/finetune/model on the full test set of the run's data.

    python jobs/evaluate.py                      # embedded default (ROOT=runs/demo)
    python jobs/evaluate.py --data semeval --data-dir ../shared/data/semeval2010_task8 \
        --k 8 --seed 42 --root runs/semeval-k8-s42

Writes ROOT/eval/metrics.json: micro_f1 (every label but the no-relation one, TACRED
convention), per_relation precision/recall/F1, semeval_macro_f1 (SemEval's official score) for
SemEval; and ROOT/eval/confusion.png. The data flags must match the ones fine-tuning used.
Then fits the model's no-relation threshold for raw text on the dev set and writes it, with the
relation types, to ROOT/finetune/model/text_extraction.json (tkre.extract.thresholds).
"""

from __future__ import annotations

import sys

from tkre.cli import run_job
from tkre.config import EvaluateConfig
from tkre.extract.thresholds import evaluate_and_fit

if __name__ == "__main__":
    sys.exit(run_job(EvaluateConfig, evaluate_and_fit, description=__doc__))
