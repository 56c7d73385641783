"""Task-oriented fine-tuning: typed-marker classifier on the K-shot set (+ synthetic data).

Laptop (embedded default: demo data, bundled encoder, local Ray, ROOT=runs/demo):
    python jobs/finetune.py
SemEval-2010 Task 8, 8-shot, seed 42:
    python jobs/finetune.py --data semeval --data-dir ../shared/data/semeval2010_task8 \
        --k 8 --seed 42 --root runs/semeval-k8-s42
On a Ray cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/finetune.py --root s3://bucket/tkre/run1 --num-workers 2 --use-gpu

Writes ROOT/data/ (the K-shot split), ROOT/finetune/ (Ray Train checkpoints, metrics.json) and
ROOT/finetune/model/ (encoder + head + label map). Re-running on the same ROOT resumes.
"""

from __future__ import annotations

import sys

from tkre.cli import run_job
from tkre.config import FinetuneConfig
from tkre.finetune.run import run_finetune

if __name__ == "__main__":
    sys.exit(run_job(FinetuneConfig, run_finetune, description=__doc__))
