"""The benchmark behind `jobs/bench.py`: quality against the paper's claim, speed against the
original code's way, written to ROOT/bench/report.{json,md} with PNG plots.

    config.py   BenchConfig with the quick (2-core CPU) and full (GPU node) presets
    units.py    one JSON per measured unit, reused on a re-run; machine and versions
    quality.py  SemEval variants (fine-tuning only, TKRE, four ablations), FewRel episodes
    speed.py    generation, pre-training, serving, encoder FLOP/s, each against its baseline
    report.py   aggregation (mean/std, ratios), markdown, plots
    run.py      run_bench: every part, errors recorded per unit, then the report
"""
