"""The window lattice of MISO's map path: overlapping windows on the global pixel grid, blended.

A map is decoded from square windows of ``size`` pixels whose upper-left pixels lie on a global
lattice: rows and columns that are multiples of ``stride`` counted from the grid's origin (the
CRS origin snapped to the grid). Every pixel is covered by the same windows whatever the extent
being mapped, so two tiles, a bounding box and a single point all get the same value at a pixel:
there is no seam at a tile border and the value at a pedon *is* the map's value there.

Each window's prediction is weighted by a separable Hann window ``sin²(π (u + ½) / size)`` that
favours its centre (where training labels its queries) and falls towards its edges. The weights
of the windows covering a pixel are normalised to sum to one; with ``stride = size / 2`` (the
default) their raw sum is already one everywhere (``sin² + cos² = 1``).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["blend_weights", "check_stride", "default_stride", "lattice_range"]


def default_stride(size: int) -> int:
    """Half a window: every pixel is seen by four windows, at most half a window from a
    window's centre."""
    return max(1, size // 2)


def check_stride(size: int, stride: int | None) -> int:
    """The stride to use for windows of ``size`` px.

    Raises:
        ValueError: a stride below 1 or above the window (pixels no window covers).
    """
    if stride is None:
        return default_stride(size)
    stride = int(stride)
    if not 1 <= stride <= size:
        raise ValueError(
            f"the window stride must be between 1 and the window size ({size} px), got {stride}"
        )
    return stride


def blend_weights(size: int) -> np.ndarray:
    """``(size,)`` one-dimensional window weights (the 2-D weight is their outer product)."""
    u = np.arange(size, dtype=np.float64)
    return np.sin(math.pi * (u + 0.5) / size) ** 2


def lattice_range(start: int, length: int, size: int, stride: int) -> range:
    """Lattice indices ``k`` whose windows ``[k * stride, k * stride + size)`` overlap the
    pixels ``[start, start + length)`` (rows or columns)."""
    first = -((size - 1 - start) // stride)  # ceil((start - size + 1) / stride)
    last = (start + length - 1) // stride
    return range(first, last + 1)
