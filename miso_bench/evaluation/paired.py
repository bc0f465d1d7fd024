"""Seed-aggregated metrics and paired differences, with spatially blocked bootstrap CIs.

Runs compared on the *same pedons and folds* are compared pedon by pedon: a bootstrap
replicate resamples square spatial blocks with replacement and recomputes both sides on the
same drawn pedons, so the CI of the difference is much narrower than two overlapping
unpaired CIs suggest. Several seeds of the same variant are aggregated per replicate (the mean,
or the interquartile mean when there are at least five seeds). Everything works on per-block
confusion matrices, so a thousand replicates cost milliseconds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import trim_mean

from .metrics import confusion, metrics_from_confusion

__all__ = ["SeedStat", "aggregate", "paired_difference", "seed_statistic"]


@dataclass(frozen=True)
class SeedStat:
    """A metric aggregated over seeds, with its bootstrap CI.

    Attributes:
        value: the aggregate (mean, or interquartile mean with five seeds or more).
        low, high: the CI bounds.
        n: pedons; seeds: how many seeds were aggregated.
        share_le0: share of bootstrap replicates at or below 0 (for differences).
        per_seed: the metric of each seed (for one side; empty for differences).
    """

    value: float
    low: float
    high: float
    n: int
    seeds: int
    share_le0: float = float("nan")
    per_seed: tuple[float, ...] = ()


def aggregate(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over seeds, or the interquartile mean (25 % trimmed each side) with >= 5 seeds."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[axis] >= 5 and np.isfinite(values).all():
        return np.asarray(trim_mean(values, 0.25, axis=axis))
    if values.shape[axis] >= 5:  # a seed with an undefined value: aggregate the others
        moved = np.moveaxis(values, axis, 0)
        out = np.full(moved.shape[1:], np.nan)
        for idx in np.ndindex(*moved.shape[1:]):
            column = moved[(slice(None), *idx)]
            column = column[np.isfinite(column)]
            if column.size:
                out[idx] = trim_mean(column, 0.25) if column.size >= 5 else column.mean()
        return out
    with warnings.catch_warnings():  # a replicate undefined for every seed stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _block_confusions(
    y: np.ndarray, preds: np.ndarray, blocks: np.ndarray, k: int
) -> tuple[np.ndarray, int]:
    """``(seeds, blocks, K*K)`` confusion counts per block, and the number of blocks."""
    uniq, inv = np.unique(blocks, return_inverse=True)
    nb = len(uniq)
    out = np.empty((preds.shape[0], nb, k * k))
    for s in range(preds.shape[0]):
        idx = (inv.ravel() * k + y) * k + preds[s]
        out[s] = np.bincount(idx, minlength=nb * k * k).reshape(nb, k * k)
    return out, nb


def _metric(
    cms: np.ndarray, metric: str, positive: int | None, macro_over: np.ndarray | None = None
) -> np.ndarray:
    stats = metrics_from_confusion(cms, positive=positive, macro_over=macro_over)
    return np.asarray(stats[metric], dtype=np.float64)


def seed_statistic(
    y: np.ndarray,
    preds: np.ndarray,
    blocks: np.ndarray,
    n_classes: int,
    metric: str,
    positive: int | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> SeedStat:
    """A confusion-matrix metric of predicted classes ``preds`` (``(seeds, n)``) against
    ``y``, aggregated over seeds, with a blocked-bootstrap CI."""
    return _statistic(
        y, [np.atleast_2d(preds)], blocks, n_classes, metric, positive, n_boot, ci, seed
    )


def paired_difference(
    y: np.ndarray,
    preds_a: np.ndarray,
    preds_b: np.ndarray,
    blocks: np.ndarray,
    n_classes: int,
    metric: str,
    positive: int | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> SeedStat:
    """``metric(A) - metric(B)`` on the same pedons (each side aggregated over its seeds),
    with a blocked-bootstrap CI of the difference and the share of replicates <= 0."""
    return _statistic(
        y,
        [np.atleast_2d(preds_a), np.atleast_2d(preds_b)],
        blocks,
        n_classes,
        metric,
        positive,
        n_boot,
        ci,
        seed,
    )


def _statistic(
    y: np.ndarray,
    sides: list[np.ndarray],
    blocks: np.ndarray,
    k: int,
    metric: str,
    positive: int | None,
    n_boot: int,
    ci: float,
    seed: int,
) -> SeedStat:
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    if n == 0:
        nan = float("nan")
        return SeedStat(nan, nan, nan, 0, sides[0].shape[0])
    point, seeds_of = [], []
    for preds in sides:
        per_seed = [float(_metric(confusion(y, p, k), metric, positive)) for p in preds]
        seeds_of.append(tuple(per_seed))
        point.append(float(aggregate(np.array(per_seed))))
    value = point[0] - point[1] if len(sides) == 2 else point[0]
    one = seeds_of[0] if len(sides) == 1 else ()
    rng = np.random.default_rng(seed)
    per_block = [_block_confusions(y, preds, blocks, k) for preds in sides]
    nb = per_block[0][1]
    if nb < 2 or n_boot < 1:
        return SeedStat(value, float("nan"), float("nan"), n, sides[0].shape[0], per_seed=one)
    draws = rng.integers(0, nb, size=(n_boot, nb))
    counts = np.zeros((n_boot, nb))
    np.add.at(counts, (np.repeat(np.arange(n_boot), nb), draws.ravel()), 1.0)
    classes = np.bincount(y, minlength=k) > 0  # macro averages over the evaluated classes
    replicate = []
    for block_cm, _ in per_block:
        cms = np.einsum("rb,sbk->srk", counts, block_cm).reshape(-1, n_boot, k, k)
        replicate.append(aggregate(_metric(cms, metric, positive, classes), axis=0))
    stat = replicate[0] - replicate[1] if len(sides) == 2 else replicate[0]
    stat = stat[np.isfinite(stat)]
    if stat.size < max(20, n_boot // 10):  # too few usable replicates: no CI
        return SeedStat(value, float("nan"), float("nan"), n, sides[0].shape[0], per_seed=one)
    lo, hi = np.percentile(stat, [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100])
    share = float(np.mean(stat <= 0))
    return SeedStat(value, float(lo), float(hi), n, sides[0].shape[0], share, one)
