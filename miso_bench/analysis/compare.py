"""Paired comparison of runs on the same pedons and folds (``miso-bench compare``).

For runs of the same dataset and task whose out-of-fold predictions cover the same pedons
with the same folds, the difference of a metric is computed pedon by pedon with a spatially
blocked bootstrap, overall and for every region of every layer. Runs that differ in dataset,
task, pedons or folds are refused with one line saying how.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import MisoBenchError, warn
from ..evaluation.paired import paired_difference, seed_statistic
from ..spatial import MetricFrame, block_ids, metric_crs_for
from ..tracking import open_client

__all__ = ["Comparison", "RunRecord", "compare_runs", "load_run"]


@dataclass
class RunRecord:
    """A finished run's out-of-fold predictions and what identifies them.

    Attributes:
        run_id: the MLflow run.
        name: a label (the run's name).
        tags: its tags; config: its resolved config (``config.yaml``).
        oof: ``id``-indexed predictions: ``fold``, ``observed``, ``predicted``, ``x``, ``y``,
            region columns and ``p/<class>`` probabilities.
    """

    run_id: str
    name: str
    tags: dict[str, str]
    config: dict[str, Any]
    oof: pd.DataFrame

    @property
    def task(self) -> str:
        return self.tags.get("task", "")

    @property
    def classes(self) -> list[str]:
        return [c[2:] for c in self.oof.columns if c.startswith("p/")]


def load_run(run_id: str, tracking_uri: str | None = None) -> RunRecord:
    """A benchmark or sweep run's predictions from MLflow.

    Raises:
        MisoBenchError: no such run, or a run without out-of-fold predictions.
    """
    import yaml
    from mlflow.exceptions import MlflowException

    client = open_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise MisoBenchError(f"no MLflow run {run_id!r} (fix: copy a run id from the UI)") from exc
    try:
        path = client.download_artifacts(run_id, "oof_predictions.parquet")
    except (MlflowException, OSError) as exc:
        raise MisoBenchError(
            f"run {run_id} has no out-of-fold predictions: compare parent runs of `miso-bench "
            "run` or `sweep` (not a fold's run), finished"
        ) from exc
    oof = pd.read_parquet(path).set_index("id")
    oof = oof[oof["fold"] >= 0]  # pedons no test fold held (a split file may leave some)
    config: dict[str, Any] = {}
    with contextlib.suppress(MlflowException, OSError):  # older runs may lack their config
        config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml")).read_text())
    params = run.data.params
    if "block_size_m" not in config.get("eval", {}) and "eval.block_size_m" in params:
        # The bootstrap block of the run, from its logged parameters.
        config.setdefault("eval", {})["block_size_m"] = float(params["eval.block_size_m"])
    return RunRecord(run_id, run.info.run_name or run_id, dict(run.data.tags), config, oof)


@dataclass
class Comparison:
    """A paired comparison against a reference run.

    Attributes:
        reference: the reference run; others: the compared runs.
        metric: the compared metric.
        table: one row per (run, layer, region): ``run``, ``layer``, ``region``, ``n``,
            ``reference``, ``value``, ``diff``, ``low``, ``high``, ``share_le0`` (the
            difference is the run minus the reference).
    """

    reference: RunRecord
    others: list[RunRecord]
    metric: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def check_same_pedons(a: RunRecord, b: RunRecord) -> None:
    """Refuse runs that are not on the same dataset, task, pedons and folds."""
    for key, label in (("dataset_fingerprint", "datasets"), ("task", "tasks")):
        if a.tags.get(key) != b.tags.get(key):
            raise MisoBenchError(
                f"runs {a.run_id} and {b.run_id} are on different {label} "
                f"({a.tags.get(key)} vs {b.tags.get(key)}): a paired comparison needs the same"
            )
    if set(a.oof.index) != set(b.oof.index):
        only_a = len(set(a.oof.index) - set(b.oof.index))
        only_b = len(set(b.oof.index) - set(a.oof.index))
        raise MisoBenchError(
            f"runs {a.run_id} and {b.run_id} predict different pedons ({only_a} only in the "
            f"first, {only_b} only in the second)"
        )
    folds = a.oof["fold"].loc[b.oof.index] != b.oof["fold"]
    if folds.any():
        raise MisoBenchError(
            f"runs {a.run_id} and {b.run_id} use different folds ({int(folds.sum())} pedons in "
            "another fold): compare runs of the same cv scheme and seed"
        )


def positive_index(record: RunRecord) -> int:
    """The positive class of a binary run (its ``positive_class`` tag; older runs: "1")."""
    classes = record.classes
    tag = record.tags.get("positive_class")
    if tag is not None and tag in classes:
        return classes.index(tag)
    if "1" in classes:
        return classes.index("1")
    raise MisoBenchError(
        f"run {record.run_id}: which class is positive is not recorded (classes {classes}); "
        "rerun it with this version of miso-bench"
    )


def _metric_for(record: RunRecord, metric: str | None) -> tuple[str, int | None]:
    classes = record.classes
    binary = len(classes) == 2
    name = metric or ("f1_pos" if binary else "macro_f1")
    positive = positive_index(record) if binary else None
    if name.endswith("_pos") and positive is None:
        raise MisoBenchError(f"metric {name!r} needs a binary task")
    return name, positive


def bootstrap_blocks(record: RunRecord, block_size_m: float) -> np.ndarray:
    """The bootstrap block of each of a run's pedons, in the metres its distances were
    measured in (the run's ``dataset_crs`` / ``distance_crs`` tags; never an assumed CRS)."""
    tags = record.tags
    if "dataset_crs" not in tags:
        raise MisoBenchError(
            f"run {record.run_id} does not record its dataset CRS, so its pedons cannot be put "
            "in bootstrap blocks (fix: rerun it with this version of miso-bench)"
        )
    x, y = record.oof["x"].to_numpy(), record.oof["y"].to_numpy()
    if "distance_crs" in tags:
        frame = MetricFrame(tags["dataset_crs"], tags["distance_crs"])
    else:  # the run's frame, chosen again the way runs choose it
        frame = MetricFrame(tags["dataset_crs"], metric_crs_for(tags["dataset_crs"], x, y))
    xy = frame.to_metric(x, y)
    return block_ids(xy[:, 0], xy[:, 1], block_size_m)


def compare_runs(
    run_ids: list[str],
    tracking_uri: str | None = None,
    metric: str | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    block_size_m: float | None = None,
    seed: int = 0,
) -> Comparison:
    """Compare runs with the first one, pedon by pedon, overall and by region.

    Raises:
        MisoBenchError: fewer than two runs, or runs not on the same pedons and folds.
    """
    if len(run_ids) < 2:
        raise MisoBenchError("compare needs at least two run ids (the first is the reference)")
    records = [load_run(r, tracking_uri) for r in run_ids]
    ref = records[0]
    for other in records[1:]:
        check_same_pedons(ref, other)
    name, positive = _metric_for(ref, metric)
    recorded = ref.config.get("eval", {}).get("block_size_m")
    if block_size_m is None and recorded is None:
        warn(
            "compare_block_size_default",
            f"run {ref.run_id} records no bootstrap block size (eval.block_size_m): the "
            "comparison uses 1000 m blocks (fix: give --block-size-m)",
        )
    block = float(block_size_m or recorded or 1000.0)
    ids = ref.oof.index
    classes = ref.classes
    lookup = {c: i for i, c in enumerate(classes)}
    y = ref.oof["observed"].astype(str).map(lookup).to_numpy()
    blocks = bootstrap_blocks(ref, block)
    layers = [
        c
        for c in ref.oof.columns
        if c not in {"fold", "observed", "predicted", "x", "y"} and not c.startswith("p/")
    ]
    rows = []

    def predicted(record: RunRecord) -> np.ndarray:
        return record.oof["predicted"].loc[ids].astype(str).map(lookup).to_numpy()

    p_ref = predicted(ref)
    for other in records[1:]:
        p_other = predicted(other)
        groups = [("overall", "all", np.ones(len(ids), dtype=bool))]
        for layer in layers:
            names = ref.oof[layer].astype(str).to_numpy()
            groups += [(layer, region, names == region) for region in sorted(set(names))]
        for layer, region, sel in groups:
            diff = paired_difference(
                y[sel],
                p_other[sel],
                p_ref[sel],
                blocks[sel],
                len(classes),
                name,
                positive,
                n_boot,
                ci,
                seed,
            )
            base = seed_statistic(y[sel], p_ref[sel], blocks[sel], len(classes), name, positive, 0)
            rows.append(
                {
                    "run": other.run_id,
                    "name": other.name,
                    "layer": layer,
                    "region": region,
                    "n": int(sel.sum()),
                    "reference": base.value,
                    "value": base.value + diff.value,
                    "diff": diff.value,
                    "low": diff.low,
                    "high": diff.high,
                    "share_le0": diff.share_le0,
                }
            )
    return Comparison(ref, records[1:], name, pd.DataFrame(rows))


def format_comparison(c: Comparison) -> str:
    """The terminal table of a comparison."""
    lines = [
        f"paired {c.metric}, reference {c.reference.name} ({c.reference.run_id}); "
        "difference = run - reference [95% blocked-bootstrap CI], share of replicates <= 0",
    ]
    for run, sub in c.table.groupby("run", sort=False):
        lines += ["", f"{sub['name'].iloc[0]} ({run})"]
        lines.append(
            f"  {'layer':<10}{'region':<30}{'n':>6}{'ref':>8}{'run':>8}{'diff':>9}"
            f"  {'95% CI':<18}{'<=0':>6}"
        )
        for row in sub.itertuples():
            ci = "" if np.isnan(row.low) else f"[{row.low:+.3f}, {row.high:+.3f}]"
            share = "" if np.isnan(row.share_le0) else f"{row.share_le0:.2f}"
            lines.append(
                f"  {row.layer:<10}{str(row.region)[:29]:<30}{row.n:>6}{row.reference:8.3f}"
                f"{row.value:8.3f}{row.diff:+9.3f}  {ci:<18}{share:>6}"
            )
    return "\n".join(lines)
