"""The target pixel grid of a dataset (no torchgeo import: tree-model runs stay light)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio

from .manifest import DatasetManifest, open_raster

__all__ = ["GridSpec", "dataset_grid"]


@dataclass(frozen=True)
class GridSpec:
    """A regular pixel grid: pixel edges at ``x0 + k * res`` and ``y0 - k * res``."""

    x0: float
    y0: float
    res: float

    def pixel_of(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global (row, col) of the pixels containing the points."""
        col = np.floor((np.asarray(x) - self.x0) / self.res).astype(np.int64)
        row = np.floor((self.y0 - np.asarray(y)) / self.res).astype(np.int64)
        return row, col

    def bounds_of(self, r0: int, c0: int, h: int, w: int) -> tuple[float, float, float, float]:
        """``(xmin, xmax, ymin, ymax)`` of the window with upper-left pixel ``(r0, c0)``."""
        xmin = self.x0 + c0 * self.res
        ymax = self.y0 - r0 * self.res
        return xmin, xmin + w * self.res, ymax - h * self.res, ymax

    def to_dict(self) -> dict[str, float]:
        """Plain data (saved with trained models)."""
        return {"x0": self.x0, "y0": self.y0, "res": self.res}


def dataset_grid(manifest: DatasetManifest) -> GridSpec:
    """The target grid of a dataset at ``res_m``: the pixel edges of the first file (modality
    order, then file name) that is in the manifest's CRS at that resolution; files in other
    CRSs are warped onto it. Edges on multiples of the resolution when there is none."""
    res = float(manifest.res_m)
    target = rasterio.crs.CRS.from_user_input(manifest.crs)
    for name in manifest.modalities:
        for path in manifest.modality_files(name):
            with open_raster(path) as src:
                if (
                    src.crs == target
                    and math.isclose(abs(src.transform.a), res, rel_tol=1e-9)
                    and math.isclose(abs(src.transform.e), res, rel_tol=1e-9)
                ):
                    return GridSpec(float(src.transform.c) % res, float(src.transform.f) % res, res)
    return GridSpec(0.0, 0.0, res)
