"""The prediction domain: where a map will be made (the valid pixels of the rasters)."""

from __future__ import annotations

import numpy as np
import rasterio

from ..errors import warn
from .features import extract_point_features
from .manifest import DatasetManifest, open_raster

__all__ = ["sample_prediction_domain"]

#: Rounds of candidates drawn before the sample is given up as short.
_MAX_ROUNDS = 20


def _footprints(manifest: DatasetManifest, modality: str) -> np.ndarray:
    """``(k, 4)`` bounds (left, bottom, right, top) of the modality's files in the dataset
    CRS (a file in another CRS: the box enclosing its footprint)."""
    bounds = []
    for path in manifest.modality_files(modality):
        with open_raster(path) as src:
            b = src.bounds
            if src.crs is not None and src.crs != rasterio.crs.CRS.from_user_input(manifest.crs):
                from rasterio.warp import transform_bounds

                b = rasterio.coords.BoundingBox(*transform_bounds(src.crs, manifest.crs, *b))
            bounds.append((b.left, b.bottom, b.right, b.top))
    return np.asarray(bounds, dtype=np.float64).reshape(-1, 4)


def sample_prediction_domain(manifest: DatasetManifest, n: int, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` points drawn uniformly over the valid pixels of the first modality's files
    (the locations a map predicts; kNNDM and the fold diagnostics compare them with the
    pedons).

    Candidates are drawn over the files' boxes in proportion to their area and kept when
    they are (a) in the first file (in name order) whose box holds them, so that overlapping
    tiles are not sampled twice, (b) on a pixel with a value (no-data, the outside of a
    file in another CRS and gaps between footprints are not mapped), and (c) in a geographic
    CRS, with probability proportional to the cosine of their latitude (a degree square
    shrinks northwards), so that the sample is uniform per square kilometre.
    """
    first = next(iter(manifest.modalities))
    box = _footprints(manifest, first)
    if not len(box) or n <= 0:
        return np.empty((0, 2))
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    geographic = rasterio.crs.CRS.from_user_input(manifest.crs).is_geographic
    widest = 1.0
    if geographic:  # the largest cos(latitude) over the boxes: the acceptance's scale
        lat = np.clip(box[:, [1, 3]], -90.0, 90.0)
        nearest_equator = np.where(lat[:, 0] * lat[:, 1] <= 0, 0.0, np.abs(lat).min(axis=1))
        widest = float(np.cos(np.radians(nearest_equator)).max())
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    have = 0
    for _ in range(_MAX_ROUNDS):
        m = 2 * (n - have) + 64
        which = rng.choice(len(box), size=m, p=area / area.sum())
        u = rng.random((m, 2))
        x = box[which, 0] + u[:, 0] * (box[which, 2] - box[which, 0])
        y = box[which, 1] + u[:, 1] * (box[which, 3] - box[which, 1])
        inside = (
            (x[:, None] >= box[None, :, 0])
            & (x[:, None] < box[None, :, 2])
            & (y[:, None] >= box[None, :, 1])
            & (y[:, None] < box[None, :, 3])
        )
        ok = inside.argmax(axis=1) == which  # the first box that holds it drew it
        if geographic:
            ok &= rng.random(m) * widest < np.cos(np.radians(y))
        if ok.any():
            values = extract_point_features(manifest, x[ok], y[ok], modalities=[first])
            valid = np.isfinite(values.to_numpy()).any(axis=1)
            ok[np.flatnonzero(ok)[~valid]] = False
        kept.append(np.column_stack([x[ok], y[ok]]))
        have += int(ok.sum())
        if have >= n:
            break
    points = np.concatenate(kept)[:n]
    if len(points) < n:
        warn(
            "prediction_domain_short",
            f"only {len(points):,} of {n:,} prediction-domain points found a valid pixel of "
            f"{first} after {_MAX_ROUNDS} rounds: kNNDM and the fold diagnostics use those "
            "(fix: check the modality's no-data value with `miso-bench data check`)",
        )
    return points
