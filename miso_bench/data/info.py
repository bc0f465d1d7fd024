"""A readable summary of a dataset: rasters, pedons per class/region/task, spatial structure."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from ..spatial import metric_coordinates
from .cache import dataset_fingerprint
from .manifest import DatasetManifest, open_raster
from .normalization import compute_band_stats
from .pedons import PedonDataset
from .regions import load_regions

__all__ = ["dataset_summary", "format_summary", "nn_same_label_rate"]


def nn_same_label_rate(x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Share of points whose nearest neighbour has the same label, and that share by chance.

    Chance is ``sum_k p_k^2`` for class shares ``p_k`` (two random points agree). A rate well
    above chance means strong spatial autocorrelation, so random CV will be optimistic.
    """
    if len(x) < 2:
        return float("nan"), float("nan")
    tree = cKDTree(np.column_stack([x, y]))
    _, nn = tree.query(np.column_stack([x, y]), k=2)
    same = float(np.mean(labels[nn[:, 1]] == labels))
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return same, float(np.sum(p**2))


def _units(crs: str) -> str:
    """The unit of the CRS's coordinates, for labels (``m``, ``degree``...)."""
    from pyproj import CRS

    unit = CRS.from_user_input(crs).axis_info[0].unit_name
    return {"metre": " m", "degree": "°"}.get(unit, f" {unit}")


def dataset_summary(manifest: DatasetManifest) -> dict[str, Any]:
    """Everything ``miso-bench data info`` shows, as plain data."""
    out: dict[str, Any] = {
        "name": manifest.name,
        "manifest": str(manifest.path),
        "crs": manifest.crs,
        "res_m": manifest.res_m,
        "units": _units(manifest.crs),
        "source": manifest.source,
        "modalities": {},
    }
    for name, spec in manifest.modalities.items():
        files = manifest.modality_files(name, required=True)
        bounds = [np.inf, np.inf, -np.inf, -np.inf]
        pixels = 0
        for path in files:
            with open_raster(path) as src:
                b = src.bounds
                bounds = [
                    min(bounds[0], b.left),
                    min(bounds[1], b.bottom),
                    max(bounds[2], b.right),
                    max(bounds[3], b.top),
                ]
                pixels += src.width * src.height
        out["modalities"][name] = {
            "files": len(files),
            "bands": list(spec.bands),
            "dtype": spec.dtype,
            "nodata": spec.nodata,
            "res_m": spec.res_m,
            "extent": bounds,
            "pixels": pixels,
            "categorical": list(spec.categorical),
        }
    stats = compute_band_stats(manifest)
    out["bands"] = {}
    for band, st in stats.items():
        inv = np.sinh if st.transform == "asinh" else (lambda v: v)
        out["bands"][band] = {
            "p02": float(inv(st.p02)),
            "p50": float(inv(st.p50)),
            "p98": float(inv(st.p98)),
            "transform": st.transform,
            "categorical": st.categorical,
        }
    pedons = PedonDataset(manifest)
    layers = load_regions(manifest)
    table = pedons.table
    regions = {
        name: layer.assign(table["x"].to_numpy(), table["y"].to_numpy())
        for name, layer in layers.items()
    }
    out["pedons"] = {"file": str(pedons.path), "n": len(table), "tasks": {}}
    for label in manifest.pedons.labels:
        kept, report = pedons.labelled(label)
        rows = kept.index.to_numpy()
        same, chance = float("nan"), float("nan")
        if len(kept) >= 2:  # neighbours by distance in metres, whatever the dataset's CRS
            xy, _ = metric_coordinates(manifest.crs, kept["x"].to_numpy(), kept["y"].to_numpy())
            same, chance = nn_same_label_rate(xy[:, 0], xy[:, 1], kept["target"].to_numpy())
        by_region: dict[str, dict[str, int]] = {}
        for rname, assigned in regions.items():
            sub = assigned[rows]
            names, counts = np.unique(sub, return_counts=True)
            by_region[rname] = {str(n): int(c) for n, c in zip(names, counts, strict=True)}
        out["pedons"]["tasks"][label] = {
            "kept": report.n_kept,
            "missing": report.n_missing,
            "unknown": report.n_unknown,
            "unknown_values": report.unknown_values,
            "classes": report.class_counts,
            "by_region": by_region,
            "nn_same_label": same,
            "nn_same_label_chance": chance,
        }
    out["regions"] = {name: layer.regions for name, layer in layers.items()}
    out["fingerprint"] = dataset_fingerprint(manifest)
    return out


def format_summary(s: dict[str, Any]) -> str:
    """Render :func:`dataset_summary` as text for the terminal."""
    lines = [
        f"Dataset {s['name']}  ({s['manifest']})",
        f"  CRS {s['crs']}, grid {s['res_m']:g}{s['units']}, fingerprint {s['fingerprint']}",
    ]
    if s["source"]:
        src = s["source"]
        lines.append("  source: " + ", ".join(f"{k}={v}" for k, v in src.items() if k != "sites"))
    lines.append("Rasters")
    digits = 5 if s["units"] == "°" else 0
    for name, mod in s["modalities"].items():
        e = mod["extent"]
        lines.append(
            f"  {name:<10} {mod['files']:>3} files  {len(mod['bands']):>2} bands "
            f"{mod['dtype']:<8} nodata={mod['nodata']}  {mod['pixels']:,} px at "
            f"{mod['res_m']:g}{s['units']}  extent [{', '.join(f'{v:.{digits}f}' for v in e)}]"
        )
        for band in mod["bands"]:
            b = s["bands"][band]
            kind = (
                "codes"
                if b["categorical"]
                else ("asinh-scaled" if b["transform"] == "asinh" else "")
            )
            lines.append(
                f"    {band:<24} p2 {b['p02']:>11.4g}  median {b['p50']:>11.4g}  "
                f"p98 {b['p98']:>11.4g}  {kind}".rstrip()
            )
    p = s["pedons"]
    lines.append(f"Pedons: {p['n']:,} sites in {p['file']}")
    for label, t in p["tasks"].items():
        lines.append(
            f"  task {label}: {t['kept']:,} labelled, {t['missing']:,} missing"
            + (f", {t['unknown']:,} unknown {t['unknown_values']}" if t["unknown"] else "")
        )
        total = max(t["kept"], 1)
        for cls, n in t["classes"].items():
            bar = "#" * round(40 * n / total)
            lines.append(f"    {cls!s:<14} {n:>7,} {100 * n / total:5.1f}%  {bar}")
        lines.append(
            f"    nearest neighbour has the same label: {100 * t['nn_same_label']:.1f}% "
            f"(chance {100 * t['nn_same_label_chance']:.1f}%)"
        )
        for rname, counts in t["by_region"].items():
            parts = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
            lines.append(f"    by {rname}: {parts}")
    return "\n".join(lines)
