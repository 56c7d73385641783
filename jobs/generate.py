"""Knowledge generation: explanations (EDKG) and schema-checked synthetic sentences (SCDG).

Laptop (embedded default: demo data, bundled SmolLM2 generator, local Ray, ROOT=runs/demo):
    python jobs/generate.py
SemEval 8-shot with the transformers backend:
    python jobs/generate.py --data semeval --data-dir ../shared/data/semeval2010_task8 \
        --k 8 --seed 42 --root runs/semeval-k8-s42 --backend hf
On a Ray cluster with vLLM engines on GPU workers:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/generate.py --root s3://bucket/tkre/run1 --backend vllm \
        --model /models/Llama-3.1-8B-Instruct --num-gpus 1 --concurrency 4 --batch-size 64

Writes ROOT/knowledge/explanations.parquet, synthetic.parquet (accepted only), stats.json
(requested / accepted / rejected by reason per relation, tokens/s) and ledger/ (every generated
row). A re-run on the same ROOT skips every request already in the ledger.
"""

from __future__ import annotations

import sys

from tkre.cli import run_job
from tkre.config import GenerateConfig
from tkre.knowledge.job import run_generate

if __name__ == "__main__":
    sys.exit(run_job(GenerateConfig, run_generate, description=__doc__))
