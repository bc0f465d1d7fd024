"""Data-layer throughput: chips per second and point-feature extraction, against naive reads.

Prints figures and ratios measured in the same run (no assertions). Usage::

    python benchmarks/bench_data.py [--preset paper] [--chips 400] [--chip-size 64]

The dataset is generated once into $MISO_BENCH_HOME (default ./.miso-bench) if absent.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import from_bounds

from miso_bench.config import resolve_config
from miso_bench.data.chips import PedonChipDataset
from miso_bench.data.features import extract_point_features
from miso_bench.data.manifest import DatasetManifest
from miso_bench.data.pedons import PedonDataset
from miso_bench.data.rasters import open_stack
from miso_bench.runner import prepare_dataset


def naive_chip(
    manifest: DatasetManifest,
    handles: dict[Path, rasterio.DatasetReader],
    footprints: dict[str, list[tuple[Path, rasterio.coords.BoundingBox]]],
    xs: slice,
    ys: slice,
) -> np.ndarray:
    """One chip by plain rasterio: for each modality, open the file under it and read a window."""
    parts = []
    for name, spec in manifest.modalities.items():
        cx, cy = (xs.start + xs.stop) / 2, (ys.start + ys.stop) / 2
        path = next(
            p for p, b in footprints[name] if b.left <= cx < b.right and b.bottom < cy <= b.top
        )
        src = rasterio.open(path) if path not in handles else handles[path]
        window = from_bounds(xs.start, ys.start, xs.stop, ys.stop, src.transform)
        parts.append(src.read(window=window, boundless=True, fill_value=spec.nodata or 0))
        if path not in handles:
            src.close()
    return np.concatenate(parts).astype(np.float32)


def naive_features(manifest: DatasetManifest, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Point values by rasterio's sample(), one point at a time (files kept open)."""
    out = np.full((len(x), len(manifest.band_names)), np.nan)
    col = 0
    for name, spec in manifest.modalities.items():
        files = [(rasterio.open(p), None) for p in manifest.modality_files(name)]
        for i in range(len(x)):
            for src, _ in files:
                b = src.bounds
                if b.left <= x[i] < b.right and b.bottom < y[i] <= b.top:
                    out[i, col : col + len(spec.bands)] = next(src.sample([(x[i], y[i])]))
                    break
        for src, _ in files:
            src.close()
        col += len(spec.bands)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=["tiny", "default", "paper"])
    parser.add_argument("--chips", type=int, default=400, help="chips per method")
    parser.add_argument("--chip-size", type=int, default=64)
    args = parser.parse_args()

    # The same "generate the synthetic dataset when absent" step as `miso-bench run`.
    manifest = prepare_dataset(resolve_config(None, None, [f"data.preset={args.preset}"]))
    pedons = PedonDataset(manifest)
    table = pedons.table
    print(
        f"dataset: {manifest.name}, {len(table):,} pedons, "
        f"{len(manifest.modality_files('sentinel2'))} tiles per modality"
    )

    # --- chips ---------------------------------------------------------------------------
    rng = np.random.default_rng(0)
    pick = table.iloc[
        np.sort(rng.choice(len(table), size=min(args.chips, len(table)), replace=False))
    ]
    stack, parts = open_stack(manifest)
    ds = PedonChipDataset(stack, parts, pick, chip_size_px=args.chip_size)
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    t_query = time.perf_counter() - t

    t = time.perf_counter()
    ds_fast = PedonChipDataset(stack, parts, pick, chip_size_px=args.chip_size, preload=True)
    t_preload = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(len(ds_fast)):
        ds_fast[i]
    t_cached = time.perf_counter() - t

    footprints = {}
    for name in manifest.modalities:
        footprints[name] = []
        for p in manifest.modality_files(name):
            with rasterio.open(p) as src:
                footprints[name].append((p, src.bounds))
    windows = [ds.sampler.window(i) for i in range(len(ds))]
    t = time.perf_counter()
    for xs, ys in windows:
        naive_chip(manifest, {}, footprints, xs, ys)
    t_naive = time.perf_counter() - t
    handles = {
        p: rasterio.open(p) for name in manifest.modalities for p in manifest.modality_files(name)
    }
    t = time.perf_counter()
    for xs, ys in windows:
        naive_chip(manifest, handles, footprints, xs, ys)
    t_naive_open = time.perf_counter() - t
    for h in handles.values():
        h.close()

    n = len(ds)
    base = n / t_naive
    print(
        f"\nchips of {args.chip_size}x{args.chip_size} px x {len(ds.band_names)} bands, {n} pedons"
    )
    print(f"  naive rasterio windows (open per chip)    {base:8.1f} chips/s   1.00x")
    print(
        f"  naive rasterio windows (handles open)     {n / t_naive_open:8.1f} chips/s   "
        f"{n / t_naive_open / base:.2f}x"
    )
    print(
        f"  PedonChipDataset, torchgeo slice queries  {n / t_query:8.1f} chips/s   "
        f"{n / t_query / base:.2f}x"
    )
    print(
        f"  PedonChipDataset, preload=True            {n / t_cached:8.1f} chips/s   "
        f"{n / t_cached / base:.2f}x  (one-off preload {t_preload:.1f} s)"
    )

    # --- point features ----------------------------------------------------------------------
    x, y = table["x"].to_numpy(), table["y"].to_numpy()
    t = time.perf_counter()
    feats = extract_point_features(manifest, x, y)
    t_vec = time.perf_counter() - t
    t = time.perf_counter()
    feats3 = extract_point_features(manifest, x, y, window_px=3)
    t_vec3 = time.perf_counter() - t
    t = time.perf_counter()
    naive = naive_features(manifest, x, y)
    t_naive_f = time.perf_counter() - t
    same = np.allclose(
        np.nan_to_num(feats.to_numpy(), nan=-1),
        np.nan_to_num(
            np.where(naive == manifest.modalities["sentinel2"].nodata, np.nan, naive), nan=-1
        ),
    )
    print(f"\npoint features, {len(x):,} points x {feats.shape[1]} bands")
    print(f"  naive rasterio sample() per point         {t_naive_f:8.2f} s        1.00x")
    print(
        f"  extract_point_features (1 px)             {t_vec:8.2f} s   {t_naive_f / t_vec:7.1f}x"
        f"  (values identical: {same})"
    )
    print(
        f"  extract_point_features (3x3 window mean)  {t_vec3:8.2f} s   "
        f"{t_naive_f / t_vec3:7.1f}x  ({feats3.notna().all(axis=1).mean():.1%} complete rows)"
    )


if __name__ == "__main__":
    main()
