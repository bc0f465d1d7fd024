"""Band values at points, for tree models: one read per file, not one per point.

For every raster file the points that fall on it are located with the file's inverse affine
transform, the smallest window holding them is read once, and the values are gathered with
numpy indexing. With ``window_px=1`` the result equals rasterio's ``DatasetReader.sample``
(no-data becomes NaN); with ``window_px=k`` (odd) it is the mean of the valid pixels of the
``k x k`` window centred on the point's pixel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

from ..errors import DatasetError
from .manifest import DatasetManifest

__all__ = ["extract_point_features"]


def _file_values(
    path: str,
    x: np.ndarray,
    y: np.ndarray,
    points_crs: str,
    window_px: int,
    nodata: float | None,
    n_bands: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Values of every band at the points that fall on one file.

    Returns:
        indices of the points on the file and their values ``(n_on_file, bands)`` (NaN where
        no-data or, for windows, where no pixel of the window is valid).
    """
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioError as exc:
        raise DatasetError(
            f"{path}: unreadable raster: {exc} (fix: re-export it as GeoTIFF; "
            "`miso-bench data check` lists every problem)"
        ) from exc
    with src:
        if src.count != n_bands:
            raise DatasetError(
                f"{path}: file has {src.count} bands, the manifest lists "
                f"{n_bands} (fix: list one band name per band)"
            )
        if src.crs is not None and src.crs.to_string() != points_crs:
            fx, fy = Transformer.from_crs(points_crs, src.crs, always_xy=True).transform(x, y)
        else:
            fx, fy = x, y
        inv = ~src.transform
        fx, fy = np.asarray(fx), np.asarray(fy)
        cols_f = inv.a * fx + inv.b * fy + inv.c
        rows_f = inv.d * fx + inv.e * fy + inv.f
        cols = np.floor(cols_f).astype(np.int64)
        rows = np.floor(rows_f).astype(np.int64)
        on = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
        idx = np.flatnonzero(on)
        if idx.size == 0:
            return idx, np.empty((0, src.count))
        half = window_px // 2
        r0 = max(int(rows[idx].min()) - half, 0)
        r1 = min(int(rows[idx].max()) + half + 1, src.height)
        c0 = max(int(cols[idx].min()) - half, 0)
        c1 = min(int(cols[idx].max()) + half + 1, src.width)
        block = src.read(window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float64)
        fill = nodata if nodata is not None else src.nodata
        if fill is not None:
            block[block == fill] = np.nan
        pr, pc = rows[idx] - r0, cols[idx] - c0
        if window_px == 1:
            return idx, block[:, pr, pc].T
        acc = np.zeros((idx.size, block.shape[0]))
        cnt = np.zeros((idx.size, block.shape[0]))
        h, w = block.shape[1:]
        for dr in range(-half, half + 1):
            for dc in range(-half, half + 1):
                rr, cc = pr + dr, pc + dc
                inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
                vals = np.full((idx.size, block.shape[0]), np.nan)
                vals[inside] = block[:, rr[inside], cc[inside]].T
                ok = ~np.isnan(vals)
                acc += np.where(ok, vals, 0.0)
                cnt += ok
        with np.errstate(invalid="ignore", divide="ignore"):
            return idx, np.where(cnt > 0, acc / cnt, np.nan)


def extract_point_features(
    manifest: DatasetManifest,
    x: np.ndarray,
    y: np.ndarray,
    modalities: Sequence[str] | None = None,
    window_px: int = 1,
    files: Mapping[str, Sequence[Path]] | None = None,
) -> pd.DataFrame:
    """Band values of every modality at the points ``(x, y)`` (in the manifest's CRS).

    Args:
        manifest: dataset manifest.
        x, y: point coordinates in the manifest CRS.
        modalities: modalities to read (default: all).
        window_px: 1 for the pixel under the point, or an odd ``k`` for the mean of the valid
            pixels in the ``k x k`` window around it.
        files: the files to read per modality (default: the manifest's glob).

    Returns:
        One row per point, one column per band (manifest band names); NaN where the point is
        on no-data or outside every file of a modality.
    """
    if window_px < 1 or window_px % 2 == 0:
        raise ValueError(f"window_px must be a positive odd number, got {window_px}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    columns: dict[str, np.ndarray] = {}
    for name in modalities or list(manifest.modalities):
        spec = manifest.modalities[name]
        values = np.full((x.size, len(spec.bands)), np.nan)
        filled = np.zeros(x.size, dtype=bool)
        paths = files[name] if files is not None else manifest.modality_files(name)
        for path in paths:
            idx, vals = _file_values(
                str(path), x, y, manifest.crs, window_px, spec.nodata, len(spec.bands)
            )
            if idx.size == 0:
                continue
            # First file wins where tiles overlap, as in a mosaic.
            take = ~filled[idx]
            values[idx[take]] = vals[take]
            filled[idx[take]] = True
        for j, band in enumerate(spec.bands):
            columns[band] = values[:, j]
    return pd.DataFrame(columns)
