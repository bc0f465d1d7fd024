"""Fold diagnostics: sizes and classes per fold, nearest-neighbour distance ECDFs, W statistic.

``G_ij`` are distances from prediction-domain points to the nearest training pedon (what a
map must do), ``G_j*`` from each test pedon to the nearest training pedon of its fold (what
the CV does). The W statistic is the Wasserstein distance between the two distributions: a
CV whose W is small mimics the prediction task (Linnenbrink et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import wasserstein_distance

from ..spatial import nearest_distance

__all__ = ["FoldDiagnostics", "fold_diagnostics"]


@dataclass
class FoldDiagnostics:
    """What a set of folds looks like.

    Attributes:
        table: one row per fold: ``fold, n_train, n_test`` and test counts per class.
        gij: prediction -> nearest pedon distances (m).
        gj_star: test pedon -> nearest training pedon of its fold (m).
        gj: pedon -> nearest other pedon (m), the sampling density.
        w: Wasserstein distance between ``gj_star`` and ``gij`` (m).
    """

    table: pd.DataFrame
    gij: np.ndarray
    gj_star: np.ndarray
    gj: np.ndarray
    w: float

    def summary(self) -> dict[str, float]:
        """Numbers for tracking."""
        return {
            "cv/w_statistic_m": self.w,
            "cv/median_test_to_train_m": float(np.median(self.gj_star)),
            "cv/median_prediction_to_train_m": float(np.median(self.gij)),
            "cv/n_folds": float(len(self.table)),
            "cv/min_test_size": float(self.table["n_test"].min()),
            "cv/max_test_size": float(self.table["n_test"].max()),
        }


def fold_diagnostics(
    X: np.ndarray,
    y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    prediction_points: np.ndarray,
    class_names: list[str],
) -> FoldDiagnostics:
    """Diagnostics of ``splits`` (lists of train/test positions) for pedons at ``X``."""
    X = np.asarray(X, dtype=np.float64)
    rows = []
    gj_star = np.full(len(X), np.nan)
    for f, (train, test) in enumerate(splits):
        counts = np.bincount(np.asarray(y)[test], minlength=len(class_names))
        rows.append(
            {
                "fold": f,
                "n_train": len(train),
                "n_test": len(test),
                **{f"test/{c}": int(n) for c, n in zip(class_names, counts, strict=True)},
            }
        )
        gj_star[test] = nearest_distance(X[test], X[train])
    tested = ~np.isnan(gj_star)
    all_train = np.unique(np.concatenate([tr for tr, _ in splits])) if splits else np.array([])
    gij = nearest_distance(np.asarray(prediction_points), X[all_train.astype(int)])
    gj = nearest_distance(X, X, exclude_self=True)
    finite = tested & np.isfinite(gj_star)
    w = float(wasserstein_distance(gj_star[finite], gij)) if finite.any() else float("nan")
    return FoldDiagnostics(pd.DataFrame(rows), gij, gj_star[tested], gj, w)
