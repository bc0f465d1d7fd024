"""Ablation studies: a suite of variants x tasks x CV schemes x seeds (``miso-bench ablate``).

A suite file (``benchmarks/ablations/<name>.yaml``)::

    name: miso-ablations
    reference: miso                  # paired differences are against this variant
    tasks: [pf1m, tax_order]
    cv: [spatial]
    seeds: [0]
    set: [eval.n_boot=200]           # overrides for every run
    variants:
      - miso                         # a registry name
      - rf
      - {name: miso_lr1e-4, model: miso, set: [model.params.lr=1e-4]}
      - {name: ref, model: miso, config: "../configs/experiments/reference/miso_{task}.yaml"}

A variant's ``config`` is an experiment file (relative to the suite file; ``{task}`` is
replaced by the task) merged like ``--config``, under the suite's and the variant's ``set``.

Every combination is one ``miso-bench run`` (tagged with the suite and the variant). Runs of
one task, scheme and seed share their folds, so variants are compared pedon by pedon.
Combinations already finished in MLflow (same config, data and code) are skipped, so an
interrupted suite resumes where it stopped. The aggregation gives, per variant, the mean
(interquartile mean with five seeds or more) of the primary metric over seeds with a
blocked-bootstrap CI, overall and by region, and its paired difference from the reference
variant with the share of bootstrap replicates at or below zero.
"""

from __future__ import annotations

import difflib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .analysis.compare import (
    RunRecord,
    bootstrap_blocks,
    check_same_pedons,
    load_run,
    positive_index,
)
from .config import ConfigError, read_yaml, resolve_config
from .errors import MisoBenchError
from .evaluation.paired import paired_difference, seed_statistic
from .models import MODELS
from .runner import RunProgress, finished_run, run_benchmark
from .tracking import Tracker

__all__ = ["Suite", "SuiteResult", "Variant", "load_suite", "run_suite"]


@dataclass(frozen=True)
class Variant:
    """One compared variant: a registry model with overrides."""

    name: str
    model: str
    sets: tuple[str, ...] = ()
    config: str | None = None


@dataclass(frozen=True)
class Suite:
    """A parsed suite file (see the module docstring)."""

    name: str
    path: Path
    reference: str
    tasks: tuple[str, ...]
    cv: tuple[str, ...]
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...]
    sets: tuple[str, ...] = ()
    data: str | None = None
    description: str = ""


