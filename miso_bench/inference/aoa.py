"""Area of applicability (Meyer & Pebesma 2021, Methods Ecol. Evol. 12:1620).

A model can be applied where its predictors resemble those it was trained on. The
*dissimilarity index* (DI) of a location is the distance, in the space of standardised
predictors weighted by their importance, to the nearest training point, divided by the mean
distance between training points. The threshold comes from cross-validation: each training
point's DI is its distance to the nearest training point of *another* fold (the situation a
held-out fold is in), and the threshold is the upper whisker of those values (the largest one
at most ``Q3 + 1.5 IQR``). A location is inside the area of applicability (AOA = 1) when its
DI is at most the threshold.

Predictors are the model's features for trees and the embedding its head reads for MISO.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MisoBenchError

__all__ = ["AOAReference"]

#: Training points the mean pairwise distance is computed over (a seeded sample above this).
MAX_PAIR_POINTS = 5000
#: Rows whose nearest neighbour is searched at once (bounded memory).
CHUNK_ROWS = 4096


def _nearest(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Distance from each row of ``a`` to its nearest row of ``b`` (brute force, chunked).

    The nearest row is found with a matrix product; its distance is then recomputed
    directly in float64, so the result does not depend on the BLAS library's thread count
    (a serial and a Dask run write the same pixels)."""
    out = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), CHUNK_ROWS):
        part = a[start : start + CHUNK_ROWS]
        d2 = (part * part).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * (part @ b.T)
        nearest = b[d2.argmin(axis=1)].astype(np.float64)
        diff = part.astype(np.float64) - nearest
        out[start : start + len(part)] = np.sqrt((diff * diff).sum(axis=1))
    return out


@dataclass
class AOAReference:
    """The training predictors of a model and the AOA threshold derived from its CV folds.

    Attributes:
        mean, scale: standardisation of each predictor (training mean and sd).
        weights: importance weight of each predictor (scaled predictors are multiplied by it).
        train: ``(n, d)`` standardised, weighted training predictors.
        mean_distance: mean distance between training points (the DI's unit).
        threshold: DI above which a location is outside the area of applicability (NaN for a
            single test fold: a holdout gives no cross-validated DI).
        train_di: each training point's cross-validated DI (NaN where it has no fold).
    """

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    train: np.ndarray
    mean_distance: float
    threshold: float
    train_di: np.ndarray

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        folds: np.ndarray,
        weights: np.ndarray | None = None,
        seed: int = 0,
    ) -> AOAReference:
        """Reference of training predictors ``X (n, d)`` with their CV fold ids (``-1``: in
        no test fold; such points count as neighbours but get no DI of their own).

        Raises:
            MisoBenchError: fewer than two usable training points, or fewer than two folds.
        """
        X = np.asarray(X, dtype=np.float64)
        folds = np.asarray(folds)
        keep = np.isfinite(X).all(axis=1)
        X, folds = X[keep], folds[keep]
        if len(X) < 2:
            raise MisoBenchError(
                "the area of applicability needs at least two training pedons with finite "
                "predictors"
            )
        n_folds = len(np.unique(folds[folds >= 0]))
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        w = np.ones(X.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (X.shape[1],) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise MisoBenchError(
                f"AOA weights must be {X.shape[1]} finite non-negative values, got {w.shape}"
            )
        if w.sum() == 0:
            w = np.ones_like(w)
        Z = (X - mean) / scale * w
        rng = np.random.default_rng(seed)
        P = Z if len(Z) <= MAX_PAIR_POINTS else Z[rng.choice(len(Z), MAX_PAIR_POINTS, False)]
        sq = (P * P).sum(axis=1)
        total, count = 0.0, 0
        for start in range(0, len(P), 1024):
            part = P[start : start + 1024]
            d2 = (part * part).sum(axis=1)[:, None] + sq[None, :] - 2.0 * (part @ P.T)
            d = np.sqrt(np.maximum(d2, 0.0))
            idx = np.arange(start, start + len(part))
            upper = idx[:, None] < np.arange(len(P))[None, :]
            total += float(d[upper].sum())
            count += int(upper.sum())
        mean_distance = total / count
        if not mean_distance > 0:
            raise MisoBenchError(
                "every training pedon has the same predictors: no area of applicability"
            )
        train_di = np.full(len(Z), np.nan)
        if n_folds < 2:  # a holdout: no cross-validated DI, so no threshold
            return cls(mean, scale, w, Z, mean_distance, float("nan"), train_di)
        for f in np.unique(folds[folds >= 0]):
            inside = folds == f
            others = Z[~inside]
            train_di[inside] = _nearest(Z[inside], others, (others * others).sum(axis=1))
        train_di /= mean_distance
        tested = train_di[np.isfinite(train_di)]
        q1, q3 = np.percentile(tested, [25, 75])
        threshold = float(tested[tested <= q3 + 1.5 * (q3 - q1)].max())
        return cls(mean, scale, w, Z, mean_distance, threshold, train_di)

    def di(self, X: np.ndarray) -> np.ndarray:
        """Dissimilarity index of rows ``X (m, d)``; NaN where a predictor is NaN."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise MisoBenchError(
                f"AOA: predictors have {X.shape[-1]} columns, the reference {len(self.mean)}"
            )
        out = np.full(len(X), np.nan)
        ok = np.isfinite(X).all(axis=1)
        if ok.any():
            Z = (X[ok] - self.mean) / self.scale * self.weights
            T = self.train
            out[ok] = _nearest(Z, T, (T * T).sum(axis=1)) / self.mean_distance
        return out

    def save(self, path: str | Path) -> None:
        """Write the reference as ``.npz`` (atomically)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.partial")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                mean=self.mean,
                scale=self.scale,
                weights=self.weights,
                train=self.train,
                mean_distance=self.mean_distance,
                threshold=self.threshold,
                train_di=self.train_di,
            )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> AOAReference:
        """Read a reference written by :meth:`save`."""
        with np.load(path) as z:
            return cls(
                z["mean"],
                z["scale"],
                z["weights"],
                z["train"],
                float(z["mean_distance"]),
                float(z["threshold"]),
                z["train_di"],
            )
