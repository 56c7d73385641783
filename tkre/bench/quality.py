"""Quality: SemEval K-shot micro-F1 / macro-F1 per variant, and FewRel N-way K-shot accuracy.

Layout under ROOT/bench/<data>/k<K>-s<seed>/: one run root per variant (the stages refuse a
root holding another K-shot draw, so each draw has its own folders). Every stage runs through
the pipeline (`tkre.pipeline.run_pipeline`, the one place that orders stages) on that root, and
every path comes from `tkre.layout`. Knowledge is generated once per draw (or, with
`share_knowledge`, once for the whole bench) and copied into the variant roots; the ablations
are pre-training switches (tkre.config.PretrainConfig):

    finetune_only  fine-tune the base encoder on the K-shot set, no knowledge
    tkre           MSLM -> SCL -> fine-tune on K-shot + synthetic
    no_edkg        the same without the explanations (use_explanations=False)
    no_scdg        the same without the synthetic sentences, in pre-training and fine-tuning
    no_mslm        no masked-span LM anywhere: no stage 1, stage 2 with lambda_mslm=0 on
                   unmasked input, from the base encoder
    no_scl         stage 2 with lambda_scl=0 (its MSLM pass kept), from tkre's stage 1

Each ablation removes exactly one thing from tkre's recipe, and every variant of a draw
fine-tunes for the same number of optimizer steps (FinetuneConfig.budget "gold").
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tkre import layout, storage
from tkre.bench.units import (
    KNOWLEDGE_AND_PRETRAINING,
    SPEED_AND_FEWREL,
    cached,
    settings_key,
    unit_path,
)
from tkre.config import BenchConfig, DataConfig, PipelineConfig, TrainConfig
from tkre.data import datasets

# variant -> (root that owns its pre-training, stages it needs, PretrainConfig switches)
PRETRAINING = {
    "finetune_only": None,
    "tkre": ("tkre", ("mslm", "scl"), {}),
    "no_edkg": ("no_edkg", ("mslm", "scl"), {"use_explanations": False}),
    "no_scdg": ("no_scdg", ("mslm", "scl"), {"use_synthetic": False}),
    "no_mslm": ("no_mslm", ("scl",), {"scl_init": "encoder", "lambda_mslm": 0.0,
                                      "mask_relation": 0.0, "mask_entity": 0.0,
                                      "mask_other": 0.0}),
    # stage 1 is tkre's (the same settings): its export is copied in, not trained again
    "no_scl": ("no_scl", ("mslm", "scl"), {"lambda_scl": 0.0}),
}
SHARES_STAGE_1 = {"no_scl": "tkre"}
WITHOUT_SYNTHETIC = ("finetune_only", "no_scdg")
# guard(unit name, measure) -> the result, or None after recording the failure
Guard = Callable[[str, Callable[[], Any]], Any]


def unread(variant: str | None = None) -> tuple[str, ...]:
    """The settings a draw's measurement never reads: the speed parts' sizes, and for the
    fine-tuning-only baseline also everything about knowledge and pre-training (so trying
    other pre-training settings on a root re-measures the method, not the baseline)."""
    if variant == "finetune_only":
        return SPEED_AND_FEWREL + KNOWLEDGE_AND_PRETRAINING
    return SPEED_AND_FEWREL


def draw_root(cfg: BenchConfig, k: int, seed: int, variant: str | None = None) -> str:
    """A draw's run roots, per hash of the settings they read: a stage finished under other
    settings is never taken for this run's."""
    key = settings_key(cfg, unread(variant))
    return layout.bench_run(cfg.root, cfg.data, f"k{k}-s{seed}-{key}")


def variant_root(cfg: BenchConfig, k: int, seed: int, variant: str) -> str:
    """The run root a variant of a draw fine-tunes in (and pre-trains in, if it owns that)."""
    return storage.join(draw_root(cfg, k, seed, variant), variant)


def run_stages(root: str, data: DataConfig, stages: tuple[str, ...], **sections: dict) -> dict:
    """The pipeline's stages `stages` on `root` (it orders them and skips finished ones)."""
    from tkre.pipeline import run_pipeline

    return run_pipeline(PipelineConfig(root=root, data=data, stages=",".join(stages),
                                       **sections))


def data_config(cfg: BenchConfig, k: int, seed: int) -> DataConfig:
    return DataConfig(data=cfg.data, data_dir=cfg.data_dir if cfg.data != "demo" else None,
                      k=k, seed=seed, max_test=cfg.max_test)


