"""Dataset transformations for tests: real deliveries differ from the synthetic default.

Each writes a modified copy of a dataset with the real file formats: rasters rewritten with
rasterio, pedons and regions with geopandas, the manifest as YAML.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import yaml
from pyproj import Transformer
from rasterio.transform import Affine
from rasterio.warp import Resampling, reproject, transform_bounds


def rewrite(path: Path, change: Callable[[np.ndarray, dict], tuple[np.ndarray, dict]]) -> None:
    """Rewrite a raster with ``change(data, profile) -> (data, profile)``."""
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile.copy()
    data, profile = change(data, profile)
    profile["count"] = data.shape[0]
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def edit_manifest(root: Path, change: Callable[[dict], None]) -> None:
    """Edit ``dataset.yaml`` in place with ``change(data)``."""
    path = root / "dataset.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def nan_nodata_copy(src: Path, dst: Path) -> Path:
    """A copy whose Sentinel-2 tiles are float32 with NaN as no-data (``nodata: .nan``)."""
    shutil.copytree(src, dst)
    for path in sorted((dst / "sentinel2").glob("*.tif")):

        def change(d: np.ndarray, p: dict) -> tuple[np.ndarray, dict]:
            out = d.astype(np.float32)
            out[d == p["nodata"]] = np.nan
            return out, {**p, "dtype": "float32", "nodata": float("nan")}

        rewrite(path, change)

    def manifest(data: dict) -> None:
        data["modalities"]["sentinel2"].update(nodata=float("nan"), dtype="float32")

    edit_manifest(dst, manifest)
    return dst


def reproject_dataset(src: Path, dst: Path, crs: str, res: float) -> Path:
    """A copy of a dataset in another CRS: rasters warped (nearest) onto one grid of ``res``
    CRS units whose pixel edges are multiples of ``res``; pedons, regions and the truth sample
    reprojected."""
    dst.mkdir(parents=True)
    manifest = yaml.safe_load((src / "dataset.yaml").read_text())
    for spec in manifest["modalities"].values():
        (dst / spec["folder"]).mkdir(parents=True, exist_ok=True)
        for path in sorted((src / spec["folder"]).glob(spec.get("glob", "*.tif"))):
            with rasterio.open(path) as s:
                left, bottom, right, top = transform_bounds(s.crs, crs, *s.bounds, densify_pts=21)
                x0, y1 = math.floor(left / res) * res, math.ceil(top / res) * res
                width = math.ceil((right - x0) / res)
                height = math.ceil((y1 - bottom) / res)
                transform = Affine(res, 0, x0, 0, -res, y1)
                profile = s.profile.copy()
                profile.update(crs=crs, transform=transform, width=width, height=height)
                profile.pop("blockxsize", None)
                profile.pop("blockysize", None)
                data = np.full((s.count, height, width), s.nodata, dtype=s.dtypes[0])
                reproject(
                    rasterio.band(s, list(range(1, s.count + 1))),
                    data,
                    src_transform=s.transform,
                    src_crs=s.crs,
                    src_nodata=s.nodata,
                    dst_transform=transform,
                    dst_crs=crs,
                    dst_nodata=s.nodata,
                    resampling=Resampling.nearest,
                )
            with rasterio.open(dst / spec["folder"] / path.name, "w", **profile) as out:
                out.write(data)
    pedons = gpd.read_file(src / manifest["pedons"]["file"])
    pedons.to_crs(crs).to_file(dst / manifest["pedons"]["file"], driver="GPKG", layer="pedons")
    for region in manifest.get("regions", {}).values():
        (dst / region["file"]).parent.mkdir(parents=True, exist_ok=True)
        gpd.read_file(src / region["file"]).to_crs(crs).to_file(dst / region["file"], driver="GPKG")
    if manifest.get("truth"):
        truth = pd.read_parquet(src / manifest["truth"]["file"])
        xcol, ycol = ("x", "y") if "x" in truth.columns else ("x_3338", "y_3338")
        tx, ty = Transformer.from_crs(manifest["crs"], crs, always_xy=True).transform(
            truth[xcol].to_numpy(), truth[ycol].to_numpy()
        )
        truth = truth.drop(columns=[xcol, ycol]).assign(x=tx, y=ty)
        truth.to_parquet(dst / manifest["truth"]["file"], index=False)
    manifest.update(crs=crs, res_m=res, name=f"{manifest['name']}-{crs.replace(':', '')}")
    (dst / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dst


def split_tiles_copy(src: Path, dst: Path, overlap_px: int = 0) -> Path:
    """A copy whose rasters of every modality are each cut into a west and an east file on the
    same grid (adjacent tiles, or overlapping by ``overlap_px`` columns)."""
    shutil.copytree(src, dst)
    manifest = yaml.safe_load((dst / "dataset.yaml").read_text())
    for spec in manifest["modalities"].values():
        for path in sorted((dst / spec["folder"]).glob("*.tif")):
            with rasterio.open(path) as f:
                data, profile = f.read(), f.profile.copy()
            half = data.shape[2] // 2
            cuts = {"W": (0, half + overlap_px), "E": (half, data.shape[2])}
            if overlap_px:
                cuts["E"] = (half - overlap_px, data.shape[2])
            path.unlink()
            for side, (c0, c1) in cuts.items():
                t = profile["transform"]
                part = {
                    **profile,
                    "width": c1 - c0,
                    "transform": Affine(t.a, t.b, t.c + c0 * t.a, t.d, t.e, t.f),
                }
                part.pop("blockxsize", None)
                part.pop("blockysize", None)
                part["tiled"] = False
                with rasterio.open(path.with_name(f"{path.stem}{side}.tif"), "w", **part) as out:
                    out.write(data[:, :, c0:c1])
        spec["glob"] = "*.tif"
    (dst / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dst


def write_point_dataset(
    root: Path,
    modalities: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    labels: np.ndarray | None = None,
    name: str = "delivery",
    crs: str = "EPSG:3338",
    res_m: float = 10.0,
) -> Path:
    """A manifest (EPSG:3338, 10 m unless ``crs``/``res_m`` say otherwise) over
    ``modalities`` and a CSV of pedons at ``(x, y)`` with a binary label ``lab`` (alternating
    0/1 unless ``labels`` are given)."""
    manifest = {
        "name": name,
        "crs": crs,
        "res_m": res_m,
        "modalities": modalities,
        "pedons": {
            "file": "pedons.csv",
            "id_column": "id",
            "x_column": "x",
            "y_column": "y",
            "labels": {"lab": {"column": "lab", "classes": [0, 1]}},
        },
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    n = len(x)
    lab = np.arange(n) % 2 if labels is None else labels
    pd.DataFrame({"id": np.arange(n), "x": x, "y": y, "lab": lab}).to_csv(
        root / "pedons.csv", index=False
    )
    return root
