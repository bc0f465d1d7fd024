"""Small spatial helpers shared by cross-validation and evaluation (no project imports)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["block_ids", "nearest_distance"]


def block_ids(x: np.ndarray, y: np.ndarray, block_size_m: float) -> np.ndarray:
    """Integer id (0..n_blocks-1) of the square block of side ``block_size_m`` holding each point.

    Blocks are aligned on multiples of ``block_size_m`` in the CRS (EPSG:3338 metres).
    """
    if block_size_m <= 0:
        raise ValueError(f"block_size_m must be positive, got {block_size_m}")
    bx = np.floor(np.asarray(x, dtype=np.float64) / block_size_m).astype(np.int64)
    by = np.floor(np.asarray(y, dtype=np.float64) / block_size_m).astype(np.int64)
    _, ids = np.unique(np.stack([bx, by], axis=1), axis=0, return_inverse=True)
    return ids.ravel()


def nearest_distance(
    query: np.ndarray, reference: np.ndarray, exclude_self: bool = False
) -> np.ndarray:
    """Distance from each query point to its nearest reference point.

    Args:
        query: ``(n, 2)`` coordinates.
        reference: ``(m, 2)`` coordinates.
        exclude_self: query and reference are the same set; skip the zero self-distance.
    """
    if len(reference) == 0 or len(query) == 0:
        return np.full(len(query), np.inf)
    tree = cKDTree(reference)
    k = 2 if exclude_self else 1
    if exclude_self and len(reference) < 2:
        return np.full(len(query), np.inf)
    dist, _ = tree.query(query, k=k)
    return dist[:, 1] if exclude_self else dist
