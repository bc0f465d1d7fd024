"""Write a synthetic Alaska dataset in exactly the layout of a real one (``dataset.yaml``).

Layout of the output folder::

    dataset.yaml                         manifest (CRS, bands, nodata, labels, regions)
    sentinel2/AK050HxxVyy.tif            9 bands, int16 L2A x10,000, nodata -32768
    terrain/AK050HxxVyy.tif              7 IfSAR-style derivatives, float32, nodata -9999
    climate/AK050HxxVyy.tif              3 climate layers, float32, nodata -9999
    pedons.gpkg                          pedon sites with tax_order and pf1m (many missing)
    regions/permafrost_zones.gpkg        permafrost-zone polygons (field ``zone``)
    regions/mlra.gpkg                    MLRA polygons (field ``mlra``)
    truth.parquet                        dense sample of true labels (no label noise)

Every site is generated from its own seed (the dataset seed and the site name), so a site's
arrays do not depend on which other sites a preset includes, and sites can be built in
parallel processes with identical results.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..manifest import (
    MANIFEST_NAME,
    DatasetManifest,
    LabelSpec,
    ModalitySpec,
    PedonSpec,
    RegionSpec,
)
from ..tiles import tile_bounds, tile_id_at
from .landscape import (
    CLIMATE_BANDS,
    PF_ZONES,
    S2_BANDS,
    S2_NODATA,
    TAX_ORDERS,
    Landscape,
    build_landscape,
    permafrost_zone_codes,
)
from .sites import PRESETS, SITES, Preset, Site
from .terrain import TERRAIN_BANDS

__all__ = ["GENERATOR_VERSION", "generate_synthetic_alaska"]

#: Bumped whenever the generator's output changes; recorded in the manifest.
GENERATOR_VERSION = 1
RES_M = 10.0
CRS = "EPSG:3338"
FLOAT_NODATA = -9999.0
TAX_NOISE = 0.06  # fraction of soil-order labels replaced by a locally plausible other order
PF_NOISE = 0.04  # fraction of pf1m labels flipped


@dataclass
class _SiteResult:
    pedons: pd.DataFrame
    truth: pd.DataFrame
    zones: list[tuple[dict, str]]
    bounds: tuple[float, float, float, float]
    grid_id: str


def _site_seed(seed: int, site: Site, size_px: int, stream: int) -> np.random.Generator:
    key = zlib.crc32(site.name.encode())
    return np.random.default_rng(
        np.random.SeedSequence([seed, key, size_px, stream, GENERATOR_VERSION])
    )


def _site_window(site: Site, size_px: int) -> tuple[str, float, float]:
    """Grid id and upper-left corner of the site's window, inside one AK050 tile."""
    from pyproj import Transformer

    to_3338 = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    cx, cy = to_3338.transform(site.lon, site.lat)
    grid_id = tile_id_at(cx, cy)
    txmin, tymin, txmax, tymax = tile_bounds(grid_id)
    extent = size_px * RES_M
    xmin = float(np.clip(np.round((cx - extent / 2) / RES_M) * RES_M, txmin, txmax - extent))
    ymax = float(np.clip(np.round((cy + extent / 2) / RES_M) * RES_M, tymin + extent, tymax))
    return grid_id, xmin, ymax


def _write_tif(
    path: Path,
    data: np.ndarray,
    xmin: float,
    ymax: float,
    nodata: float,
    band_names: tuple[str, ...],
) -> None:
    import rasterio
    from rasterio.transform import from_origin

    count, rows, cols = data.shape
    profile = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": count,
        "dtype": data.dtype.name,
        "crs": CRS,
        "transform": from_origin(xmin, ymax, RES_M, RES_M),
        "nodata": nodata,
        "compress": "deflate",
        "zlevel": 1,
        "tiled": True,
        "blockxsize": min(256, cols) if cols >= 16 else cols,
        "blockysize": min(256, rows) if rows >= 16 else rows,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(band_names, start=1):
            dst.set_band_description(i, name)


