"""Few-shot relations from examples: N-way K-shot prototype accuracy on FewRel val_wiki.

The bundled encoder, 5-way 1-shot and 5-way 5-shot, 500 episodes each:
    python jobs/fewshot_eval.py --data-dir ../shared/data/fewrel --episodes 500 --seed 42
A trained model, writing the calibration its extractor (and the service) then uses:
    python jobs/fewshot_eval.py --data-dir ../shared/data/fewrel \\
        --encoder runs/demo/finetune/model --root runs/demo
A pre-trained encoder, 10-way:
    python jobs/fewshot_eval.py --data-dir ../shared/data/fewrel \\
        --encoder runs/demo/pretrain/scl/model --settings 10x1,10x5

Without --data-dir the FewRel folder is $TKRE_DATA_DIR/fewrel; with neither, the job stops with
an error saying so. Prints one line per setting; with --root writes
ROOT/extract/fewshot_metrics.json and ROOT/extract/calibration.json (tkre.extract.episodes).
"""

from __future__ import annotations

import sys

from tkre.cli import run_job
from tkre.config import FewshotEvalConfig
from tkre.extract.episodes import run_fewshot_eval

if __name__ == "__main__":
    sys.exit(run_job(FewshotEvalConfig, run_fewshot_eval, description=__doc__))
