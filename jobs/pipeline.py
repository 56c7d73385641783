"""The whole TKRE method: data -> knowledge (LLM) -> MSLM -> SCL -> fine-tune -> evaluate.

Laptop (embedded default: demo data, bundled encoder and generator, local Ray, ROOT=runs/demo):
    python jobs/pipeline.py
A preset shipped with the package (default, single-gpu, cluster-paper) or any YAML file:
    python jobs/pipeline.py --config single-gpu --root runs/gpu1
On a Ray cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/pipeline.py --config tkre/configs/cluster-paper.yaml

Finished stages are skipped and interrupted ones resume, so re-running the same command after a
failure continues where it stopped. Writes everything under ROOT, and ROOT/pipeline.json.
"""

from __future__ import annotations

import sys

from tkre.cli import run_job
from tkre.config import PipelineConfig
from tkre.pipeline import run_pipeline

if __name__ == "__main__":
    sys.exit(run_job(PipelineConfig, run_pipeline, description=__doc__))