def _sample_pedon_pixels(
    rng: np.random.Generator, land: Landscape, n_target: int, usable: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered pedon locations: along the road and river, in campaign clusters, and remote.

    Returns continuous (row, col) positions in pixel units and a campaign id per point (a
    campaign decides whether permafrost depth was recorded).
    """
    n = usable.shape[0]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    n_clusters = int(rng.integers(2, 6))
    centres = rng.uniform(0.1 * n, 0.9 * n, size=(n_clusters, 2))
    while sum(len(r) for r in rows) < n_target:
        m = max(n_target, 64)
        kind = rng.choice(4, size=m, p=[0.40, 0.25, 0.25, 0.10])
        r = np.empty(m)
        c = np.empty(m)
        g = np.empty(m, dtype=np.int64)
        for k, curve, spread_px in ((0, land.road_rc, 6.0), (1, land.river_rc, 8.0)):
            sel = kind == k
            idx = rng.integers(0, len(curve), sel.sum())
            r[sel] = curve[idx, 0] + rng.normal(0, spread_px, sel.sum())
            c[sel] = curve[idx, 1] + rng.normal(0, spread_px, sel.sum())
            g[sel] = k * 100 + idx // (len(curve) // 8 + 1)  # ~8 campaigns along each line
        sel = kind == 2
        which = rng.integers(0, n_clusters, sel.sum())
        r[sel] = centres[which, 0] + rng.normal(0, 25.0, sel.sum())
        c[sel] = centres[which, 1] + rng.normal(0, 25.0, sel.sum())
        g[sel] = 200 + which
        sel = kind == 3
        r[sel] = rng.uniform(0, n, sel.sum())
        c[sel] = rng.uniform(0, n, sel.sum())
        g[sel] = 300 + np.arange(sel.sum())
        inside = (r >= 0) & (r < n) & (c >= 0) & (c < n)
        r, c, g = r[inside], c[inside], g[inside]
        ok = usable[r.astype(int), c.astype(int)]
        rows.append(r[ok])
        cols.append(c[ok])
        groups.append(g[ok])
    return (
        np.concatenate(rows)[:n_target],
        np.concatenate(cols)[:n_target],
        np.concatenate(groups)[:n_target],
    )


def _noisy_orders(
    rng: np.random.Generator, orders: np.ndarray, site_freq: np.ndarray
) -> np.ndarray:
    """Replace a fraction of orders by a class drawn from the site's own class frequencies."""
    out = orders.copy()
    flip = rng.random(len(orders)) < TAX_NOISE
    out[flip] = rng.choice(len(TAX_ORDERS), size=flip.sum(), p=site_freq)
    return out


def _build_site(args: tuple[str, int, int, int, int, float, str]) -> _SiteResult:
    name, size_px, seed, n_pedons, n_truth, pf_labelled, out_str = args
    site = SITES[name]
    grid_id, xmin, ymax = _site_window(site, size_px)
    land = build_landscape(site, size_px, RES_M, _site_seed(seed, site, size_px, 0))
    rng = _site_seed(seed, site, size_px, 1)
    out_dir = Path(out_str)
    _write_tif(out_dir / "sentinel2" / f"{grid_id}.tif", land.s2, xmin, ymax, S2_NODATA, S2_BANDS)
    _write_tif(
        out_dir / "terrain" / f"{grid_id}.tif",
        land.terrain,
        xmin,
        ymax,
        FLOAT_NODATA,
        TERRAIN_BANDS,
    )
    _write_tif(
        out_dir / "climate" / f"{grid_id}.tif",
        land.climate,
        xmin,
        ymax,
        FLOAT_NODATA,
        CLIMATE_BANDS,
    )

    water = land.cover == 0
    s2_valid = land.s2[0] != S2_NODATA
    usable = ~water & s2_valid

    # Pedons: labels from the true state at the pixel, then label noise and missingness.
    r, c, group = _sample_pedon_pixels(rng, land, n_pedons, usable)
    ri, ci = r.astype(int), c.astype(int)
    order_true = land.tax_order[ri, ci]
    site_freq = np.bincount(land.tax_order[usable], minlength=len(TAX_ORDERS)).astype(float)
    site_freq = (site_freq + 1e-3) / (site_freq + 1e-3).sum()
    order_obs = _noisy_orders(rng, order_true, site_freq)
    pf_obs = land.pf1m[ri, ci] ^ (rng.random(len(r)) < PF_NOISE)
    # Whether a campaign recorded permafrost depth is decided per campaign, so missingness is
    # spatially clustered as in the real pedon database.
    campaigns = np.unique(group)
    p_campaign = np.clip(rng.beta(0.6, 0.9, len(campaigns)) * pf_labelled / 0.4, 0, 1)
    p_point = p_campaign[np.searchsorted(campaigns, group)]
    pf_recorded = rng.random(len(r)) < p_point
    x = xmin + c * RES_M
    y = ymax - r * RES_M
    pedons = pd.DataFrame(
        {
            "site": name,
            "grid_id": grid_id,
            "x_3338": x,
            "y_3338": y,
            "tax_order": pd.array([TAX_ORDERS[o] for o in order_obs], dtype="string"),
            "pf1m": pd.array(np.where(pf_recorded, pf_obs.astype(int), -1), dtype="Int64"),
        }
    )
    pedons.loc[pedons["pf1m"] < 0, "pf1m"] = pd.NA

    # Truth: uniform random land pixels (not water, not no-data), labels without noise.
    cand = np.flatnonzero(usable.ravel())
    pick = rng.choice(cand, size=min(n_truth, cand.size), replace=False)
    tr, tc = np.unravel_index(pick, usable.shape)
    zone_codes = permafrost_zone_codes(land.zone_maat_c)
    truth = pd.DataFrame(
        {
            "site": name,
            "x": xmin + (tc + 0.5) * RES_M,
            "y": ymax - (tr + 0.5) * RES_M,
            "pf1m": land.pf1m[tr, tc].astype(np.int8),
            "tax_order": [TAX_ORDERS[o] for o in land.tax_order[tr, tc]],
            "cover": land.cover[tr, tc],
        }
    )

    # Permafrost-zone polygons from the smoothed regional MAAT.
    from rasterio.features import shapes
    from rasterio.transform import from_origin

    zones = [
        (geom, PF_ZONES[int(code)][0])
        for geom, code in shapes(zone_codes, transform=from_origin(xmin, ymax, RES_M, RES_M))
    ]
    extent = size_px * RES_M
    return _SiteResult(pedons, truth, zones, (xmin, ymax - extent, xmin + extent, ymax), grid_id)


def generate_synthetic_alaska(
    out: str | Path,
    preset: str | Preset = "default",
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> DatasetManifest:
    """Generate a synthetic Alaska dataset and return its manifest.

    Args:
        out: output folder (created; must be empty or absent unless ``overwrite``).
        preset: ``tiny``, ``default``, ``paper`` or a :class:`Preset`.
        seed: dataset seed; the same seed gives identical arrays.
        workers: processes to build sites in parallel (default: up to 2).
        progress: called with each finished site's name (for progress bars).
        overwrite: replace an existing dataset in ``out``.

    Returns:
        The manifest of the written dataset.
    """
    import geopandas as gpd
    from shapely.geometry import box, shape

    p = PRESETS[preset] if isinstance(preset, str) else preset
    preset_name = preset if isinstance(preset, str) else "custom"
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace it")
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in ("sentinel2", "terrain", "climate", "regions"):
        (tmp / sub).mkdir(parents=True)

    weights = np.array([SITES[s].sampling_weight for s in p.sites])
    n_site = np.floor(p.n_pedons * weights / weights.sum()).astype(int)
    n_site[: p.n_pedons - n_site.sum()] += 1
    n_truth = np.full(len(p.sites), p.n_truth // len(p.sites))
    n_truth[: p.n_truth - n_truth.sum()] += 1
    jobs = [
        (
            name,
            p.size_px,
            seed,
            int(n_site[i]),
            int(n_truth[i]),
            p.pf1m_labelled,
            str(tmp),
        )
        for i, name in enumerate(p.sites)
    ]
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    results: list[_SiteResult] = []
    if workers > 1:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            for res in pool.map(_build_site, jobs):
                results.append(res)
                if progress:
                    progress(res.pedons["site"].iat[0])
    else:
        for job in jobs:
            results.append(_build_site(job))
            if progress:
                progress(job[0])
    grid_ids = [r.grid_id for r in results]
    if len(set(grid_ids)) != len(grid_ids):
        raise RuntimeError(f"two sites share an AK050 tile: {grid_ids}")

    from pyproj import Transformer

    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    pedons = pd.concat([r.pedons for r in results], ignore_index=True)
    id_rng = np.random.default_rng(np.random.SeedSequence([seed, 7, GENERATOR_VERSION]))
    # Ids are sorted but not contiguous, like the reference's (37,252 ids over 0..37,940).
    pedons.insert(
        0, "id", np.sort(id_rng.choice(int(len(pedons) * 1.02) + 1, len(pedons), replace=False))
    )
    # Soil orders missing at random, exactly the preset's share (paper: 32,132 of 37,252 kept).
    n_missing = round(len(pedons) * p.tax_order_missing)
    missing = id_rng.choice(len(pedons), size=n_missing, replace=False)
    pedons.loc[missing, "tax_order"] = pd.NA
    lon, lat = to_wgs84.transform(pedons["x_3338"].to_numpy(), pedons["y_3338"].to_numpy())
    pedons["lon"], pedons["lat"] = np.round(lon, 6), np.round(lat, 6)
    import pyogrio

    # GeoPackages record their write time; pin it so the same seed gives identical bytes
    # (and so the same dataset fingerprint).
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2000-01-01T00:00:00.000Z"})
    try:
        gdf = gpd.GeoDataFrame(
            pedons, geometry=gpd.points_from_xy(pedons["x_3338"], pedons["y_3338"]), crs=CRS
        )
        gdf.to_file(tmp / "pedons.gpkg", driver="GPKG", layer="pedons")

        zones = gpd.GeoDataFrame(
            {"zone": [z for r in results for _, z in r.zones]},
            geometry=[shape(g) for r in results for g, _ in r.zones],
            crs=CRS,
        ).dissolve(by="zone", as_index=False)
        zones.to_file(tmp / "regions" / "permafrost_zones.gpkg", driver="GPKG")
        mlra = gpd.GeoDataFrame(
            {"mlra": [SITES[n].mlra for n in p.sites]},
            geometry=[box(*r.bounds) for r in results],
            crs=CRS,
        ).dissolve(by="mlra", as_index=False)
        mlra.to_file(tmp / "regions" / "mlra.gpkg", driver="GPKG")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})
    truth = pd.concat([r.truth for r in results], ignore_index=True)
    truth.to_parquet(tmp / "truth.parquet", index=False)

    manifest = DatasetManifest(
        path=out / MANIFEST_NAME,
        root=out,
        name=f"synthetic-alaska-{preset_name}",
        description=(
            "Synthetic Alaska (miso-bench generator): physically motivated terrain, climate, "
            "permafrost, soil orders and Sentinel-2 at real AK050 tile locations. See "
            "datasets/synthetic_alaska/README.md for the rules."
        ),
        crs=CRS,
        res_m=RES_M,
        modalities={
            "sentinel2": ModalitySpec(
                "sentinel2",
                "sentinel2",
                "AK050H*V*.tif",
                S2_BANDS,
                float(S2_NODATA),
                "int16",
                RES_M,
            ),
            "terrain": ModalitySpec(
                "terrain",
                "terrain",
                "AK050H*V*.tif",
                TERRAIN_BANDS,
                FLOAT_NODATA,
                "float32",
                RES_M,
                circular=("aspct_4",),  # aspect, degrees clockwise from north
            ),
            "climate": ModalitySpec(
                "climate", "climate", "AK050H*V*.tif", CLIMATE_BANDS, FLOAT_NODATA, "float32", RES_M
            ),
        },
        pedons=PedonSpec(
            file="pedons.gpkg",
            id_column="id",
            labels={
                "pf1m": LabelSpec("pf1m", "pf1m", (0, 1)),
                "tax_order": LabelSpec("tax_order", "tax_order", TAX_ORDERS),
            },
        ),
        regions={
            "pf_zone": RegionSpec("pf_zone", "regions/permafrost_zones.gpkg", "zone"),
            "mlra": RegionSpec("mlra", "regions/mlra.gpkg", "mlra"),
        },
        truth_file="truth.parquet",
        source={
            "generator": "miso-bench synthetic-alaska",
            "generator_version": GENERATOR_VERSION,
            "preset": preset_name,
            "seed": seed,
            "sites": list(p.sites),
            "size_px": p.size_px,
        },
    )
    manifest.write(tmp / MANIFEST_NAME)
    # Publish atomically: an interrupted generation never leaves a half-written dataset.
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return manifest