def train_config(cfg: BenchConfig, workers: int = 1) -> TrainConfig:
    # on a CPU the default share: the machine's cores split over the workers
    return TrainConfig(num_workers=workers, use_gpu=cfg.use_gpu,
                       cpus_per_worker=8.0 if cfg.use_gpu else None)


def generate_section(cfg: BenchConfig) -> dict:
    """The pipeline's `generate` section (GenerateConfig fields) for the bench's sizes."""
    return dict(
        model=cfg.generator, backend=cfg.backend, num_gpus=cfg.num_gpus,
        explanations_per_relation=cfg.explanations_per_relation,
        synthetic_per_relation=cfg.synthetic_per_relation, oversample=cfg.oversample,
        max_rounds=cfg.max_rounds, max_tokens_explanation=cfg.max_tokens_explanation,
        max_tokens_sample=cfg.max_tokens_sample, demonstrations=cfg.demonstrations,
        batch_size=cfg.generation_batch_size)


def knowledge_root(cfg: BenchConfig, k: int, seed: int) -> tuple[str, DataConfig]:
    """Where a draw's knowledge is generated, and the K-shot draw it is generated from."""
    if cfg.share_knowledge:
        first_k, first_seed = cfg.draws()[0]
        key = settings_key(cfg, unread())
        return (layout.bench_run(cfg.root, cfg.data, f"knowledge-shared-{key}"),
                data_config(cfg, first_k, first_seed))
    return storage.join(draw_root(cfg, k, seed), "knowledge-gen"), data_config(cfg, k, seed)


def ensure_knowledge(cfg: BenchConfig, k: int, seed: int) -> str:
    """Generate the draw's knowledge unless it is there; returns the root that holds it."""
    root, data = knowledge_root(cfg, k, seed)
    run_stages(root, data, ("knowledge",), generate=generate_section(cfg))
    return root


def copy_knowledge(source_root: str, target_root: str) -> None:
    """The knowledge artifacts into another run root (stats.json, the completion mark, last)."""
    if layout.knowledge_done(target_root):
        return
    for source, target in zip(layout.knowledge_files(source_root),
                              layout.knowledge_files(target_root), strict=True):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def knowledge_summary(root: str) -> dict:
    """Accepted / requested counts of the knowledge every variant of a draw used."""
    stats = storage.read_json(layout.knowledge_stats(root))
    explained, totals = stats.get("explanations", {}), stats.get("totals", {})
    return {"explanations_accepted": explained.get("accepted"),
            "explanations_requested": explained.get("requested"),
            "synthetic_accepted": totals.get("accepted"),
            "synthetic_requested": totals.get("requested"),
            "generation": stats.get("generation", {}), "root": root}


def pretrain_section(cfg: BenchConfig, switches: dict) -> dict:
    """The pipeline's `pretrain` section (PretrainConfig fields) for the bench's sizes."""
    return dict(
        train=asdict(train_config(cfg)), encoder=cfg.encoder,
        strategy=cfg.strategy, zero_stage=cfg.zero_stage, precision=cfg.precision,
        max_steps=cfg.pretrain_steps,
        batch_size=cfg.pretrain_batch_size, max_length=cfg.pretrain_max_length,
        lr=cfg.pretrain_lr, checkpoint_every=max(50, cfg.pretrain_steps or 0), **switches)


def run_pretraining(cfg: BenchConfig, owner: str, k: int, seed: int, knowledge: str) -> dict:
    """Every stage the variants owned by `owner` need, in its root; skips finished stages."""
    from tkre.pretrain.data import stage_texts

    root, data = variant_root(cfg, k, seed, owner), data_config(cfg, k, seed)
    splits = datasets.prepare(data, root)
    copy_knowledge(knowledge, root)
    stages = sorted({s for v in cfg.variant_list if PRETRAINING[v] and PRETRAINING[v][0] == owner
                     for s in PRETRAINING[v][1]}, key=("mslm", "scl").index)
    switches = next(PRETRAINING[v][2] for v in PRETRAINING
                    if PRETRAINING[v] and PRETRAINING[v][0] == owner)
    notes, out = [], {}
    source = SHARES_STAGE_1.get(owner)
    if source and "mslm" in stages:
        copy_stage(variant_root(cfg, k, seed, source), root, "mslm")
        notes.append(f"stage 1 copied from {source} (the same settings)")
    if "mslm" in stages:
        texts, counts = stage_texts("mslm", root, splits.train,
                                    use_explanations=switches.get("use_explanations", True),
                                    use_synthetic=switches.get("use_synthetic", True))
        if not texts:
            # the LLM gave this ablation nothing to pre-train on: stage 2 starts from the base
            notes.append(f"stage 1 skipped: no texts ({counts})")
            switches = {**switches, "scl_init": "encoder"}
            stages = [s for s in stages if s != "mslm"]
    run_stages(root, data, tuple(stages), pretrain=pretrain_section(cfg, switches))
    for stage in stages:
        metrics = storage.read_json(layout.pretrain_metrics(root, stage))
        out[stage] = {key: metrics.get(key) for key in
                      ("steps", "texts", "samples_per_s", "tokens_per_s", "mfu", "wall_s")}
    return {"root": root, "stages": out, "notes": notes}


