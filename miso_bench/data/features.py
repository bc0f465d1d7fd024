"""Band values at points, for tree models: points grouped by file and block, not read one by one.

For every raster file the points that fall on it are located with the file's inverse affine
transform, grouped by ``READ_BLOCK_PX`` squares, and each group's smallest window is read once
(memory stays bounded on full-size tiles); values are gathered with numpy indexing. With
``window_px=1`` the result equals rasterio's ``DatasetReader.sample`` (no-data becomes NaN);
with ``window_px=k`` (odd) it is the mean of the valid pixels of the ``k x k`` window centred
on the point's pixel (categorical bands keep the centre pixel's code: class codes are not
averaged).
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
from .manifest import DatasetManifest, open_raster, raster_nodata, read_masked, require_crs

__all__ = ["extract_point_features", "feature_table", "window_feature_table"]


#: Points are read in groups that fall in the same square of this many pixels, so memory stays
#: bounded on full-size tiles (a 5000 x 5000 px, 9-band tile is never read whole).
READ_BLOCK_PX = 512


def _file_values(
    path: str,
    x: np.ndarray,
    y: np.ndarray,
    points_crs: str,
    window_px: int,
    nodata: float | None,
    n_bands: int,
    modality: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``window_px x window_px`` window of every band around the points, from one file.

    Returns:
        indices of the points whose window touches the file, and their windows
        ``(n, bands, window_px ** 2)`` (row-major; NaN on no-data and off the file).
    """
    with open_raster(path) as src:
        if src.count != n_bands:
            raise DatasetError(
                path,
                "bands",
                f"file has {src.count} bands, the manifest lists {n_bands}",
                "list one band name per band in file order",
            )
        require_crs(src, path, points_crs)
        if src.crs != rasterio.crs.CRS.from_user_input(points_crs):
            fx, fy = Transformer.from_crs(points_crs, src.crs, always_xy=True).transform(x, y)
        else:
            fx, fy = x, y
        inv = ~src.transform
        fx, fy = np.asarray(fx), np.asarray(fy)
        with np.errstate(invalid="ignore"):
            cols_f = np.floor(inv.a * fx + inv.b * fy + inv.c)
            rows_f = np.floor(inv.d * fx + inv.e * fy + inv.f)
        half = window_px // 2
        finite = np.isfinite(cols_f) & np.isfinite(rows_f)
        cols = np.where(finite, cols_f, -(10**9)).astype(np.int64)
        rows = np.where(finite, rows_f, -(10**9)).astype(np.int64)
        on = (
            (rows >= -half)
            & (rows < src.height + half)
            & (cols >= -half)
            & (cols < src.width + half)
        )
        idx = np.flatnonzero(on)
        out = np.full((idx.size, src.count, window_px * window_px), np.nan)
        if idx.size == 0:
            return idx, out
        fill = raster_nodata(nodata, src, path, modality)
        keys = (np.clip(rows[idx], 0, None) // READ_BLOCK_PX) * (
            src.width // READ_BLOCK_PX + 1
        ) + np.clip(cols[idx], 0, None) // READ_BLOCK_PX
        order = np.argsort(keys, kind="stable")
        splits = np.flatnonzero(np.diff(keys[order])) + 1
        for group in np.split(order, splits):
            pr, pc = rows[idx[group]], cols[idx[group]]
            r0 = max(int(pr.min()) - half, 0)
            r1 = min(int(pr.max()) + half + 1, src.height)
            c0 = max(int(pc.min()) - half, 0)
            c1 = min(int(pc.max()) + half + 1, src.width)
            try:
                block = read_masked(src, fill, window=Window(c0, r0, c1 - c0, r1 - r0))
            except rasterio.errors.RasterioError as exc:
                raise DatasetError(
                    path, "(file)", f"unreadable raster data: {exc}", "re-export it as GeoTIFF"
                ) from exc
            k = 0
            for dr in range(-half, half + 1):
                for dc in range(-half, half + 1):
                    rr, cc = pr + dr - r0, pc + dc - c0
                    inside = (rr >= 0) & (rr < block.shape[1]) & (cc >= 0) & (cc < block.shape[2])
                    vals = np.full((pr.size, src.count), np.nan)
                    vals[inside] = block[:, rr[inside], cc[inside]].T
                    out[group, :, k] = vals
                    k += 1
        return idx, out


def _direction(sin: np.ndarray, cos: np.ndarray) -> np.ndarray:
    """The mean direction in degrees [0, 360) of mean sines and cosines (NaN stays NaN)."""
    with np.errstate(invalid="ignore"):
        return np.mod(np.rad2deg(np.arctan2(sin, cos)), 360.0)


