"""Cross-validation schemes (a registry), the inner validation split, and fold diagnostics.

Each registry entry builds a splitter from the ``cv`` section of a run config and a
:class:`SplitContext` (coordinates, labels, ids, regions, prediction domain), and says what
``groups`` its ``split`` needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import BaseCrossValidator

from ..errors import MisoBenchError, warn
from ..registry import Registry
from ..spatial import block_ids
from .diagnostics import FoldDiagnostics, fold_diagnostics
from .knndm import KNNDMKFold
from .splitters import (
    BufferedSplitter,
    ClusterKFold,
    FileSplit,
    LeaveOneRegionOut,
    RandomKFold,
    SpatialBlockKFold,
    estimate_autocorrelation_range,
)

__all__ = [
    "CV",
    "CV_DESCRIPTIONS",
    "FoldDiagnostics",
    "SplitContext",
    "build_splits",
    "fold_diagnostics",
    "inner_validation_split",
    "resolve_block_size",
]


@dataclass
class SplitContext:
    """What splitters may need besides the coordinates.

    Attributes:
        coords: ``(n, 2)`` pedon coordinates in metres (a metric CRS, see
            :func:`miso_bench.spatial.metric_coordinates`).
        y: class index of each pedon.
        ids: pedon ids (for split files).
        regions: region layer -> region name of each pedon.
        prediction_points: ``(m, 2)`` sample of the prediction domain (for kNNDM), in the
            same metric CRS.
        seed: the run seed.
    """

    coords: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    prediction_points: np.ndarray | None = None
    seed: int = 0


Factory = Callable[[SplitContext, dict[str, Any]], tuple[BaseCrossValidator, Any]]
#: Cross-validation schemes: name -> factory returning ``(splitter, groups)``.
CV: Registry[Factory] = Registry("cv")
CV_DESCRIPTIONS: dict[str, str] = {
    "random": "stratified random k-fold (optimistic reference point)",
    "spatial": "k-fold over square blocks of block_size_m (metres or 'auto'), balanced",
    "cluster": "k-fold over DBSCAN clusters linked at eps_m (reference 1 km / 10 km folds)",
    "region": "leave-one-region-out over a region layer (region: mlra or pf_zone)",
    "buffered": "the `base` scheme with training pedons within buffer_m of the test fold removed",
    "knndm": "kNNDM: test->train distances matched to prediction->train (Linnenbrink 2024)",
    "file": "folds from a split file in the reference JSON format (path)",
}


def resolve_block_size(value: Any, ctx: SplitContext) -> float:
    """``block_size_m``: a number of metres, or ``auto`` (the labels' autocorrelation range,
    rounded to whole metres).

    The rounding makes ``auto`` reproducible across machines: the semivariogram fit's last
    digits depend on the CPU's BLAS kernels (300.4908 against 300.4901 m on the default
    dataset's pf1m labels), and blocks that differ in their sixth digit dealt 1,167 of its
    1,650 pedons to other folds. The run's ``cv_block_size_m`` tag is the size used.
    """
    if value in ("auto", None):
        fitted = estimate_autocorrelation_range(ctx.coords, ctx.y, random_state=ctx.seed)
        return float(round(fitted))
    try:
        size = float(value)
    except (TypeError, ValueError) as exc:
        raise MisoBenchError(
            f"cv.block_size_m must be a number of metres or 'auto', got {value!r}"
        ) from exc
    if size <= 0:
        raise MisoBenchError(f"cv.block_size_m must be positive, got {size}")
    return size


@CV.register("random")
def _random(ctx: SplitContext, p: dict[str, Any]) -> tuple[BaseCrossValidator, Any]:
    return RandomKFold(int(p["n_splits"]), ctx.seed), None


@CV.register("spatial")
def _spatial(ctx: SplitContext, p: dict[str, Any]) -> tuple[BaseCrossValidator, Any]:
    n_splits = int(p["n_splits"])
    size = resolve_block_size(p["block_size_m"], ctx)
    if p["block_size_m"] in ("auto", None):
        # An autocorrelation range as large as the study area leaves too few blocks to
        # balance folds; shrink until there are at least two blocks per fold.
        fitted = size
        while (
            size > 100.0
            and len(np.unique(block_ids(ctx.coords[:, 0], ctx.coords[:, 1], size))) < 2 * n_splits
        ):
            size /= 2
        if size != fitted:
            warn(
                "cv_block_size_shrunk",
                f"block_size_m=auto: the autocorrelation range ({fitted:.0f} m) leaves fewer "
                f"than {2 * n_splits} blocks; blocks shrunk to {size:g} m",
            )
    return SpatialBlockKFold(n_splits, size, ctx.seed), None


@CV.register("cluster")
def _cluster(ctx: SplitContext, p: dict[str, Any]) -> tuple[BaseCrossValidator, Any]:
    return ClusterKFold(int(p["n_splits"]), float(p["eps_m"]), ctx.seed), None


@CV.register("region")
def _region(ctx: SplitContext, p: dict[str, Any]) -> tuple[BaseCrossValidator, Any]:
    layer = str(p["region"])
    if layer not in ctx.regions:
        raise MisoBenchError(
            f"cv.region: the dataset has no region layer {layer!r} (its "
            f"layers: {', '.join(sorted(ctx.regions)) or 'none'})"
        )
    return LeaveOneRegionOut(), ctx.regions[layer]


@CV.register("buffered")
def _buffered(ctx: SplitContext, p: dict[str, Any]) -> tuple[BaseCrossValidator, Any]:
    base = str(p["base"])
    if base == "buffered":
        raise MisoBenchError("cv.base cannot be 'buffered' itself; use spatial, cluster, ...")
    splitter, groups = CV.get(base)(ctx, p)
    return BufferedSplitter(splitter, float(p["buffer_m"])), groups


@CV.register("knndm")
def _knndm(ctx: SplitContext, p: dict[str, Any]) -> tuple[BaseCrossValidator, Any]:
    if ctx.prediction_points is None:
        raise MisoBenchError("kNNDM needs a prediction domain (the rasters' extent)")
    return KNNDMKFold(ctx.prediction_points, int(p["n_splits"]), random_state=ctx.seed), None


@CV.register("file")
def _file(ctx: SplitContext, p: dict[str, Any]) -> tuple[BaseCrossValidator, Any]:
    if not p.get("path"):
        raise MisoBenchError(
            "cv 'file' needs cv.path: the split JSON file (--set cv.path=splits.json)"
        )
    return FileSplit(p["path"]), ctx.ids


def build_splits(
    name: str, params: dict[str, Any], ctx: SplitContext
) -> tuple[BaseCrossValidator, list[tuple[np.ndarray, np.ndarray]]]:
    """The splitter of scheme ``name`` and its folds as ``(train, test)`` position arrays."""
    splitter, groups = CV.get(name)(ctx, params)
    splits = [
        (np.asarray(tr), np.asarray(te)) for tr, te in splitter.split(ctx.coords, ctx.y, groups)
    ]
    return splitter, splits


def inner_validation_split(
    coords: np.ndarray, y: np.ndarray, block_size_m: float, seed: int, val_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """A spatial validation split carved from a training fold only.

    Square blocks of ``block_size_m`` are assigned to ``round(1 / val_fraction)`` balanced
    groups and the first group is the validation set. Models use it for early stopping and
    tuning; the outer test fold is never seen.

    Returns:
        ``(fit, val)`` positions within the training fold.
    """
    n_groups = max(2, round(1 / val_fraction))
    xy = np.asarray(coords, dtype=np.float64)
    size = float(block_size_m)
    while True:
        try:
            folds = SpatialBlockKFold(n_groups, size, seed)._folds(xy, None, None)
            break
        except MisoBenchError:  # too few blocks for the groups: smaller blocks
            if size / 4 < 1.0:
                raise
            size /= 4
    if size != block_size_m:
        warn(
            "inner_split_blocks_shrunk",
            f"the inner validation split needs {n_groups} blocks; {len(xy)} training pedons "
            f"span fewer {block_size_m:.0f} m blocks, so it used {size:.0f} m blocks "
            "(fix: set cv.inner_block_size_m)",
        )
    return np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
