"""kNNDM cross-validation (Linnenbrink, Milà, Ludwig & Meyer 2024, GMD 17:5897-5912).

kNNDM looks for k folds whose distribution of nearest-neighbour distances from test to
training pedons (``G_j*``) matches the distribution of distances from the prediction domain
to the training pedons (``G_ij``). Candidate fold sets come from k-means clusterings of the
pedon coordinates into ``q >= k`` clusters, merged into k folds; random k-fold is a candidate
too (the right answer when the pedons cover the domain densely). The candidate with the
smallest Wasserstein distance ``W`` between the two ECDFs wins. This is a Python
implementation of the algorithm of CAST's ``knndm()`` (R); the merge of clusters into folds
uses balanced greedy assignment of shuffled clusters, which keeps folds of similar size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance
from sklearn.cluster import KMeans

from ..spatial import nearest_distance
from .splitters import RandomKFold, _FoldCV, balanced_group_folds

__all__ = ["KNNDMKFold", "test_to_train_distances"]


def test_to_train_distances(X: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """``G_j*``: for each pedon, the distance to the nearest pedon outside its own fold."""
    out = np.empty(len(X))
    for f in np.unique(folds):
        test = folds == f
        out[test] = nearest_distance(X[test], X[~test])
    return out


class KNNDMKFold(_FoldCV):
    """kNNDM folds: test->train distances matched to prediction->train distances.

    Args:
        prediction_points: ``(m, 2)`` sample of the prediction domain (for example random
            points inside the rasters' extent), in the pedons' CRS.
        n_splits: number of folds k.
        n_candidates: number of cluster counts q tried between k and ``max_clusters``.
        max_clusters: largest q (default ``min(n / 2, 200)``).
        random_state: seed.

    Attributes:
        w_: W statistic of the chosen folds.
        q_: chosen number of clusters (``None`` when random k-fold won).
        candidates_: ``(q, W)`` of every candidate (``q = None`` for random k-fold).
        gij_: prediction->train nearest-neighbour distances.
    """

    def __init__(
        self,
        prediction_points: np.ndarray,
        n_splits: int = 5,
        n_candidates: int = 10,
        max_clusters: int | None = None,
        random_state: int = 0,
    ) -> None:
        self.prediction_points = np.asarray(prediction_points, dtype=np.float64)
        self.n_splits = n_splits
        self.n_candidates = n_candidates
        self.max_clusters = max_clusters
        self.random_state = random_state

    def _folds(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> np.ndarray:
        rng = np.random.default_rng(self.random_state)
        gij = nearest_distance(self.prediction_points, X)
        self.gij_ = gij
        candidates: list[tuple[Any, float, np.ndarray]] = []
        random_folds = RandomKFold(self.n_splits, self.random_state)._folds(X, y, None)
        w_random = wasserstein_distance(test_to_train_distances(X, random_folds), gij)
        candidates.append((None, w_random, random_folds))
        q_max = self.max_clusters or int(min(len(X) // 2, 200))
        q_max = max(q_max, self.n_splits)
        qs = np.unique(np.geomspace(self.n_splits, q_max, self.n_candidates).astype(int))
        for q in qs:
            labels = KMeans(
                n_clusters=int(q), n_init=1, random_state=int(rng.integers(2**31))
            ).fit_predict(X)
            if q == self.n_splits:
                folds = labels
            else:
                folds = balanced_group_folds(labels, self.n_splits, rng)
            w = wasserstein_distance(test_to_train_distances(X, folds), gij)
            candidates.append((int(q), w, folds))
        best = min(candidates, key=lambda c: c[1])
        self.q_, self.w_ = best[0], float(best[1])
        self.candidates_ = [(c[0], float(c[1])) for c in candidates]
        return np.asarray(best[2], dtype=np.int64)