def copy_stage(source_root: str, target_root: str, stage: str) -> None:
    """A finished pre-training stage's export and metrics into another run root (bench roots
    are local folders); the pipeline then skips that stage there."""
    if layout.pretrain_done(target_root, stage):
        return
    if not layout.pretrain_done(source_root, stage):
        raise FileNotFoundError(f"{layout.pretrain_model(source_root, stage)} is not finished")
    shutil.copytree(layout.pretrain_model(source_root, stage),
                    layout.pretrain_model(target_root, stage), dirs_exist_ok=True)
    shutil.copyfile(layout.pretrain_metrics(source_root, stage),
                    layout.pretrain_metrics(target_root, stage))  # last: the stage is done


def finetune_encoder(cfg: BenchConfig, variant: str, k: int, seed: int) -> str:
    plan = PRETRAINING[variant]
    if plan is None:
        return cfg.encoder
    owner, stages, _ = plan
    source = (k, seed) if not cfg.share_pretraining else cfg.draws()[0]
    root = variant_root(cfg, *source, owner)
    for stage in reversed(stages):
        if layout.pretrain_done(root, stage):
            return layout.pretrain_model(root, stage)
    raise FileNotFoundError(f"{variant}: no pre-trained encoder under {root}")


def run_variant(cfg: BenchConfig, variant: str, k: int, seed: int, knowledge: str) -> dict:
    """Fine-tune and evaluate one variant of one draw: its unit record."""
    root, data = variant_root(cfg, k, seed, variant), data_config(cfg, k, seed)
    use_synthetic = variant not in WITHOUT_SYNTHETIC
    if use_synthetic:
        copy_knowledge(knowledge, root)
    encoder = finetune_encoder(cfg, variant, k, seed)
    report = run_stages(
        root, data, ("finetune", "evaluate"),
        finetune=dict(encoder=encoder, train=asdict(train_config(cfg)),
                      epochs=cfg.finetune_epochs, batch_size=cfg.finetune_batch_size,
                      lr=cfg.finetune_lr, max_length=cfg.finetune_max_length,
                      use_synthetic=use_synthetic),
        evaluate=dict(plot=False))
    walls = {f"{stage}_s": report["stages"][stage].get("wall_s", 0.0)
             for stage in ("finetune", "evaluate")}
    metrics = storage.read_json(layout.eval_metrics(root))
    finetune = storage.read_json(layout.finetune_metrics(root))
    fs, path = storage.arrow_filesystem(layout.eval_predictions(root))
    predictions = pq.read_table(path, filesystem=fs).to_pydict()
    return {"variant": variant, "k": k, "seed": seed, "micro_f1": metrics["micro_f1"],
            "semeval_macro_f1": metrics.get("semeval_macro_f1"),
            "test_examples": metrics["num_examples"], "encoder": encoder,
            "train_gold": finetune["train_gold"], "train_synthetic": finetune["train_synthetic"],
            "best_epoch": finetune["best_epoch"], "data": asdict(data),
            "no_relation": metrics["no_relation"],
            # per test sentence, for the paired bootstrap against another variant
            "predictions": {key: predictions[key] for key in ("id", "gold", "pred")}, **walls}


# ablation -> (knowledge count it removes, what that count counts)
REMOVES = {"no_scdg": ("synthetic_accepted", "synthetic sentence"),
           "no_edkg": ("explanations_accepted", "explanation")}