_KEYS = {"name", "description", "reference", "data", "tasks", "cv", "seeds", "set", "variants"}


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise MisoBenchError(f"{where}: expected a non-empty list of names")
    return tuple(value)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file.

    Raises:
        MisoBenchError: one line naming the file, the key and the fix.
    """
    file = Path(path)
    raw = read_yaml(file, "the suite")
    if not isinstance(raw, dict):
        raise MisoBenchError(f"{file}: a suite is a mapping (name, variants, tasks, ...)")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(_KEYS), n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"keys: {', '.join(sorted(_KEYS))}"
        raise MisoBenchError(f"{file}: unknown key `{unknown[0]}` ({hint})")
    for key in ("name", "variants"):
        if key not in raw:
            raise MisoBenchError(f"{file}: `{key}` missing (fix: add it)")
    variants = []
    for i, item in enumerate(raw["variants"] or []):
        where = f"{file}: variants[{i}]"
        if isinstance(item, str):
            variants.append(Variant(item, item))
        elif isinstance(item, dict) and "name" in item:
            extra = sorted(set(item) - {"name", "model", "set", "config"})
            if extra:
                raise MisoBenchError(
                    f"{where}: unknown key `{extra[0]}` (keys: name, model, set, config)"
                )
            sets = _str_list(item["set"], f"{where}.set") if item.get("set") else ()
            config = item.get("config")
            if config is not None:
                for task in _str_list(raw.get("tasks", ["tax_order"]), f"{file}: tasks"):
                    target = file.parent / str(config).replace("{task}", task)
                    if not target.is_file():
                        raise MisoBenchError(
                            f"{where}.config: {target} does not exist (fix: a path relative "
                            "to the suite file; {task} stands for the task)"
                        )
            variants.append(
                Variant(
                    str(item["name"]),
                    str(item.get("model", item["name"])),
                    sets,
                    None if config is None else str(config),
                )
            )
        else:
            raise MisoBenchError(f"{where}: a registry name or {{name, model, set, config}}")
    if not variants:
        raise MisoBenchError(f"{file}: `variants` is empty (fix: list at least two)")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise MisoBenchError(f"{file}: variant names repeat: {sorted(names)}")
    for v in variants:
        if v.model not in MODELS:
            close = difflib.get_close_matches(v.model, MODELS.list(), n=1)
            hint = f"did you mean {close[0]}?" if close else "see `miso-bench list models`"
            raise MisoBenchError(f"{file}: variant {v.name!r}: unknown model {v.model!r} ({hint})")
    reference = str(raw.get("reference", variants[0].name))
    if reference not in names:
        raise MisoBenchError(
            f"{file}: `reference` {reference!r} is not a variant (variants: {', '.join(names)})"
        )
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise MisoBenchError(f"{file}: `seeds` must be a list of integers, e.g. [0, 1, 2]")
    return Suite(
        name=str(raw["name"]),
        path=file,
        reference=reference,
        tasks=_str_list(raw.get("tasks", ["tax_order"]), f"{file}: tasks"),
        cv=_str_list(raw.get("cv", ["spatial"]), f"{file}: cv"),
        seeds=tuple(int(s) for s in seeds),
        variants=tuple(variants),
        sets=_str_list(raw["set"], f"{file}: set") if raw.get("set") else (),
        data=raw.get("data"),
        description=str(raw.get("description", "")),
    )


@dataclass
class SuiteResult:
    """What a suite produced.

    Attributes:
        suite: the suite.
        runs: (task, cv, seed, variant) -> MLflow run id.
        skipped: how many combinations were already finished.
        table: per (task, cv, variant, layer, region): ``value``, ``low``, ``high`` of the
            primary metric (aggregated over seeds) and ``diff``, ``diff_low``, ``diff_high``,
            ``share_le0`` against the reference variant; ``fold_sets``: how many different
            fold sets the seeds cut (fewer than the seeds when some cut the same folds);
            ``per_seed``: each seed's value, ``;``-separated; ``cpus``: the CPUs the task's
            and scheme's runs computed on (``cpu [cpu_capability]`` tags), ``; ``-separated.
        summary_run: the MLflow run holding the tables and figures.
    """

    suite: Suite
    runs: dict[tuple[str, str, int, str], str] = field(default_factory=dict)
    skipped: int = 0
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary_run: str = ""


def _config(
    suite: Suite,
    variant: Variant,
    task: str,
    cv: str,
    seed: int,
    data: str | None,
    tracking_uri: str | None,
    extra: tuple[str, ...],
) -> dict[str, Any]:
    scheme: dict[str, Any] = {"name": cv}
    if cv.startswith("file:"):  # a split file of the reference (path as given, or suite-relative)
        path = Path(cv.removeprefix("file:")).expanduser()
        if not path.is_absolute() and not path.exists():
            path = suite.path.parent / path
        scheme = {"name": "file", "path": str(path)}
    flags: dict[str, Any] = {"model": {"name": variant.model}, "cv": scheme, "task": task}
    flags["seed"] = seed
    if data or suite.data:
        flags["data"] = {"path": data or suite.data}
    if tracking_uri:
        flags["tracking"] = {"uri": tracking_uri}
    tags = [f"tracking.tags.ablation={suite.name}", f"tracking.tags.variant={variant.name}"]
    experiment = (
        None
        if variant.config is None
        else suite.path.parent / variant.config.replace("{task}", task)
    )
    try:
        return resolve_config(experiment, flags, [*suite.sets, *variant.sets, *extra, *tags])
    except ConfigError as exc:
        raise MisoBenchError(f"{suite.path}: variant {variant.name!r}: {exc}") from exc


def run_suite(
    suite: Suite,
    tasks: tuple[str, ...] | None = None,
    data: str | None = None,
    tracking_uri: str | None = None,
    extra_sets: tuple[str, ...] = (),
    progress: Callable[[str, int, int], None] | None = None,
    run_progress: RunProgress | None = None,
) -> SuiteResult:
    """Run every missing combination of a suite, then aggregate and log the tables.

    Args:
        suite: the suite.
        tasks: only these tasks (default: the suite's).
        data: a dataset folder instead of the suite's.
        tracking_uri: the MLflow store.
        extra_sets: more overrides for every run.
        progress: called with a message, the combination's number and the total.
        run_progress: progress of each run.
    """
    chosen = tasks or suite.tasks
    unknown = sorted(set(chosen) - set(suite.tasks))
    if unknown:
        raise MisoBenchError(f"--tasks {unknown[0]!r} is not in the suite (it has {suite.tasks})")
    result = SuiteResult(suite)
    combos = [
        (task, cv, seed, variant)
        for task in chosen
        for cv in suite.cv
        for seed in suite.seeds
        for variant in suite.variants
    ]
    configs = {}
    for i, (task, cv, seed, variant) in enumerate(combos):
        cfg = _config(suite, variant, task, cv, seed, data, tracking_uri, extra_sets)
        configs[(task, cv, seed, variant.name)] = cfg
        label = f"{variant.name} / {cv} / {task} / seed {seed}"
        done = finished_run(cfg)
        if done:
            result.runs[(task, cv, seed, variant.name)] = done
            result.skipped += 1
            if progress:
                progress(f"{label}: already finished", i + 1, len(combos))
            continue
        if progress:
            progress(f"{label}: running", i, len(combos))
        run = run_benchmark(cfg, progress=run_progress, announce=lambda _m: None)
        result.runs[(task, cv, seed, variant.name)] = run.run_id
        if progress:
            progress(f"{label}: done", i + 1, len(combos))
    result.table = aggregate_suite(suite, result.runs, chosen, tracking_uri)
    first = configs[next(iter(configs))]
    result.summary_run = _log_summary(suite, result, first)
    return result


def aggregate_suite(
    suite: Suite,
    runs: dict[tuple[str, str, int, str], str],
    tasks: tuple[str, ...],
    tracking_uri: str | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
) -> pd.DataFrame:
    """The suite's table (see :class:`SuiteResult`) from its runs' out-of-fold predictions."""
    rows = []
    for task in tasks:
        for cv in suite.cv:
            records: dict[str, list[RunRecord]] = {}
            for variant in suite.variants:
                records[variant.name] = [
                    load_run(runs[(task, cv, seed, variant.name)], tracking_uri)
                    for seed in suite.seeds
                ]
            rows += _aggregate(suite, task, cv, records, n_boot, ci)
    return pd.DataFrame(rows)


def _aggregate(
    suite: Suite,
    task: str,
    cv: str,
    records: dict[str, list[RunRecord]],
    n_boot: int,
    ci: float,
) -> list[dict[str, Any]]:
    ref = records[suite.reference][0]
    for i, ref_seed in enumerate(records[suite.reference]):
        if set(ref_seed.oof.index) != set(ref.oof.index):
            raise MisoBenchError(f"suite {suite.name}: seeds of {task} predict other pedons")
        for seed_runs in records.values():
            check_same_pedons(ref_seed, seed_runs[i])  # one seed: the same folds for all
    classes = ref.classes
    lookup = {c: i for i, c in enumerate(classes)}
    ids = ref.oof.index
    # How many different fold sets the seeds cut (a spatial seed only breaks ties between
    # blocks of equal pedon count: with few, large blocks every seed cuts the same folds).
    fold_sets = len(
        {tuple(pd.factorize(r.oof["fold"].loc[ids])[0]) for r in records[suite.reference]}
    )
    # The CPUs the runs computed on (chip models' float training differs between them; runs
    # older than the hardware tags say nothing and are not counted).
    cpus = sorted(
        {
            f"{r.tags['cpu']} [{r.tags.get('cpu_capability', '?')}]"
            for seed_runs in records.values()
            for r in seed_runs
            if r.tags.get("cpu")
        }
    )
    y = ref.oof["observed"].astype(str).map(lookup).to_numpy()
    binary = len(classes) == 2
    metric = "f1_pos" if binary else "macro_f1"
    positive = positive_index(ref) if binary else None
    block = float(ref.config.get("eval", {}).get("block_size_m", 1000.0))
    blocks = bootstrap_blocks(ref, block)
    layers = [
        c
        for c in ref.oof.columns
        if c not in {"fold", "observed", "predicted", "x", "y"} and not c.startswith("p/")
    ]
    groups = [("overall", "all", np.ones(len(ids), dtype=bool))]
    for layer in layers:
        names = ref.oof[layer].astype(str).to_numpy()
        groups += [(layer, region, names == region) for region in sorted(set(names))]
    preds = {
        name: np.stack(
            [r.oof["predicted"].loc[ids].astype(str).map(lookup).to_numpy() for r in seed_runs]
        )
        for name, seed_runs in records.items()
    }
    rows = []
    for name in records:
        for layer, region, sel in groups:
            stat = seed_statistic(
                y[sel], preds[name][:, sel], blocks[sel], len(classes), metric, positive, n_boot, ci
            )
            row = {
                "task": task,
                "cv": cv,
                "variant": name,
                "layer": layer,
                "region": region,
                "metric": metric,
                "n": stat.n,
                "seeds": stat.seeds,
                "fold_sets": fold_sets,
                "cpus": "; ".join(cpus),
                "per_seed": ";".join(f"{v:.6f}" for v in stat.per_seed),
                "value": stat.value,
                "low": stat.low,
                "high": stat.high,
            }
            if name != suite.reference:
                diff = paired_difference(
                    y[sel],
                    preds[name][:, sel],
                    preds[suite.reference][:, sel],
                    blocks[sel],
                    len(classes),
                    metric,
                    positive,
                    n_boot,
                    ci,
                )
                row.update(
                    diff=diff.value,
                    diff_low=diff.low,
                    diff_high=diff.high,
                    share_le0=diff.share_le0,
                )
            rows.append(row)
    return rows


def format_suite(result: SuiteResult, layer: str = "overall") -> str:
    """A Markdown table per task and scheme: variants with their metric and difference."""
    t = result.table
    lines = []
    for (task, cv), sub in t.groupby(["task", "cv"], sort=False):
        metric = sub["metric"].iloc[0]
        seeds = int(sub["seeds"].max())
        lines += [
            "",
            f"### {task} — {cv} CV — {metric} ({seeds} seed{'s' if seeds > 1 else ''}; "
            f"difference vs {result.suite.reference}, paired)",
            "",
        ]
        fold_sets = int(sub["fold_sets"].max()) if "fold_sets" in sub else seeds
        if seeds > 1 and fold_sets < seeds:
            lines += [
                f"Note: the {seeds} seeds cut only {fold_sets} different fold "
                f"set{'s' if fold_sets > 1 else ''} (a spatial seed only breaks ties between "
                "blocks of equal pedon count), so the seeds vary the models more than the "
                "folds; smaller blocks (`cv.block_size_m`) give each seed its own folds.",
                "",
            ]
        cpus = str(sub["cpus"].iloc[0]) if "cpus" in sub else ""
        if cpus.count("; ") >= 1:
            lines += [
                f"Note: these runs were computed on {cpus.count('; ') + 1} different CPUs "
                f"({cpus}); a chip model's numbers differ between CPUs, so differences "
                "between runs from different CPUs include the hardware's (run a suite's "
                "chip models on one kind of CPU).",
                "",
            ]
        per_seed = seeds > 1 and "per_seed" in sub
        lines += [
            f"| variant | {metric} [95% CI] | difference [95% CI] | replicates ≤ 0 |"
            + (" each seed |" if per_seed else ""),
            "|---|---|---|---|" + ("---|" if per_seed else ""),
        ]
        rows = sub[sub["layer"] == layer].sort_values("value", ascending=False)
        for row in rows.itertuples():
            value = f"{row.value:.3f} [{row.low:.3f}, {row.high:.3f}]"
            if row.variant == result.suite.reference:
                diff, share = "reference", ""
            else:
                diff = f"{row.diff:+.3f} [{row.diff_low:+.3f}, {row.diff_high:+.3f}]"
                share = f"{row.share_le0:.2f}"
            line = f"| {row.variant} | {value} | {diff} | {share} |"
            if per_seed:
                each = str(row.per_seed) if isinstance(row.per_seed, str) else ""
                line += " " + ", ".join(f"{float(v):.3f}" for v in each.split(";") if v) + " |"
            lines.append(line)
    return "\n".join(lines).strip()


def format_regions(result: SuiteResult) -> str:
    """Markdown tables of the primary metric by region (one per task, scheme and region
    layer: variants as rows, regions as columns), variants in the overall table's order."""
    t = result.table
    lines: list[str] = []
    for (task, cv), sub in t.groupby(["task", "cv"], sort=False):
        metric = sub["metric"].iloc[0]
        order = (
            sub[sub["layer"] == "overall"].sort_values("value", ascending=False)["variant"].tolist()
        )
        for layer in [x for x in dict.fromkeys(sub["layer"]) if x != "overall"]:
            part = sub[sub["layer"] == layer]
            regions = list(dict.fromkeys(part["region"]))
            n = part.groupby("region")["n"].max()
            lines += [
                "",
                f"### {task} — {cv} CV — {metric} by {layer}",
                "",
                "| variant | " + " | ".join(f"{r} (n={int(n[r])})" for r in regions) + " |",
                "|---|" + "---|" * len(regions),
            ]
            values = part.set_index(["variant", "region"])["value"]
            for variant in order:
                cells = [
                    ""
                    if not np.isfinite(v := float(values.get((variant, r), np.nan)))
                    else f"{v:.3f}"
                    for r in regions
                ]
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines).strip()


