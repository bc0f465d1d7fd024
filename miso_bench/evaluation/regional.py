"""Metrics overall and by region, with confidence intervals from a spatially blocked bootstrap.

Pedons are clustered, so resampling single pedons would understate uncertainty. The
bootstrap resamples square spatial blocks (``block_size_m`` metres, on metric coordinates) with
replacement: per-block confusion matrices are summed with the drawn multiplicities, so a
thousand replicates cost a few milliseconds per region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..registry import slugify
from ..spatial import OUTSIDE_REGION, block_ids
from .metrics import CM_METRICS, classification_metrics, confusion, metrics_from_confusion
from .tasks import Task

__all__ = [
    "RegionalResult",
    "bootstrap_ci",
    "confusion_of",
    "evaluate_by_region",
    "hard_labels",
]


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    blocks: np.ndarray,
    n_classes: int,
    positive: int | None,
    n_boot: int = 200,
    ci: float = 0.95,
    rng: np.random.Generator | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile CIs of confusion-matrix metrics under a block bootstrap."""
    rng = rng or np.random.default_rng(0)
    uniq, inv = np.unique(blocks, return_inverse=True)
    nb = len(uniq)
    keys = list(CM_METRICS) + (
        ["f1_pos", "precision_pos", "recall_pos"] if positive is not None else []
    )
    if nb < 2 or n_boot < 1:
        return {k: (float("nan"), float("nan")) for k in keys}
    idx = (inv * n_classes + y_true) * n_classes + y_pred
    block_cm = (
        np.bincount(idx, minlength=nb * n_classes * n_classes)
        .reshape(nb, n_classes * n_classes)
        .astype(np.float64)
    )
    draws = rng.integers(0, nb, size=(n_boot, nb))
    counts = np.zeros((n_boot, nb))
    np.add.at(counts, (np.repeat(np.arange(n_boot), nb), draws.ravel()), 1.0)
    cms = (counts @ block_cm).reshape(n_boot, n_classes, n_classes)
    # Macro averages over the evaluated set's classes; replicates missing one are left out.
    classes = block_cm.sum(axis=0).reshape(n_classes, n_classes).sum(axis=1) > 0
    stats = metrics_from_confusion(cms, positive=positive, macro_over=classes)
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    out = {}
    for k in keys:
        values = np.asarray(stats[k], dtype=np.float64)
        values = values[np.isfinite(values)]
        out[k] = (
            (float(np.percentile(values, lo)), float(np.percentile(values, hi)))
            if values.size >= max(20, n_boot // 10)  # too few usable replicates: no CI
            else (float("nan"), float("nan"))
        )
    return out


@dataclass
class RegionalResult:
    """Evaluation of one prediction set.

    Attributes:
        table: long table with columns ``layer, region, metric, value, ci_low, ci_high, n``
            (``layer == "overall"`` for the whole set).
        worst: per region layer, the region with the lowest primary metric (among regions
            with at least ``min_n`` pedons) and its value.
    """

    table: pd.DataFrame
    worst: dict[str, tuple[str, float]]
    primary: str = ""

    def flat(self, prefix: str) -> dict[str, float]:
        """``{prefix/overall/metric: v, prefix/<layer>/<slug>/metric: v, ..._ci_low: ...}``."""
        out: dict[str, float] = {}
        for row in self.table.itertuples(index=False):
            base = (
                f"{prefix}/overall/{row.metric}"
                if row.layer == "overall"
                else f"{prefix}/{row.layer}/{slugify(row.region)}/{row.metric}"
            )
            out[base] = float(row.value)
            if not np.isnan(row.ci_low):
                out[base + "_ci_low"] = float(row.ci_low)
                out[base + "_ci_high"] = float(row.ci_high)
        for layer, (_region, value) in self.worst.items():
            out[f"{prefix}/{layer}/worst/{self.primary}"] = value
        return out


def _rows(
    layer: str,
    region: str,
    y: np.ndarray,
    proba: np.ndarray,
    blocks: np.ndarray,
    task: Task,
    n_boot: int,
    ci: float,
    rng: np.random.Generator,
) -> list[dict]:
    metrics = classification_metrics(y, proba, task)
    pos = task.positive_index if task.kind == "binary" else None
    y_pred = hard_labels(proba, task)
    cis = bootstrap_ci(y, y_pred, blocks, task.n_classes, pos, n_boot, ci, rng)
    rows = []
    for metric, value in metrics.items():
        low, high = cis.get(metric, (float("nan"), float("nan")))
        rows.append(
            {
                "layer": layer,
                "region": region,
                "metric": metric,
                "value": value,
                "ci_low": low,
                "ci_high": high,
                "n": len(y),
            }
        )
    return rows


def evaluate_by_region(
    y_true: np.ndarray,
    proba: np.ndarray,
    task: Task,
    x: np.ndarray,
    y: np.ndarray,
    regions: dict[str, np.ndarray] | None = None,
    block_size_m: float = 1000.0,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    min_n: int = 30,
) -> RegionalResult:
    """Metrics overall and for every region of every layer, with blocked-bootstrap CIs.

    Args:
        y_true: class indices.
        proba: class probabilities ``(n, K)``.
        task: the task.
        x, y: pedon coordinates (metres) for the bootstrap blocks.
        regions: layer name -> region name per pedon.
        block_size_m: bootstrap block side.
        n_boot: bootstrap replicates (0 disables CIs).
        ci: confidence level.
        seed: bootstrap seed.
        min_n: smallest region considered for the "worst region".
    """
    rng = np.random.default_rng(seed)
    y_true = np.asarray(y_true, dtype=np.int64)
    blocks = block_ids(x, y, block_size_m)
    rows = _rows("overall", "all", y_true, proba, blocks, task, n_boot, ci, rng)
    worst: dict[str, tuple[str, float]] = {}
    for layer, names in (regions or {}).items():
        names = np.asarray(names, dtype=object)
        scores = []
        for region in sorted(set(names)):
            sel = names == region
            rrows = _rows(
                layer, region, y_true[sel], proba[sel], blocks[sel], task, n_boot, ci, rng
            )
            rows += rrows
            if sel.sum() >= min_n and region != OUTSIDE_REGION:  # no region is not a region
                value = next(r["value"] for r in rrows if r["metric"] == task.primary_metric)
                if np.isfinite(value):  # undefined (no positives) is not "worst"
                    scores.append((value, region))
        if scores:
            value, region = min(scores)
            worst[layer] = (region, value)
    return RegionalResult(pd.DataFrame(rows), worst, primary=task.primary_metric)


def hard_labels(proba: np.ndarray, task: Task) -> np.ndarray:
    """Predicted class indices, the one rule for every metric and every stored prediction:
    the positive class where its probability is at least 0.5 (binary tasks; a tie is
    positive), the most probable class otherwise."""
    if task.kind == "binary":
        pos = task.classes.index(task.positive_class)
        return np.where(proba[:, pos] >= 0.5, pos, 1 - pos)
    return proba.argmax(axis=1)


def confusion_of(y_true: np.ndarray, proba: np.ndarray, task: Task) -> np.ndarray:
    """The confusion matrix of a prediction set (for plots)."""
    return confusion(y_true, hard_labels(proba, task), task.n_classes)