def same_as(variant: str, variants: list[str], summary: dict | None) -> str | None:
    """The variant whose measurement this one equals, given the knowledge generated.

    Removing a knowledge source the generator produced nothing of changes no input: without a
    single accepted synthetic sentence, no_scdg pre-trains and fine-tunes on exactly tkre's
    texts with tkre's seeds (measured: identical F1), and likewise no_edkg without an accepted
    explanation. Such a variant reuses tkre's figures, with a note, instead of a second run.
    """
    if variant not in REMOVES or "tkre" not in variants or summary is None:
        return None
    return "tkre" if summary[REMOVES[variant][0]] == 0 else None


def run_draw(cfg: BenchConfig, k: int, seed: int, guard: Guard) -> list[dict]:
    """Pre-training (unless shared), then each variant; a failed unit is left to `guard`."""
    if cfg.report_only:
        knowledge = knowledge_root(cfg, k, seed)[0]
    else:
        knowledge = guard(f"knowledge-k{k}-s{seed}", lambda: ensure_knowledge(cfg, k, seed))
    if knowledge is None:
        return []
    variants = cfg.variants_for(k, seed)
    summary = knowledge_summary(knowledge) if layout.knowledge_done(knowledge) else None
    aliases = {v: same_as(v, variants, summary) for v in variants}
    if not (cfg.share_pretraining and (k, seed) != cfg.draws()[0]):
        owners = {PRETRAINING[v][0] for v in variants if PRETRAINING[v] and not aliases[v]}
        # an owner that copies another's stage 1 runs after it
        for owner in sorted(owners, key=lambda o: (o in SHARES_STAGE_1, o)):
            name = f"pretrain-{cfg.data}-k{k}-s{seed}-{owner}"
            guard(name, lambda o=owner, n=name: cached(
                cfg, n, lambda: run_pretraining(cfg, o, k, seed, knowledge), unread()))
    units, measured = [], {}
    for variant in variants:
        name = f"{cfg.data}-k{k}-s{seed}-{variant}"
        if aliases[variant]:
            def measure(v=variant, same=aliases[variant]):
                if same not in measured:
                    raise RuntimeError(f"{v} reuses {same}'s measurement, which failed")
                return measured[same] | {"variant": v, "same_as": same}
        else:
            def measure(v=variant):
                return run_variant(cfg, v, k, seed, knowledge)
        unit = guard(name, lambda n=name, m=measure, v=variant: cached(cfg, n, m, unread(v)))
        if unit is not None:
            measured[variant] = unit
            units.append(unit | {"knowledge": summary,
                                 "notes": variant_notes(cfg, unit, k, seed)})
    return units


def variant_notes(cfg: BenchConfig, unit: dict, k: int, seed: int) -> list[str]:
    """What the variant's measurement left out or reused, for the report."""
    variant = unit["variant"]
    if unit.get("same_as"):
        return [f"same run as {unit['same_as']}: the generator's knowledge has no accepted "
                f"{REMOVES[variant][1]}, so removing it changes no input"]
    return pretraining_notes(cfg, variant, k, seed)


def pretraining_notes(cfg: BenchConfig, variant: str, k: int, seed: int) -> list[str]:
    """What the variant's pre-training had to leave out (e.g. stage 1 without texts)."""
    if PRETRAINING[variant] is None:
        return []
    source = cfg.draws()[0] if cfg.share_pretraining else (k, seed)
    path = unit_path(cfg, f"pretrain-{cfg.data}-k{source[0]}-s{source[1]}-"
                               f"{PRETRAINING[variant][0]}", unread())
    return storage.read_json(path).get("notes", []) if storage.exists(path) else []


def run_quality(cfg: BenchConfig, guard: Guard) -> list[dict]:
    """Every variant of every draw; one unit JSON each (reused on a re-run)."""
    return [unit for k, seed in cfg.draws() for unit in run_draw(cfg, k, seed, guard)]


def fewrel_instances(cfg: BenchConfig) -> list:
    from tkre.data.readers import read_fewrel, read_pid2name

    path = Path(cfg.fewrel_file)
    names = path.parent / "pid2name.json"
    return read_fewrel(path, read_pid2name(names) if names.exists() else None)