def _log_summary(suite: Suite, result: SuiteResult, config: dict[str, Any]) -> str:
    """The tables and a figure, in an ``ablation`` run of the first task's experiment."""
    import matplotlib.pyplot as plt

    first = load_run(next(iter(result.runs.values())), config["tracking"]["uri"])
    experiment = Tracker(
        f"{first.tags.get('dataset', 'dataset')}/ablations", config["tracking"]["uri"]
    )
    tags = {
        "run_level": "ablation",
        "ablation": suite.name,
        "suite_file": str(suite.path),
        "tasks": ",".join(sorted(set(result.table["task"].astype(str)))),
        "cvs": ",".join(sorted(set(result.table["cv"].astype(str)))),
    }
    with experiment.run(f"ablation-{suite.name}", tags=tags) as run_id:
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "ablation_table.csv"
            result.table.to_csv(table, index=False)
            experiment.log_artifact(run_id, table)
            md = Path(tmp) / "ablation_summary.md"
            md.write_text(
                f"# Ablation suite {suite.name}\n\n{format_suite(result)}\n\n"
                f"{format_regions(result)}\n"
            )
            experiment.log_artifact(run_id, md)
        experiment.set_tags(
            run_id, {f"run.{t}.{c}.{s}.{v}": r for (t, c, s, v), r in result.runs.items()}
        )
        for (task, cv), sub in result.table.groupby(["task", "cv"], sort=False):
            fig = _suite_figure(sub, suite.reference, f"{suite.name}: {task}, {cv} CV")
            experiment.log_figure(run_id, fig, f"{task}_{cv}_variants.png")
            plt.close(fig)
    return run_id


def _suite_figure(sub: pd.DataFrame, reference: str, title: str) -> Any:
    import matplotlib.pyplot as plt

    rows = sub[sub["layer"] == "overall"].sort_values("value")
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
    colors = ["#d95f02" if v == reference else "#1b9e77" for v in rows["variant"]]
    ax.barh(rows["variant"], rows["value"], color=colors)
    ax.errorbar(
        rows["value"],
        np.arange(len(rows)),
        xerr=[rows["value"] - rows["low"], rows["high"] - rows["value"]],
        fmt="none",
        ecolor="black",
        capsize=3,
    )
    ax.set_xlabel(f"{rows['metric'].iloc[0]} (95% blocked-bootstrap CI)")
    ax.set_title(title)
    fig.tight_layout()
    return fig
