"""The benchmark behind `jobs/bench.py`: quality against the paper's claim, speed against the
original code's way, written to ROOT/bench/report.{json,md} with PNG plots.

    (BenchConfig and its quick / full presets live with every other config, tkre.config)
    units.py    one JSON per measured unit, reused on a re-run; machine and versions
    quality.py  SemEval variants (fine-tuning only, TKRE, four ablations), FewRel episodes
    speed.py    generation, pre-training, serving, encoder FLOP/s, each against its baseline
    serving.py  the Serve load generator (batched vs one call per request)
    baselines.py  the original code's recipes (one prompt at a time, HF Trainer MSLM)
    report.py   aggregation (mean/std, ratios), markdown, plots
    run.py      run_bench: every part, errors recorded per unit, then the report
"""
