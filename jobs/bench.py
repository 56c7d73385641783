"""Benchmarks: quality against the paper's claim, speed against the original code's way.

Data: --data-dir / --fewrel-file, or $TKRE_DATA_DIR (its semeval2010_task8/ and fewrel/).
Quick preset (a 2-core CPU, about 20 minutes; a machinery check, no verdicts):
    python jobs/bench.py --quick --root runs/bench-quick
CPU preset (a 2-core CPU: SemEval K=8 on 5 draws, paired comparisons with intervals):
    python jobs/bench.py --preset cpu --root runs/bench-cpu
Full preset (a GPU node: K 8/16/32 x 5 seeds, roberta-large, a 7B generator on vLLM):
    python jobs/bench.py --root runs/bench-full
One part, or other sizes (any flag overrides the preset):
    python jobs/bench.py --quick --parts serving,flops --serve-requests 200
On a Ray cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/bench.py --root /mnt/shared/bench-full

Writes ROOT/bench/report.json, report.md, f1_vs_k.png and speed_ratios.png; every measured unit
is kept as ROOT/bench/units/<unit>-<settings hash>.json, so re-running the same command after a
crash measures only what is missing (delete a unit's JSON to measure it again);
`--report-only` rebuilds the report from the stored units alone.
"""

from __future__ import annotations

import sys

from tkre.bench.run import run_bench
from tkre.cli import run_job
from tkre.config import BenchConfig

if __name__ == "__main__":
    sys.exit(run_job(BenchConfig, run_bench, description=__doc__))
