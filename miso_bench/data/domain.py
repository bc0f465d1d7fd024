"""The prediction domain: where a map will be made (the rasters' extent)."""

from __future__ import annotations

import numpy as np
import rasterio

from .manifest import DatasetManifest

__all__ = ["sample_prediction_domain"]


def sample_prediction_domain(manifest: DatasetManifest, n: int, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` points drawn uniformly over the footprints of the first modality's files.

    Files are chosen in proportion to their area, so the sample is uniform over the mapped
    area (used by kNNDM and the fold diagnostics as the prediction locations).
    """
    first = next(iter(manifest.modalities))
    bounds = []
    for path in manifest.modality_files(first):
        with rasterio.open(path) as src:
            b = src.bounds
            if src.crs is not None and src.crs.to_string() != manifest.crs:
                from rasterio.warp import transform_bounds

                b = rasterio.coords.BoundingBox(*transform_bounds(src.crs, manifest.crs, *b))
            bounds.append((b.left, b.bottom, b.right, b.top))
    if not bounds:
        return np.empty((0, 2))
    box = np.asarray(bounds)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    rng = np.random.default_rng(seed)
    which = rng.choice(len(box), size=n, p=area / area.sum())
    u = rng.random((n, 2))
    return np.column_stack(
        [
            box[which, 0] + u[:, 0] * (box[which, 2] - box[which, 0]),
            box[which, 1] + u[:, 1] * (box[which, 3] - box[which, 1]),
        ]
    )