def extract_point_features(
    manifest: DatasetManifest,
    x: np.ndarray,
    y: np.ndarray,
    modalities: Sequence[str] | None = None,
    window_px: int = 1,
    files: Mapping[str, Sequence[Path]] | None = None,
) -> pd.DataFrame:
    """Band values of every modality at the points ``(x, y)`` (in the manifest's CRS).

    Where tiles overlap, every pixel of every band takes the first *valid* value in file-name
    order (a pixel that is no-data in one tile is filled from the next), the rule of the chip
    source (:class:`~miso_bench.data.chips.ChipSource`) and of torchgeo's merge; window means
    are taken over that mosaic, so a window at a tile's edge reads its neighbour. For files
    on the dataset's grid both paths give the same values; files in another CRS are sampled
    at the point here and warped (resampled) for chips.

    Args:
        manifest: dataset manifest.
        x, y: point coordinates in the manifest CRS.
        modalities: modalities to read (default: all).
        window_px: 1 for the pixel under the point, or an odd ``k`` for the mean of the valid
            pixels in the ``k x k`` window around it (categorical bands keep the centre
            pixel's code).
        files: the files to read per modality (default: the manifest's, in name order).

    Returns:
        One row per point, one column per band (manifest band names); NaN where the point is
        on no-data or outside every file of a modality.
    """
    if window_px < 1 or window_px % 2 == 0:
        raise ValueError(f"window_px must be a positive odd number, got {window_px}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    columns: dict[str, np.ndarray] = {}
    k2 = window_px * window_px
    for name in modalities or list(manifest.modalities):
        spec = manifest.modalities[name]
        windows = np.full((x.size, len(spec.bands), k2), np.nan)
        paths = files[name] if files is not None else manifest.modality_files(name)
        for path in paths:
            todo = np.flatnonzero(np.isnan(windows).any(axis=(1, 2)))
            if todo.size == 0:
                break
            idx, vals = _file_values(
                str(path),
                x[todo],
                y[todo],
                manifest.crs,
                window_px,
                spec.nodata,
                len(spec.bands),
                name,
            )
            if idx.size == 0:
                continue
            rows = todo[idx]
            current = windows[rows]
            empty = np.isnan(current)
            current[empty] = vals[empty]  # the first valid value wins, pixel by pixel
            windows[rows] = current
        centre = windows[:, :, k2 // 2]
        if window_px == 1:
            values = centre
        else:
            valid = ~np.isnan(windows)
            count = valid.sum(axis=2)
            with np.errstate(invalid="ignore", divide="ignore"):
                values = np.where(count > 0, np.nansum(windows, axis=2) / count, np.nan)
            # Class codes are not averaged: categorical bands keep the centre pixel.
            categorical = np.array([b in spec.categorical for b in spec.bands])
            values[:, categorical] = centre[:, categorical]
            # Angles are averaged as directions.
            for j in [j for j, b in enumerate(spec.bands) if b in spec.circular]:
                rad = np.deg2rad(np.where(valid[:, j], windows[:, j], 0.0))
                with np.errstate(invalid="ignore", divide="ignore"):
                    sin = (np.sin(rad) * valid[:, j]).sum(1) / count[:, j]
                    cos = (np.cos(rad) * valid[:, j]).sum(1) / count[:, j]
                values[:, j] = np.where(count[:, j] > 0, _direction(sin, cos), np.nan)
        for j, band in enumerate(spec.bands):
            columns[band] = values[:, j]
    return pd.DataFrame(columns)


#: Spectral indices computed from Sentinel-2 bands when all their bands are present.
SPECTRAL_INDICES: dict[str, tuple[str, str]] = {
    "ndvi": ("B08", "B04"),  # vegetation
    "ndwi": ("B03", "B08"),  # open water (McFeeters)
    "ndmi": ("B08", "B11"),  # moisture
    "nbr": ("B08", "B12"),  # burn ratio
    "ngrdi": ("B03", "B04"),  # green-red
    "ndsi": ("B03", "B11"),  # snow
}
#: Coordinate feature names (in the dataset CRS).
COORD_COLUMNS = ("coord_x", "coord_y")


def feature_groups(manifest: DatasetManifest) -> dict[str, list[str]]:
    """Named groups of feature columns: one per modality (``sentinel2`` also as ``s2``),
    ``rgb`` (B04, B03, B02), ``indices`` (spectral indices), ``coords`` (x/y)."""
    groups: dict[str, list[str]] = {
        name: list(spec.bands) for name, spec in manifest.modalities.items()
    }
    if "sentinel2" in groups:
        groups["s2"] = groups["sentinel2"]
    bands = set(manifest.band_names)
    rgb: list[str] = [b for b in ("B04", "B03", "B02") if b in bands]
    if rgb:
        groups["rgb"] = rgb
    indices = [k for k, (a, b) in SPECTRAL_INDICES.items() if a in bands and b in bands]
    if indices:
        groups["indices"] = indices
    groups["coords"] = list(COORD_COLUMNS)
    return groups


def resolve_feature_columns(manifest: DatasetManifest, selection: Sequence[str]) -> list[str]:
    """Columns for a selection of group names and/or single feature names, in order.

    Raises:
        DatasetError: an entry that is neither a group nor a feature of this dataset.
    """
    groups = feature_groups(manifest)
    singles = set(manifest.band_names) | set(SPECTRAL_INDICES) | set(COORD_COLUMNS)
    columns: list[str] = []
    for item in selection:
        if item in groups:
            new = groups[item]
        elif item in singles:
            new = [item]
        else:
            raise DatasetError(
                manifest.path,
                "model.features",
                f"unknown feature or feature group {item!r}",
                f"use groups {sorted(groups)} or band names {manifest.band_names}",
            )
        columns += [c for c in new if c not in columns]
    return columns


def feature_table(
    manifest: DatasetManifest, x: np.ndarray, y: np.ndarray, window_px: int = 1
) -> pd.DataFrame:
    """Every band, spectral index and coordinate at the points: the tree models' inputs."""
    frame = extract_point_features(manifest, x, y, window_px=window_px)
    for name, (a, b) in SPECTRAL_INDICES.items():
        if a in frame and b in frame:
            with np.errstate(divide="ignore", invalid="ignore"):
                frame[name] = (frame[a] - frame[b]) / (frame[a] + frame[b])
    frame[COORD_COLUMNS[0]] = np.asarray(x, dtype=np.float64)
    frame[COORD_COLUMNS[1]] = np.asarray(y, dtype=np.float64)
    return frame


def window_feature_table(
    manifest: DatasetManifest,
    raw: np.ndarray,
    band_names: Sequence[str],
    window_px: int,
    x: np.ndarray,
    y: np.ndarray,
) -> pd.DataFrame:
    """:func:`feature_table` at every pixel centre of a raster window (the map path of trees).

    Args:
        manifest: the dataset (which bands are categorical).
        raw: float32 ``(C, h + 2k, w + 2k)`` band values on the dataset grid, NaN on no-data,
            with a margin of ``k = window_px // 2`` pixels on every side (read from the
            neighbouring data, as the point features read across tile borders).
        band_names: the bands of ``raw``, in order.
        window_px: 1, or the odd side of the window whose valid pixels are averaged.
        x, y: ``(w,)`` and ``(h,)`` pixel-centre coordinates of the columns and rows.

    Returns:
        ``h * w`` rows (row-major), the columns of :func:`feature_table`; at the pixel centre of
        a file on the dataset grid the values equal the point path's.
    """
    if window_px < 1 or window_px % 2 == 0:
        raise ValueError(f"window_px must be a positive odd number, got {window_px}")
    k = window_px // 2
    h, w = raw.shape[1] - 2 * k, raw.shape[2] - 2 * k
    values = raw.astype(np.float64)
    centre = values[:, k : k + h, k : k + w]
    if window_px > 1:
        valid = ~np.isnan(values)
        filled = np.where(valid, values, 0.0)

        def box(a: np.ndarray) -> np.ndarray:
            c = np.pad(a, ((0, 0), (1, 0), (1, 0))).cumsum(axis=1).cumsum(axis=2)
            n = window_px
            return c[:, n:, n:] - c[:, :-n, n:] - c[:, n:, :-n] + c[:, :-n, :-n]

        count = box(valid.astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(count > 0, box(filled) / count, np.nan)
        categorical = {b for spec in manifest.modalities.values() for b in spec.categorical}
        keep = np.array([b in categorical for b in band_names])
        means[keep] = centre[keep]
        circular = {b for spec in manifest.modalities.values() for b in spec.circular}
        for j in [j for j, b in enumerate(band_names) if b in circular]:
            rad = np.deg2rad(filled[j : j + 1])
            with np.errstate(invalid="ignore", divide="ignore"):
                sin = np.where(count[j] > 0, box(np.sin(rad) * valid[j])[0] / count[j], np.nan)
                cos = np.where(count[j] > 0, box(np.cos(rad) * valid[j])[0] / count[j], np.nan)
            means[j] = _direction(sin, cos)
    else:
        means = centre
    frame = pd.DataFrame({b: means[i].ravel() for i, b in enumerate(band_names)})
    for name, (a, b) in SPECTRAL_INDICES.items():
        if a in frame and b in frame:
            with np.errstate(divide="ignore", invalid="ignore"):
                frame[name] = (frame[a] - frame[b]) / (frame[a] + frame[b])
    gx, gy = np.meshgrid(np.asarray(x, np.float64), np.asarray(y, np.float64))
    frame[COORD_COLUMNS[0]] = gx.ravel()
    frame[COORD_COLUMNS[1]] = gy.ravel()
    return frame