def fewrel_encoders(cfg: BenchConfig) -> dict[str, str]:
    """plain: the base encoder; pretrained: tkre's stage-2 encoder of the first draw."""
    from tkre.resources import resolve_model

    k, seed = cfg.draws()[0]
    tkre_root = variant_root(cfg, k, seed, "tkre")
    out = {"plain": resolve_model(cfg.encoder)}
    if layout.pretrain_done(tkre_root, "scl"):
        out["pretrained"] = layout.pretrain_model(tkre_root, "scl")
    return out


def fewrel_accuracy(cfg: BenchConfig, source: str) -> dict:
    """N-way K-shot prototype accuracy of the FewRel relations with one encoder."""
    from tkre.extract.episodes import evaluate_episodes, parse_settings
    from tkre.extract.prototypes import PairEncoder

    encoder = PairEncoder.load(source, device="cuda" if cfg.use_gpu else "cpu")
    instances, settings = fewrel_instances(cfg), parse_settings(cfg.fewrel_settings)
    try:
        result = evaluate_episodes(encoder, instances, settings, cfg.fewrel_episodes, seed=42)
    except ValueError as err:  # its calibration fit fails when cosines do not separate at all
        result = accuracy_only(encoder, instances, settings, cfg.fewrel_episodes, seed=42)
        result["calibration_error"] = str(err)
    return result | {"encoder_source": source, "file": cfg.fewrel_file}


def accuracy_only(encoder, instances: list, settings: list[tuple[int, int]], episodes: int,
                  seed: int) -> dict:
    """evaluate_episodes' accuracies (same episodes, same seeds) without the calibration."""
    import math

    import torch

    from tkre.extract.episodes import sample_episodes
    from tkre.extract.prototypes import prototype

    by_relation: dict[str, list[int]] = {}
    for index, inst in enumerate(instances):
        by_relation.setdefault(inst.relation, []).append(index)
    out = {}
    for n, k in settings:
        drawn = sample_episodes(by_relation, n, k, 1, episodes, seed + 1000 * n + k)
        accuracies = []
        for episode in drawn:
            support = [encoder.embed([instances[i] for i in rows]) for rows in episode.support]
            protos = torch.stack([prototype(vectors) for vectors in support])
            queries = encoder.embed([instances[i] for rows in episode.queries for i in rows])
            accuracies.append(float((queries @ protos.T).argmax(-1).eq(
                torch.arange(n)).float().mean()))
        mean = sum(accuracies) / len(accuracies)
        spread = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / max(1, len(accuracies) - 1))
        out[f"{n}-way-{k}-shot"] = {"n_way": n, "k_shot": k, "episodes": len(drawn),
                                    "queries_per_relation": 1, "accuracy": mean,
                                    "ci95": 1.96 * spread / math.sqrt(len(accuracies))}
    return {"settings": out, "seed": seed}


def run_fewrel(cfg: BenchConfig, guard: Guard) -> dict[str, dict]:
    """FewRel val_wiki relations as run-time relations, from the plain and pre-trained encoder,
    and ("openset") registered on the first draw's trained model."""
    out = {}
    for name, source in fewrel_encoders(cfg).items():
        result = guard(f"fewrel-{name}", lambda n=name, s=source: cached(
            cfg, f"fewrel-{n}", lambda: fewrel_accuracy(cfg, s)))
        if result is not None:
            out[name] = result
    openset = guard("fewrel-openset", lambda: cached(cfg, "fewrel-openset",
                                                     lambda: fewrel_openset(cfg)))
    if openset is not None:
        out["openset"] = openset
    return out


def fewrel_openset(cfg: BenchConfig) -> dict:
    """FewRel relations registered one at a time on the first draw's fine-tuned model (tkre's,
    else finetune_only's): flip rate of its test sentences, recall of the relation's queries
    (`tkre.bench.openset`)."""
    from tkre.bench.openset import fewrel_relations, measure_openset

    return measure_openset(first_trained_root(cfg), fewrel_relations(cfg.fewrel_file),
                           device="cuda" if cfg.use_gpu else "cpu")


def first_trained_root(cfg: BenchConfig) -> str:
    """The first draw's fine-tuned run root (tkre's, else finetune_only's), which the quality
    part makes, its no-relation threshold fitted on the dev set."""
    k, seed = cfg.draws()[0]
    roots = [variant_root(cfg, k, seed, v) for v in ("tkre", "finetune_only")]
    root = next((r for r in roots if layout.finetune_done(r)), None)
    if root is None:
        raise FileNotFoundError(f"no fine-tuned model in {' or '.join(roots)}: the quality "
                                "part makes it")
    return root
