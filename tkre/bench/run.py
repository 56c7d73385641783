"""run_bench: measure every chosen part, keep going past a failed unit, write the report."""

from __future__ import annotations

import os
import time
import traceback

from tkre import layout, storage
from tkre.bench import quality, report, speed, text
from tkre.bench.units import NotMeasured, cached, machine
from tkre.config import NO_RAY_PARTS, BenchConfig
from tkre.pipeline import MemoryWatch


def run_bench(cfg: BenchConfig) -> dict:
    """Quality, FewRel and speed units (each reused when already measured), then the report."""
    from tkre.train.cluster import init_ray

    cfg.require_data()
    started = time.perf_counter()
    host = machine()
    previous = layout.bench_report(cfg.root, "report.json")
    if cfg.report_only and storage.exists(previous):
        # the units were measured on the machine (and under the load) the last run recorded
        host = storage.read_json(previous).get("machine", host)
    if not cfg.report_only and set(cfg.part_list) - set(NO_RAY_PARTS):
        init_ray()
    errors: dict[str, str] = {}
    quality_units: list[dict] = []
    fewrel: dict[str, dict] = {}
    texts: dict[str, dict] = {}
    speed_units: dict[str, dict] = {}
    with MemoryWatch() as watch:
        def guard(name, measure):
            return _guard(errors, name, measure)

        if "quality" in cfg.part_list:
            quality_units = quality.run_quality(cfg, guard)
        if "fewrel" in cfg.part_list:
            fewrel = quality.run_fewrel(cfg, guard)
        if "text" in cfg.part_list:
            texts = text.run_text(cfg, guard)
        for name, measure in speed.measurements(cfg).items():
            result = guard(name, lambda n=name, m=measure: cached(cfg, n, m))
            if result is not None:
                speed_units[name] = result
    if not cfg.report_only:
        host["peak_memory_growth_gb"] = round(watch.peak_growth_gb, 2)
        host["load_average_1m_end"] = os.getloadavg()[0]
    out = report.build_report(cfg.settings(), host, cfg.data, quality_units, fewrel,
                              speed_units, errors, time.perf_counter() - started, texts)
    paths = report.write_report(out, cfg.root, cfg.data)
    print(f"[bench] done in {out['wall_s']:.0f} s; report in {paths['markdown']}"
          + (f"; {len(errors)} unit(s) failed: {', '.join(errors)}" if errors else ""),
          flush=True)
    return out


def _guard(errors: dict, name: str, measure):
    """Run one part; a failure is recorded (and printed) instead of ending the bench."""
    try:
        return measure()
    except NotMeasured as err:
        errors[name] = str(err)
        return None
    except Exception as err:  # noqa: BLE001 - one broken unit must not cost the others
        traceback.print_exc()
        errors[name] = f"{type(err).__name__}: {err}"
        return None
