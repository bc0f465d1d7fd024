"""Spatial cross-validation splitters with the scikit-learn ``BaseCrossValidator`` contract.

Every splitter takes the pedon coordinates (metres, shape ``(n, 2)``) as ``X``, so
``cross_validate``-style code keeps working; labels come as ``y`` (stratification) and group
labels (regions, ids) as ``groups``. All randomness is seeded by ``random_state``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import curve_fit
from scipy.spatial import cKDTree
from sklearn.cluster import DBSCAN
from sklearn.model_selection import BaseCrossValidator, StratifiedKFold

from ..errors import MisoBenchError, warn
from ..spatial import OUTSIDE_REGION, block_ids

__all__ = [
    "BufferedSplitter",
    "ClusterKFold",
    "FileSplit",
    "LeaveOneRegionOut",
    "RandomKFold",
    "SpatialBlockKFold",
    "balanced_group_folds",
    "estimate_autocorrelation_range",
]


def balanced_group_folds(groups: np.ndarray, n_splits: int, rng: np.random.Generator) -> np.ndarray:
    """Assign whole groups to ``n_splits`` folds, balancing the number of samples per fold.

    Groups are shuffled, then placed largest first into the currently smallest fold (ties
    broken by the shuffle), as verde's ``BlockKFold(balance=True)`` does.

    Returns:
        The fold of each sample.
    """
    uniq, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(uniq) < n_splits:
        raise MisoBenchError(
            f"only {len(uniq)} spatial groups for {n_splits} folds; use smaller blocks or "
            "clusters (block_size_m / eps_m) or fewer folds (n_splits)"
        )
    perm = rng.permutation(len(uniq))
    order = perm[np.argsort(-counts[perm], kind="stable")]
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    sizes = np.zeros(n_splits, dtype=np.int64)
    for g in order:
        f = int(np.argmin(sizes))
        fold_of_group[g] = f
        sizes[f] += counts[g]
    return fold_of_group[inv.ravel()]


class _SplitBased(BaseCrossValidator):
    """Test indices come from ``split`` (which subclasses define)."""

    def _iter_test_indices(
        self, X: Any = None, y: Any = None, groups: Any = None
    ) -> Iterator[np.ndarray]:
        for _, test in self.split(X, y, groups):
            yield test


class _FoldCV(_SplitBased):
    """Base: subclasses define ``_folds(X, y, groups) -> fold per sample``."""

    n_splits: int

    def _folds(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def split(
        self, X: Any, y: Any = None, groups: Any = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_indices, test_indices)``; every sample is tested exactly once."""
        folds = self._folds(
            np.asarray(X, dtype=np.float64),
            None if y is None else np.asarray(y),
            None if groups is None else np.asarray(groups),
        )
        for f in range(int(folds.max()) + 1):
            test = np.flatnonzero(folds == f)
            if test.size:
                yield np.flatnonzero(folds != f), test

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of folds."""
        return self.n_splits


class RandomKFold(_FoldCV):
    """Stratified, shuffled k-fold: the optimistic reference point (ignores space)."""

    def __init__(self, n_splits: int = 5, random_state: int = 0) -> None:
        self.n_splits = n_splits
        self.random_state = random_state

    def _folds(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> np.ndarray:
        folds = np.empty(len(X), dtype=np.int64)
        labels = np.zeros(len(X)) if y is None else y
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() >= self.n_splits:
            cv: BaseCrossValidator = StratifiedKFold(
                self.n_splits, shuffle=True, random_state=self.random_state
            )
            splits = cv.split(X, labels)
        else:  # a class rarer than the number of folds cannot be stratified
            rng = np.random.default_rng(self.random_state)
            order = rng.permutation(len(X))
            splits = ((None, order[f :: self.n_splits]) for f in range(self.n_splits))
        for f, (_, test) in enumerate(splits):
            folds[test] = f
        return folds


class SpatialBlockKFold(_FoldCV):
    """K-fold over square blocks of ``block_size_m`` metres, shuffled, balanced by pedon count.

    Args:
        n_splits: number of folds.
        block_size_m: block side in metres, never degrees (``X`` in a metric CRS).
        random_state: seed of the block shuffle.
    """

    def __init__(
        self, n_splits: int = 5, block_size_m: float = 5000.0, random_state: int = 0
    ) -> None:
        self.n_splits = n_splits
        self.block_size_m = block_size_m
        self.random_state = random_state

    def _folds(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> np.ndarray:
        blocks = block_ids(X[:, 0], X[:, 1], float(self.block_size_m))
        return balanced_group_folds(blocks, self.n_splits, np.random.default_rng(self.random_state))


class ClusterKFold(_FoldCV):
    """K-fold over DBSCAN clusters linked at ``eps_m`` (the reference's 1 km / 10 km folds).

    Points within ``eps_m`` of each other (chained) share a cluster; isolated points form their
    own. Clusters are shuffled and assigned to folds balanced by pedon count (seeded, unlike
    the reference).
    """

    def __init__(self, n_splits: int = 5, eps_m: float = 1000.0, random_state: int = 0) -> None:
        self.n_splits = n_splits
        self.eps_m = eps_m
        self.random_state = random_state

    def clusters(self, X: np.ndarray) -> np.ndarray:
        """Cluster id of each point (noise points get their own ids)."""
        labels = DBSCAN(eps=self.eps_m, min_samples=2).fit_predict(np.asarray(X))
        noise = labels < 0
        labels[noise] = labels.max() + 1 + np.arange(noise.sum())
        return labels

    def _folds(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> np.ndarray:
        return balanced_group_folds(
            self.clusters(X), self.n_splits, np.random.default_rng(self.random_state)
        )


class LeaveOneRegionOut(_FoldCV):
    """One fold per region (MLRA or permafrost zone): tests transfer to unseen regions.

    ``groups`` holds the region name of each pedon; pedons in no region (``"outside"``) are
    never tested and train every fold (with a warning).
    """

    def __init__(self) -> None:
        self.n_splits = 0

    def _folds(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> np.ndarray:
        if groups is None:
            raise ValueError("LeaveOneRegionOut needs the region of each pedon as groups")
        names = groups.astype(str)
        outside = names == OUTSIDE_REGION
        uniq, inv = np.unique(names[~outside], return_inverse=True)
        if len(uniq) < 2:
            raise MisoBenchError(f"leave-one-region-out needs at least 2 regions, got {list(uniq)}")
        if outside.any():
            # A scattered set whose neighbours lie in every training region is no unseen
            # region: its score would flatter the transfer estimate.
            warn(
                "region_cv_outside",
                f"leave-one-region-out: {int(outside.sum()):,} pedons in no region are "
                "never tested (they train every fold)",
            )
        self.n_splits = len(uniq)
        self.regions_ = list(uniq)
        folds = np.full(len(names), -1, dtype=np.int64)
        folds[~outside] = inv.ravel()
        return folds

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of regions in ``groups``."""
        if groups is not None:
            return len(set(np.asarray(groups).astype(str).tolist()) - {OUTSIDE_REGION})
        return self.n_splits


class BufferedSplitter(_SplitBased):
    """Any splitter plus an exclusion buffer: training pedons within ``buffer_m`` of a test
    pedon are dropped from that fold's training set.

    Args:
        base: the splitter whose folds are buffered.
        buffer_m: exclusion distance in metres.
    """

    def __init__(self, base: BaseCrossValidator, buffer_m: float = 1000.0) -> None:
        self.base = base
        self.buffer_m = buffer_m

    def split(
        self, X: Any, y: Any = None, groups: Any = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield buffered ``(train, test)`` index pairs."""
        X = np.asarray(X, dtype=np.float64)
        for train, test in self.base.split(X, y, groups):
            if self.buffer_m > 0 and len(train):
                dist, _ = cKDTree(X[test]).query(X[train], k=1)
                train = train[dist > self.buffer_m]
            yield train, test

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of folds of the base splitter."""
        return self.base.get_n_splits(X, y, groups)


class FileSplit(_SplitBased):
    """Folds read from a split file in the reference format.

    The file is JSON ``{"fold_0": {"train": [ids], "test": [ids]}, ...}`` (the reference's
    kfold5 / sfold5 / sfold5_10km files) or ``{"train": [ids], "test": [ids]}`` (its uniform
    holdout: one fold); ``groups`` holds the pedon id of each sample. Ids of the file missing
    from the data are ignored; samples whose id is in no test list are never tested (counted in
    :attr:`n_untested_`, and a warning for files of several folds). A pedon in two test lists
    is an error.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        file = Path(path)
        try:
            raw = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MisoBenchError(
                f"{file}: cannot read split file: {exc} (fix: give a JSON file "
                'like {"fold_0": {"train": [...], "test": [...]}})'
            ) from exc
        if isinstance(raw, dict) and "test" in raw and isinstance(raw["test"], list):
            raw = {"fold_0": raw}  # the uniform holdout: one fold
        keys = sorted(
            (k for k in raw if str(k).startswith("fold_")), key=lambda k: int(str(k).split("_")[1])
        )
        if not keys or not all(isinstance(raw[k], dict) and "test" in raw[k] for k in keys):
            raise MisoBenchError(
                f"{file}: expected keys fold_0..fold_k each with 'train' and "
                "'test' id lists (the reference format)"
            )
        self.folds = [
            (set(map(str, raw[k].get("train", []))), set(map(str, raw[k]["test"]))) for k in keys
        ]
        # A pedon tested in two folds would get two out-of-fold predictions, one silently
        # overwriting the other in the pooled metrics.
        for i, (_, first) in enumerate(self.folds):
            for j in range(i + 1, len(self.folds)):
                shared = first & self.folds[j][1]
                if shared:
                    raise MisoBenchError(
                        f"{file}: {len(shared)} pedon ids are in the test lists of both "
                        f"{keys[i]} and {keys[j]} (e.g. {sorted(shared)[0]!r}) (fix: list each "
                        "pedon in at most one fold's test list)"
                    )
        self.n_splits = len(self.folds)

    def split(
        self, X: Any, y: Any = None, groups: Any = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train, test)`` positions of the ids listed in each fold."""
        if groups is None:
            raise ValueError("FileSplit needs the pedon ids as groups")
        ids = np.asarray([str(g) for g in groups])
        tested = np.zeros(len(ids), dtype=bool)
        for train_ids, test_ids in self.folds:
            test = np.flatnonzero(np.isin(ids, list(test_ids)))
            train = np.flatnonzero(np.isin(ids, list(train_ids)) & ~np.isin(ids, list(test_ids)))
            tested[test] = True
            yield train, test
        self.n_untested_ = int((~tested).sum())
        if self.n_untested_ and self.n_splits > 1:
            warn(
                "untested_pedons",
                f"{self.n_untested_:,} of {len(ids):,} pedons are in no test list of "
                f"{self.path}: the pooled metrics cover the other "
                f"{len(ids) - self.n_untested_:,} (fix: list every pedon in one fold's test "
                "list to evaluate them all)",
            )

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of folds in the file."""
        return self.n_splits


def estimate_autocorrelation_range(
    X: np.ndarray,
    y: np.ndarray,
    max_points: int = 3000,
    n_bins: int = 20,
    random_state: int = 0,
    min_m: float = 100.0,
    max_m: float = 10_000.0,
) -> float:
    """Practical range (metres) of the labels' local spatial autocorrelation.

    The indicator semivariogram ``gamma(h) = 0.5 P(y_i != y_j | d_ij ~ h)`` is estimated over
    log-spaced lags up to ``max_m`` from a random subsample of pedons (lags holding under 1 %
    of the pairs are dropped). Lags are capped at ``max_m`` because between
    regions the labels follow climate trends, not local autocorrelation. An exponential model
    ``nugget + psill (1 - exp(-3 h / range))`` is fitted to the lags (weighted by their pair
    counts); its practical range is returned. Used for
    ``block_size_m: auto``.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    rng = np.random.default_rng(random_state)
    if len(X) > max_points:
        pick = rng.choice(len(X), max_points, replace=False)
        X, y = X[pick], y[pick]
    if len(np.unique(y)) < 2 or len(X) < 10:
        warn(
            "cv_autocorrelation_fallback",
            f"the labels' autocorrelation range cannot be estimated from {len(X)} pedons "
            f"of {len(np.unique(y))} class(es); block_size_m=auto uses {max_m:.0f} m "
            "(fix: set cv.block_size_m)",
        )
        return float(max_m)
    i, j = np.triu_indices(len(X), k=1)
    d = np.hypot(X[i, 0] - X[j, 0], X[i, 1] - X[j, 1])
    diff = (y[i] != y[j]).astype(np.float64)
    edges = np.geomspace(min_m / 2, max_m, n_bins + 1)
    which = np.digitize(d, edges) - 1
    ok = (which >= 0) & (which < n_bins)
    sums = np.bincount(which[ok], weights=diff[ok], minlength=n_bins)
    cnts = np.bincount(which[ok], minlength=n_bins)
    gamma = 0.5 * sums / np.maximum(cnts, 1)
    centres = np.sqrt(edges[:-1] * edges[1:])
    # Sparse lags (a handful of pairs at the longest distances) are too noisy to use.
    usable = cnts >= max(30, 0.01 * cnts.sum())
    if usable.sum() < 3:
        warn(
            "cv_autocorrelation_fallback",
            f"too few pedon pairs closer than {max_m:.0f} m to fit a semivariogram; "
            f"block_size_m=auto uses {max_m:.0f} m (fix: set cv.block_size_m)",
        )
        return float(max_m)
    h, g, n = centres[usable], gamma[usable], cnts[usable]

    def exponential(lag: np.ndarray, nugget: float, psill: float, rng_m: float) -> np.ndarray:
        return nugget + psill * (1.0 - np.exp(-3.0 * lag / rng_m))

    try:
        (_nugget, _psill, fitted), _ = curve_fit(
            exponential,
            h,
            g,
            p0=(g[0], max(g.max() - g[0], 1e-3), 1000.0),
            sigma=1.0 / np.sqrt(n),
            bounds=([0.0, 0.0, min_m], [1.0, 1.0, max_m]),
            maxfev=5000,
        )
    except (RuntimeError, ValueError):  # no convergence: fall back to the empirical rule
        reached = np.flatnonzero(g >= 0.95 * g.max())
        value = float(np.clip(h[reached[0]], min_m, max_m))
        warn(
            "cv_autocorrelation_fallback",
            "the semivariogram fit did not converge; block_size_m=auto uses the first lag "
            f"reaching 95 % of the sill ({value:.0f} m) (fix: set cv.block_size_m)",
        )
        return value
    if fitted >= max_m * (1 - 1e-6):
        warn(
            "cv_autocorrelation_fallback",
            f"the fitted autocorrelation range reaches the {max_m:.0f} m cap; "
            f"block_size_m=auto uses {max_m:.0f} m (fix: set cv.block_size_m)",
        )
    return float(np.clip(fitted, min_m, max_m))
