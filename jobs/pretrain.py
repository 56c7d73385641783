"""Two-stage knowledge-guided pre-training: MSLM (stage 1), then MSLM + SCL (stage 2).

Laptop (embedded default: demo data, bundled encoder, local Ray, ROOT=runs/demo; the knowledge
artifacts are generated first with the bundled LLM when ROOT has none):
    python jobs/pretrain.py
On a Ray cluster (DeepSpeed ZeRO-2 on 8 GPU workers, checkpoints in S3):
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/pretrain.py --root s3://bucket/tkre/run1 --strategy deepspeed \
        --zero-stage 2 --num-workers 8 --use-gpu

Writes ROOT/pretrain/mslm/ and ROOT/pretrain/scl/: Ray Train checkpoints, model/ (a plain
transformers masked-LM encoder) and metrics.json. Re-running on the same ROOT resumes an
interrupted stage from its latest checkpoint and skips finished ones.
"""

from __future__ import annotations

import sys

from tkre.cli import run_job
from tkre.config import PretrainConfig
from tkre.pretrain.run import run_pretrain

if __name__ == "__main__":
    sys.exit(run_job(PretrainConfig, run_pretrain, description=__doc__))
