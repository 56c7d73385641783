"""From measured units to ROOT/bench/report.json, report.md and the PNG plots.

Pure functions over plain dicts (no Ray, no models), so the aggregation is unit-tested with fake
measurements. Every ratio is ours over the baseline: above 1 means ours is faster.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from pathlib import Path

from tkre import layout, storage
from tkre.bench import stats
from tkre.config import VARIANTS

# std over seeds: the sample std (ddof 1), an estimate of the draw-to-draw spread
STD_DDOF = 1


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    spread = sum((v - mean) ** 2 for v in values) / max(1, len(values) - STD_DDOF)
    return mean, math.sqrt(spread)


def aggregate_quality(units: list[dict]) -> dict:
    """{K: {variant: micro_f1_mean/std, semeval_macro_f1_mean/std, seeds, per_seed}}."""
    groups: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for unit in units:
        groups[(unit["k"], unit["variant"])].append(unit)
    out: dict[str, dict] = {}
    order = {v: i for i, v in enumerate(VARIANTS)}
    for (k, variant), rows in sorted(groups.items(), key=lambda g: (g[0][0],
                                                                     order.get(g[0][1], 99))):
        rows = sorted(rows, key=lambda r: r["seed"])
        entry = {"seeds": [r["seed"] for r in rows], "n_seeds": len(rows),
                 "same_as": rows[0].get("same_as") if all(r.get("same_as") for r in rows)
                 else None,
                 "test_examples": rows[0]["test_examples"],
                 "per_seed": {str(r["seed"]): {"micro_f1": r["micro_f1"],
                                               "semeval_macro_f1": r.get("semeval_macro_f1")}
                              for r in rows}}
        for metric in ("micro_f1", "semeval_macro_f1"):
            values = [r[metric] for r in rows if r.get(metric) is not None]
            mean, std = mean_std(values) if values else (None, None)
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean, std
        out.setdefault(str(k), {})[variant] = entry
    return out


# What the paper claims (TKRE, IJCAI 2025). Its result tables could not be retrieved here
# (../shared/notes/paper.md), so the checks are its qualitative claims: TKRE beats the
# fine-tuned baseline (+7.8 average F1 on the TYP Marker backbone per a secondary summary, the
# largest gains at K=8), and removing any one of EDKG, SCDG, MSLM, SCL lowers F1.
CLAIMS = (
    ("finetune_only", "TKRE beats fine-tuning alone"),
    ("no_edkg", "explanations (EDKG) help"),
    ("no_scdg", "synthetic sentences (SCDG) help"),
    ("no_mslm", "stage-1 MSLM pre-training helps"),
    ("no_scl", "stage-2 SCL pre-training helps"),
)


def _f1_by_seed(row: dict, variant: str) -> dict[str, float]:
    entry = row.get(variant) or {}
    return {seed: cell["micro_f1"] for seed, cell in entry.get("per_seed", {}).items()}


def draw_bootstraps(units: list[dict], k: int, variant: str, baseline: str) -> dict:
    """Per draw (seed): the paired bootstrap of variant - baseline over the test sentences,
    where both units kept their predictions on the same sentences."""
    by_key = {(u["k"], u["variant"], u["seed"]): u for u in units}
    out = {}
    for (unit_k, name, seed), mine in sorted(by_key.items(), key=lambda item: item[0][2]):
        theirs = by_key.get((k, baseline, seed))
        if unit_k != k or name != variant or theirs is None:
            continue
        ours, other = mine.get("predictions"), theirs.get("predictions")
        if not ours or not other or ours["id"] != other["id"]:
            continue
        out[str(seed)] = stats.paired_bootstrap(ours["gold"], ours["pred"], other["pred"],
                                                mine.get("no_relation", "Other"))
    return out


def paired_gains(units: list[dict], table: dict) -> dict:
    """{K: {variant: variant - finetune_only in micro-F1 points}}: mean and 95 % t-interval
    over the draws both ran (`mean`, `ci95`, `draws`, `per_draw`), and each draw's paired
    bootstrap over test sentences (`bootstrap`)."""
    out: dict[str, dict] = {}
    for k, row in table.items():
        if "finetune_only" not in row:
            continue
        for variant in row:
            if variant == "finetune_only":
                continue
            gain = stats.paired_gain(_f1_by_seed(row, variant), _f1_by_seed(row, "finetune_only"))
            if gain is not None:
                gain["bootstrap"] = draw_bootstraps(units, int(k), variant, "finetune_only")
                out.setdefault(k, {})[variant] = gain
    return out


def check_claims(units: list[dict], table: dict, verdicts: bool = True,
                 floor: float | None = None) -> list[dict]:
    """Per K and claim: tkre - the other variant, paired over the draws both ran.

    A claim holds only where the 95 % t-interval of the paired difference lies above zero; no
    verdict where the preset is a machinery check (`verdicts` off) or where fine-tuning alone
    stayed under its floor (an under-trained baseline makes every gain meaningless).
    """
    out = []
    for k in sorted(table, key=int):
        row = table[k]
        if "tkre" not in row:
            continue
        baseline = row.get("finetune_only", {}).get("micro_f1_mean")
        for other, claim in CLAIMS:
            if other not in row:
                continue
            gain = stats.paired_gain(_f1_by_seed(row, "tkre"), _f1_by_seed(row, other))
            if gain is None:
                continue
            if row[other].get("same_as") == "tkre":
                judged = "not tested (same run as tkre: nothing to remove)"
            else:
                judged = stats.verdict(gain, baseline, floor, verdicts)
            out.append({"k": int(k), "claim": claim, "compared": f"tkre - {other}",
                        "seeds": sorted(int(s) for s in gain["per_draw"]),
                        "gain": gain, "bootstrap": draw_bootstraps(units, int(k), "tkre", other),
                        "verdict": judged})
    return out


def aggregate_fewrel(results: dict[str, dict]) -> dict:
    """{"5way1shot": {encoder: {accuracy, ci95, episodes}}} from evaluate_episodes results."""
    out: dict[str, dict] = {}
    for encoder, result in results.items():
        if encoder == "openset":  # not an encoder: `aggregate_openset`
            continue
        for row in result["settings"].values():
            key = f"{row['n_way']}way{row['k_shot']}shot"
            out.setdefault(key, {})[encoder] = {
                "accuracy": row["accuracy"], "ci95": row["ci95"], "episodes": row["episodes"],
                "queries_per_relation": row["queries_per_relation"],
                "source": result.get("encoder_source")}
    return out


def aggregate_openset(result: dict | None) -> dict | None:
    """The open-set unit (`tkre.bench.openset`) without its per-relation rows."""
    if result is None:
        return None
    return {key: result.get(key) for key in ("root", "test_sentences", "flip_rate_target",
                                              "references", "calibration", "by_k")}


def comparison(ours: dict, baseline: dict, metric: str, what: str,
               baseline_metric: str | None = None) -> dict:
    """One speed row: ratio = ours[metric] / baseline[baseline_metric or metric]."""
    denominator = baseline[baseline_metric or metric]
    ratio = ours[metric] / denominator if denominator else None
    return {"ratio": ratio, "metric": metric, "ours_value": ours[metric],
            "baseline_value": denominator, "compared": what, "ours": ours,
            "baseline": baseline}


def aggregate_speed(units: dict[str, dict]) -> dict:
    """speed.<name> rows from the speed units that are present."""
    out: dict[str, dict] = {}
    original = units.get("speed-generation-original")
    one_at_a_time = units.get("speed-generation-hf-batch1")
    for backend in ("hf", "vllm"):
        ours = units.get(f"speed-generation-{backend}")
        if ours and original:
            row = comparison(ours, original, "tokens_per_s",
                             f"Ray Data {backend} backend vs transformers pipeline, one prompt "
                             "at a time (both end to end, model load included)")
            row["rows_per_s_ratio"] = ours["rows_per_s"] / original["rows_per_s"]
            out[f"generation_{backend}"] = row
        if ours and one_at_a_time:
            out[f"generation_{backend}_vs_batch1"] = comparison(
                ours, one_at_a_time, "tokens_per_s", f"Ray Data {backend} backend vs our hf "
                "backend at batch 1 (one prompt at a time), same requests, end to end")
        if ours and ours.get("limit_s"):
            out[f"generation_{backend}_flop_limit"] = comparison(
                ours, ours, "limit_s", "FLOP limit of the requests (every prompt token "
                "computed per request) at this machine's peak / wall time: the fraction of the "
                "limit reached (above 1: shared prompts computed once)",
                baseline_metric="wall_s")
    one, trainer = units.get("speed-pretrain-w1"), units.get("speed-pretrain-original")
    if one and trainer:
        out["pretraining"] = comparison(
            one, trainer, "samples_per_s", "our MSLM on Ray Train (1 worker, per-batch "
            "padding, offsets) vs HF Trainer (padding to 128, per-item sub-token search)")
    step, step_trainer = (units.get("speed-pretrain-step-ours"),
                          units.get("speed-pretrain-step-original"))
    if step and step_trainer:
        out["pretraining_step"] = comparison(
            step, step_trainer, "samples_per_s", "our MSLM step in one process (DeepSpeed, "
            "per-batch padding, offsets) vs HF Trainer (padding to 128, per-item sub-token "
            "search), both after warm-up", baseline_metric="steady_samples_per_s")
    for stage, name in (("mslm", "MSLM"), ("scl", "MSLM + SCL")):
        ray_train = one if stage == "mslm" else units.get(f"speed-pretrain-{stage}-w1")
        plain_loop = units.get(f"speed-pretrain-{stage}-plain")
        if ray_train and plain_loop:
            out[f"pretraining_{stage}_vs_plain"] = comparison(
                ray_train, plain_loop, "samples_per_s", f"our {name} stage's loop on Ray Train "
                "(1 worker) vs the same steps, texts, model and optimizer in a plain loop in "
                "one process (no Ray), both from the first step; worker start-up and export "
                "apart")
    two = units.get("speed-pretrain-w2")
    if one and two:
        out["pretraining_scaling"] = comparison(
            two, one, "samples_per_s", "our MSLM on 2 Ray Train workers vs 1 (same total CPUs "
            "or one GPU each)")
    tuned, plain = units.get("speed-finetune-ours"), units.get("speed-finetune-plain")
    if tuned and plain:
        out["finetuning"] = comparison(
            tuned, plain, "samples_per_s", "our fine-tuning epochs on Ray Train (training + "
            "dev scoring + checkpoint when dev improves) vs a plain PyTorch loop (training + "
            "dev scoring), same draw, model, batches and epochs; Ray Train's start-up and the "
            "export are apart, in outside_epochs_s")
    extract = units.get("speed-extract")
    if extract:
        out["extract"] = comparison(
            extract["ours"], extract["plain"], "documents_per_s", "jobs/extract.py (Ray Data "
            "actor pool, all pairs of a block batched, Ray start-up included) vs a plain loop "
            "of Extractor.extract_text, one sentence at a time, model load included")
    served = units.get("speed-serving")
    if served:
        for batched, single in zip(served["batched"], served["per_request"], strict=True):
            level = batched["concurrency"]
            out[f"serving_c{level}"] = comparison(
                batched, single, "throughput_rps", f"@serve.batch vs one model call per "
                f"request, {level} requests in flight")
    flops = units.get("speed-flops")
    if flops:
        out["flops"] = comparison(
            flops, flops, "achieved_flops_per_s", "encoder batched inference FLOP/s vs this "
            "machine's measured matmul peak", baseline_metric="measured_matmul_peak_flops_per_s")
    return out


def build_report(settings: dict, machine: dict, data: str, quality_units: list[dict],
                 fewrel: dict[str, dict], speed_units: dict[str, dict], errors: dict,
                 wall_s: float, text: dict[str, dict] | None = None) -> dict:
    knowledge = next((u["knowledge"] for u in quality_units if "knowledge" in u), None)
    table = aggregate_quality(quality_units)
    claims = check_claims(quality_units, table, settings.get("verdicts", True),
                          settings.get("baseline_floor"))
    # the per-sentence predictions stay in the unit files; the report keeps the figures
    units = [{k: v for k, v in u.items() if k != "predictions"} for u in quality_units]
    return {
        "preset": settings.get("preset"), "settings": settings, "machine": machine,
        "wall_s": wall_s, "errors": errors,
        "quality": {data: table, "paired_gain": paired_gains(quality_units, table),
                    "claims": claims, "fewrel": aggregate_fewrel(fewrel),
                    "openset": aggregate_openset(fewrel.get("openset")),
                    "text": text or {},
                    "knowledge": knowledge, "units": units},
        "speed": aggregate_speed(speed_units),
    }


# --- markdown ------------------------------------------------------------------------------

def _f(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _si(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.2f}"


def conditions(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    # the bench itself keeps every core busy, so only the load before it started tells
    shared = (" (the machine was already busy before the bench started: timings are noisy)"
              if m["load_average_1m"] > m["cores"] / 2 else "")
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB, GPU "
            f"{m['gpu'] or 'none'}; 1-minute load average {m['load_average_1m']:.1f} at the "
            f"start, {m.get('load_average_1m_end', float('nan')):.1f} at the end{shared}. "
            f"Versions: {versions}. Preset `{s['preset']}`.")


def quality_markdown(report: dict, data: str) -> list[str]:
    s = report["settings"]
    table = report["quality"][data]
    if not table:
        return []
    lines = [f"## Quality: {data}", "",
             f"Encoder `{s['encoder']}`; test subset {s['max_test'] or 'all'}; fine-tuning "
             f"{s['finetune_epochs']} epoch(s), batch {s['finetune_batch_size']}, lr "
             f"{s['finetune_lr']}, max length {s['finetune_max_length']}; pre-training "
             f"{s['pretrain_steps'] or 'full epochs'} steps/stage, batch "
             f"{s['pretrain_batch_size']}, max length {s['pretrain_max_length']}, "
             f"{s['strategy']} {s['precision']}; generator `{s['generator']}` ({s['backend']}); "
             f"knowledge {'shared by all draws' if s['share_knowledge'] else 'per draw'}, "
             f"pre-training {'shared by all draws' if s['share_pretraining'] else 'per draw'}. "
             f"Micro-F1 excludes the no-relation label; std is over seeds (ddof {STD_DDOF}).",
             "", "| K | variant | seeds | micro-F1 | SemEval macro-F1 | test n |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k in sorted(table, key=int):
        for variant, row in table[k].items():
            lines.append(
                f"| {k} | {variant} | {','.join(map(str, row['seeds']))} | "
                f"{_f(row['micro_f1_mean'])} ± {_f(row['micro_f1_std'])} | "
                f"{_f(row['semeval_macro_f1_mean'])} ± {_f(row['semeval_macro_f1_std'])} | "
                f"{row['test_examples']} |")
    notes = sorted({f"{u['variant']}: {note}" for u in report["quality"].get("units", [])
                    for note in u.get("notes", [])})
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    knowledge = report["quality"].get("knowledge")
    if knowledge and knowledge["explanations_accepted"] is not None:
        lines += ["", f"Knowledge: {knowledge['explanations_accepted']}/"
                      f"{knowledge['explanations_requested']} explanations and "
                      f"{knowledge['synthetic_accepted']}/{knowledge['synthetic_requested']} "
                      "synthetic sentences accepted."]
    return lines


def _interval(gain: dict | None) -> str:
    if not gain or not gain.get("ci95"):
        return "-"
    low, high = gain["ci95"]
    return f"[{low:+.2f}, {high:+.2f}]"


def _bootstraps(cells: dict) -> str:
    return "; ".join(f"s{seed} {cell['mean']:+.2f} {_interval(cell)}"
                     for seed, cell in cells.items()) or "-"


def claims_markdown(report: dict) -> list[str]:
    claims = report["quality"].get("claims") or []
    if not claims:
        return []
    lines = ["## Against the paper's claims", "",
             "The paper's result tables could not be retrieved on this machine, so these are its "
             "qualitative claims: TKRE beats the fine-tuned baseline (+7.8 average F1 on the TYP "
             "Marker backbone per a secondary summary, largest at K=8) and each of EDKG, SCDG, "
             "MSLM and SCL helps. Gain = tkre's micro-F1 minus the other variant's, in points, "
             "paired per draw (same K-shot sets, seeds and test set); mean over the draws with "
             "its 95 % t-interval, and per draw a paired bootstrap over the test sentences. A "
             "claim holds only where the t-interval is above zero.", "",
             "| K | claim | compared | draws | gain (points) | 95 % interval | "
             "per draw, bootstrap | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in claims:
        gain = row["gain"]
        lines.append(f"| {row['k']} | {row['claim']} | {row['compared']} | {gain['draws']} | "
                     f"{gain['mean']:+.2f} | {_interval(gain)} | "
                     f"{_bootstraps(row.get('bootstrap', {}))} | {row['verdict']} |")
    return lines


def fewrel_markdown(report: dict) -> list[str]:
    s, table = report["settings"], report["quality"]["fewrel"]
    if not table:
        return []
    encoders = sorted({e for row in table.values() for e in row})
    episodes = sorted({cell["episodes"] for row in table.values() for cell in row.values()})
    lines = ["## FewRel: run-time relations (prototypes, no training on them)", "",
             f"File `{s['fewrel_file']}`, {'/'.join(map(str, episodes))} episodes per setting "
             "(as measured), 1 query per relation, seed 42; accuracy ± 95% interval.", "",
             "| setting | " + " | ".join(encoders) + " |",
             "| --- | " + " | ".join("---" for _ in encoders) + " |"]
    for setting, row in table.items():
        cells = [f"{_f(row[e]['accuracy'])} ± {_f(row[e]['ci95'], 3)}" if e in row else "-"
                 for e in encoders]
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return lines


def openset_markdown(report: dict) -> list[str]:
    openset = report["quality"].get("openset")
    if not openset:
        return []
    references = openset["references"] or {}
    lines = ["## FewRel relations registered on the trained model", "",
             f"Each FewRel relation registered alone from K examples on `{openset['root']}` "
             f"({references.get('sentences', 'no')} reference sentences). Flip rate: share "
             f"of its {openset['test_sentences']} test sentences (trained labels) whose "
             f"prediction changes to the new relation (target at most "
             f"{openset['flip_rate_target']:.0%} each); own recall: share of the relation's "
             "held-out queries predicted as it; other new: share of the other FewRel "
             "relations' queries predicted as it.", "",
             "| K | relations | flip rate mean | flip rate max | own recall | other new |",
             "| --- | --- | --- | --- | --- | --- |"]
    if not openset["by_k"]:
        return lines[:3] + ["Not measured: every FewRel relation is a label of the model."]
    for k, row in openset["by_k"].items():
        lines.append(f"| {k} | {row['relations']} | {_f(row['flip_rate_mean'])} | "
                     f"{_f(row['flip_rate_max'])} | {_f(row['own_recall_mean'])} | "
                     f"{_f(row['other_new_rate_mean'])} |")
    return lines


def text_markdown(report: dict) -> list[str]:
    rows = report["quality"].get("text") or {}
    if not rows:
        return []
    lines = ["## Raw text: sentences without markers", "",
             "Each sentence given as plain text; spaCy's mentions paired and scored by the "
             "first draw's model with its fitted no-relation threshold (`tkre.bench.text`). "
             "Pair recall: gold pairs among the candidates; end-to-end recall: gold pairs of a "
             "relation emitted with the gold relation; silence: no-relation sentences whose "
             "gold pair yields no triple.", "",
             "| sentences | n | pair recall | end-to-end recall | triples / sentence | "
             "no-relation silence |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows.values():
        lines.append(f"| {row['source']} | {row['sentences']} | {_f(row['pair_recall'])} | "
                     f"{_f(row['end_to_end_recall'])} | {_f(row['triples_per_sentence'], 2)} | "
                     f"{_f(row['no_relation_silence'])} |")
    return lines


def speed_markdown(report: dict) -> list[str]:
    s, rows = report["settings"], report["speed"]
    if not rows:
        return []
    lines = ["## Speed (ours / baseline; above 1: ours is faster)", "",
             f"Generation: {s['gen_speed_prompts']} SCDG requests, "
             f"{s.get('gen_speed_per_relation') or 1} per relation sharing its prompt, "
             f"{s['gen_speed_max_tokens']} new tokens each, `{s['generator']}`. Pre-training: "
             f"{s['pretrain_speed_steps']} steps of {s['pretrain_speed_batch_size']}, max "
             f"length 128, `{s['encoder']}`. Serving: "
             f"{s['serve_requests']} requests per level, one item each. FLOP/s: batch "
             f"{s['flops_batch_size']} x {s['flops_seq_len']} tokens.", "",
             "| comparison | metric | ours | baseline | ratio | what |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['metric']} | {_si(row['ours_value'])} | "
                     f"{_si(row['baseline_value'])} | {_f(row['ratio'], 3)} | "
                     f"{row['compared']} |")
    backends = s["gen_speed_backends"].split(",")
    skipped = [f"generation_{b}" for b in ("hf", "vllm") if b not in backends]
    if skipped:
        lines += ["", f"Not in this run's settings: {', '.join(skipped)} (`--gen-speed-backends "
                      f"{s['gen_speed_backends']}`)."]
    serving = [(n, r) for n, r in rows.items() if n.startswith("serving_")]
    if serving:
        lines += ["", "| serving | batched req/s | p50 ms | p99 ms | per-request req/s | p50 ms "
                      "| p99 ms |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, row in serving:
            b, p = row["ours"], row["baseline"]
            lines.append(f"| {name} | {b['throughput_rps']:.1f} | {b['p50_ms']:.1f} | "
                         f"{b['p99_ms']:.1f} | {p['throughput_rps']:.1f} | {p['p50_ms']:.1f} | "
                         f"{p['p99_ms']:.1f} |")
    return lines


def markdown(report: dict, data: str) -> str:
    if report["settings"].get("report_only"):
        walls = [u.get("unit_wall_s") or 0.0 for u in report["quality"].get("units", [])]
        took = (f"Report rebuilt from stored units (nothing measured in this run; the quality "
                f"units took {sum(walls):.0f} s when measured).")
    else:
        took = f"Total wall time {report['wall_s']:.0f} s."
    lines = [f"# tkre benchmark ({report['preset']} preset)", "", conditions(report), "",
             took, ""]
    if report["settings"]["preset"] == "quick":
        lines += ["> Quick preset: sizes shrunk to fit a 2-core CPU in 20 minutes (tiny "
                  "knowledge budget, few steps and epochs, a test subset). Its quality numbers "
                  "check the machinery; they are not the paper's comparison.", ""]
    lines += quality_markdown(report, data) + [""] + claims_markdown(report) + [""]
    lines += fewrel_markdown(report) + [""]
    lines += openset_markdown(report) + [""]
    lines += text_markdown(report) + [""]
    lines += speed_markdown(report)
    if report["errors"]:
        lines += ["", "## Units missing or failed", ""]
        lines += [f"- `{name}`: {message}" for name, message in report["errors"].items()]
    return "\n".join(lines) + "\n"


# --- plots ---------------------------------------------------------------------------------

def _save(fig, uri: str) -> None:
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "plot.png"
        fig.savefig(local, dpi=120)
        plt.close(fig)
        storage.write_bytes(uri, local.read_bytes())


def plot_f1_vs_k(table: dict, uri: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    variants = sorted({v for row in table.values() for v in row})
    for variant in variants:
        ks = sorted(int(k) for k in table if variant in table[k])
        means = [table[str(k)][variant]["micro_f1_mean"] for k in ks]
        stds = [table[str(k)][variant]["micro_f1_std"] for k in ks]
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=variant)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(int(k) for k in table), [str(k) for k in sorted(map(int, table))])
    ax.set_xlabel("K (examples per relation)")
    ax.set_ylabel("micro-F1 (no-relation excluded)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, uri)


def plot_speed_ratios(rows: dict, uri: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in rows.items() if r["ratio"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, [rows[n]["ratio"] for n in names], color="tab:blue")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("ours / baseline (log)")
    ax.set_title("speed ratios (above 1: ours is faster; flops: fraction of peak)")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    _save(fig, uri)


def write_report(report: dict, root: str, data: str) -> dict[str, str]:
    """report.json, report.md and the plots under ROOT/bench/; their URIs."""
    paths = {"json": layout.bench_report(root, "report.json"),
             "markdown": layout.bench_report(root, "report.md")}
    if report["quality"][data]:
        paths["f1_vs_k"] = layout.bench_report(root, "f1_vs_k.png")
        plot_f1_vs_k(report["quality"][data], paths["f1_vs_k"],
                     f"{data}: micro-F1 vs K ({report['preset']} preset)")
    if report["speed"]:
        paths["speed"] = layout.bench_report(root, "speed_ratios.png")
        plot_speed_ratios(report["speed"], paths["speed"])
    report["files"] = paths
    storage.write_json(paths["json"], report)
    storage.write_text(paths["markdown"], markdown(report, data))
    return paths
