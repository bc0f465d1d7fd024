"""Import the reference study's files into a miso-bench dataset (``data import-reference``).

Inputs, in exactly the reference's formats (``shared/reference/miso-reference.md`` §1-2):

- the AKSDB-style point JSON: a list of records with ``id``, ``x_3338``/``y_3338`` (or
  ``grid_id`` with ``x_pixel``/``y_pixel``), ``tax_order`` (a string, or a list when a site
  has several observations), ``aksdb_pf1m_bin`` (0/1 or a list), ``aksdb_othick_cum_best``
  and optionally ``peat_level``;
- per-tile HDF5 rasters ``{grid_id}.h5`` with a dataset ``data`` of shape H x W x C (channels
  last) on the AK050 grid: Sentinel-2 (9 bands, no-data -32767) and the merged covariates (7
  IfSAR derivatives then 3 climate layers, no-data -3e38);
- optionally the reference split files (``*_split_train_test_indices.json``).

Output: our layout. Per tile and modality a Cloud-Optimised GeoTIFF (``sentinel2/``,
``terrain/``, ``climate/``), streamed in row strips so memory stays bounded on 5000 x 5000
tiles; ``pedons.gpkg`` (EPSG:3338) with one resolved value per label; the manifest; the split
files copied to ``splits/``; and ``import_report.json`` counting what happened to every record.

**Several observations of a site** (a list) are resolved by ``label_rule``: ``unanimous``
(default: kept when every observation agrees, dropped otherwise), ``majority`` (the most common
value; a tie is dropped) or ``first``. Nothing is dropped silently: the report counts records
without coordinates, missing labels, lists kept and dropped, and classes outside the task (e.g.
Alfisols, which the reference also excludes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MisoBenchError
from .bands import SATLAS_S2_BANDS
from .synthetic.landscape import CLIMATE_BANDS, TAX_ORDERS
from .synthetic.terrain import TERRAIN_BANDS
from .tiles import tile_bounds

__all__ = ["LABEL_RULES", "ImportReport", "import_reference"]

# The reference's band and class names are those of the synthetic generator (made to match).
#: The reference format's coordinate system: its point JSON names ``x_3338``/``y_3338`` and
#: its chip arrays carry no georeferencing, being 10 m windows of Alaska Albers by definition.
#: Only this importer assumes it; everything downstream reads the CRS from the manifest.
REFERENCE_CRS = "EPSG:3338"
REFERENCE_S2_BANDS = SATLAS_S2_BANDS
REFERENCE_TERRAIN = TERRAIN_BANDS
REFERENCE_CLIMATE = CLIMATE_BANDS
S2_NODATA = -32767.0
COV_NODATA = -3e38
LABEL_RULES = ("unanimous", "majority", "first")
STRIP_ROWS = 256


@dataclass
class ImportReport:
    """What the import did, record by record and tile by tile."""

    records: int = 0
    without_coordinates: int = 0
    duplicate_ids: int = 0
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    tiles: dict[str, int] = field(default_factory=dict)
    missing_tiles: dict[str, list[str]] = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (written as ``import_report.json``)."""
        return {
            "records": self.records,
            "without_coordinates": self.without_coordinates,
            "duplicate_ids": self.duplicate_ids,
            "labels": self.labels,
            "tiles": self.tiles,
            "missing_tiles": self.missing_tiles,
            "splits": self.splits,
        }

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"{self.records:,} point records; {self.without_coordinates:,} without coordinates "
            f"and {self.duplicate_ids:,} duplicate ids left out"
        ]
        for label, c in self.labels.items():
            lines.append(
                f"  {label}: {c['kept']:,} kept ({c['lists_kept']:,} from several agreeing "
                f"observations); left out: {c['missing']:,} missing, {c['lists_dropped']:,} "
                f"disagreeing lists, {c['outside_classes']:,} outside the classes"
            )
        for modality, n in self.tiles.items():
            gone = self.missing_tiles.get(modality, [])
            lines.append(
                f"  {modality}: {n} tiles"
                + (f" ({len(gone)} referenced but missing)" if gone else "")
            )
        if self.splits:
            lines.append(f"  split files: {', '.join(self.splits)}")
        return "\n".join(lines)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def resolve_label(value: Any, rule: str) -> tuple[Any, str]:
    """One value for a record's label: ``(value, how)`` with ``how`` one of ``single``,
    ``missing``, ``list_kept``, ``list_dropped``."""
    if isinstance(value, list):
        values = [v for v in value if not _is_missing(v)]
        if not values:
            return None, "missing"
        if rule == "first":
            return values[0], "list_kept"
        counts = Counter(values).most_common()
        if rule == "unanimous":
            return (values[0], "list_kept") if len(counts) == 1 else (None, "list_dropped")
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            return None, "list_dropped"
        return counts[0][0], "list_kept"
    if _is_missing(value):
        return None, "missing"
    return value, "single"


def _binary(value: Any) -> Any:
    """0/1 from 0, 1, 0.0, 1.0, "0", "1", True, False; anything else as is (then outside the
    classes, counted)."""
    if isinstance(value, bool):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number in (0.0, 1.0) else value


def _coordinates(rec: dict[str, Any]) -> tuple[float, float] | None:
    x: Any = rec.get("x_3338")
    y: Any = rec.get("y_3338")
    if not _is_missing(x) and not _is_missing(y):
        return float(x), float(y)
    gid: Any = rec.get("grid_id")
    px: Any = rec.get("x_pixel")
    py: Any = rec.get("y_pixel")
    if gid and not _is_missing(px) and not _is_missing(py):
        try:
            xmin, _, _, ymax = tile_bounds(str(gid))
        except ValueError:
            return None  # counted as a record without coordinates
        # The reference's global pixel frame: an integer pixel position is a pixel centre.
        return xmin + 10.0 * (float(px) + 0.5), ymax - 10.0 * (float(py) + 0.5)
    return None


def _write_tile(
    h5_path: Path,
    outputs: Sequence[tuple[Path, slice, str, float, Sequence[str]]],
) -> None:
    """Stream one h5 tile into GeoTIFFs (one per band group), strip by strip, then COGs."""
    import h5py
    import rasterio
    from rasterio.shutil import copy as rio_copy
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    grid_id = h5_path.stem
    try:
        xmin, _, _, ymax = tile_bounds(grid_id)
    except ValueError as exc:
        raise MisoBenchError(
            f"{h5_path}: the file name is not an AK050 tile id (AK050HxxVyy.h5) (fix: rename "
            "it, or move it out of the folder)"
        ) from exc
    try:
        h5 = h5py.File(h5_path, "r")
    except OSError as exc:
        raise MisoBenchError(f"{h5_path}: unreadable HDF5 file: {exc}") from exc
    with h5:
        if "data" not in h5:
            raise MisoBenchError(f"{h5_path}: no dataset 'data' (the reference's h5 layout)")
        ds = h5["data"]
        if ds.ndim != 3:
            raise MisoBenchError(f"{h5_path}: 'data' has shape {ds.shape}, expected H x W x C")
        height, width, channels = ds.shape
        need = max(s.stop for _, s, *_ in outputs)
        source_dtype = np.dtype(ds.dtype)
        if channels < need:
            raise MisoBenchError(
                f"{h5_path}: {channels} channels, expected at least {need} (fix: check the "
                "folder: Sentinel-2 tiles have 9, covariate tiles 10)"
            )
        handles = []
        outputs = [
            # Integer Sentinel-2 keeps its type only where it fits (no wrap-around).
            (p, sl, dt if np.can_cast(source_dtype, dt) else "float32", nd, b)
            for p, sl, dt, nd, b in outputs
        ]
        for path, _, dtype, nodata, bands in outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.partial")
            dst = rasterio.open(
                tmp,
                "w",
                driver="GTiff",
                width=width,
                height=height,
                count=len(bands),
                dtype=dtype,
                crs=REFERENCE_CRS,
                transform=from_origin(xmin, ymax, 10.0, 10.0),
                nodata=nodata,
                tiled=True,
                blockxsize=256,
                blockysize=256,
                BIGTIFF="IF_SAFER",
            )
            for i, b in enumerate(bands, start=1):
                dst.set_band_description(i, b)
            handles.append((dst, tmp))
        try:
            for r0 in range(0, height, STRIP_ROWS):
                strip = np.asarray(ds[r0 : r0 + STRIP_ROWS])  # (rows, W, C)
                for (dst, _), (_, channel_slice, dtype, _, _) in zip(handles, outputs, strict=True):
                    part = np.moveaxis(strip[:, :, channel_slice], -1, 0).astype(dtype)
                    dst.write(part, window=Window(0, r0, width, part.shape[1]))
        finally:
            for dst, _ in handles:
                dst.close()
    for (_, tmp), (path, *_rest) in zip(handles, outputs, strict=True):
        cog = path.with_name(f".{path.name}.cog.partial")
        rio_copy(tmp, cog, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE="256", BIGTIFF="IF_SAFER")
        os.replace(cog, path)
        tmp.unlink(missing_ok=True)


def import_reference(
    points: str | Path,
    out: str | Path,
    *,
    s2_dir: str | Path | None = None,
    cov_dir: str | Path | None = None,
    splits: Sequence[str | Path] = (),
    label_rule: str = "unanimous",
    name: str = "aksdb",
    progress: Callable[[str], None] | None = None,
) -> ImportReport:
    """Import the reference layout into ``out`` (see the module docstring).

    Args:
        points: the point JSON.
        out: the new dataset folder (created; tiles already converted are kept, so an
            interrupted import resumes).
        s2_dir, cov_dir: folders of the Sentinel-2 and covariate ``{grid_id}.h5`` tiles.
        splits: reference split files to copy (usable as ``--cv file:PATH``).
        label_rule: ``unanimous``, ``majority`` or ``first`` (several observations).
        name: the dataset's name.
        progress: told about each tile converted.

    Raises:
        MisoBenchError: unreadable inputs or an unknown rule.
    """
    import geopandas as gpd
    import pandas as pd
    import yaml

    if label_rule not in LABEL_RULES:
        raise MisoBenchError(f"--label-rule {label_rule!r}: use one of {', '.join(LABEL_RULES)}")
    points = Path(points)
    out = Path(out)
    try:
        records = json.loads(points.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MisoBenchError(f"{points}: cannot read the point JSON: {exc}") from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise MisoBenchError(f"{points}: expected a JSON list of point records (dicts)")
    report = ImportReport(records=len(records))
    label_fields = {"tax_order": "tax_order", "pf1m": "aksdb_pf1m_bin", "peat_level": "peat_level"}
    classes: dict[str, tuple[Any, ...]] = {"tax_order": TAX_ORDERS, "pf1m": (0, 1)}
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for label in label_fields:
        report.labels[label] = dict.fromkeys(
            ("kept", "missing", "lists_kept", "lists_dropped", "outside_classes"), 0
        )
    for rec in records:
        xy = _coordinates(rec)
        if xy is None or "id" not in rec:
            report.without_coordinates += 1
            continue
        pid = str(rec["id"])
        if pid in seen:
            report.duplicate_ids += 1
            continue
        seen.add(pid)
        row: dict[str, Any] = {"id": pid, "x": xy[0], "y": xy[1], "grid_id": rec.get("grid_id")}
        for label, key in label_fields.items():
            value, how = resolve_label(rec.get(key), label_rule)
            counts = report.labels[label]
            if how in ("missing", "list_dropped"):
                counts["missing" if how == "missing" else "lists_dropped"] += 1
                row[label] = None
                continue
            if label == "pf1m":
                value = _binary(value)
            if label == "peat_level":  # the reference's binary peat task: no vs any peat
                text = str(value).strip().lower()
                value = (
                    None if text in ("", "na", "nan", "none") else ("no" if text == "no" else "yes")
                )
                if value is None:
                    counts["missing"] += 1
                    row[label] = None
                    continue
            if label in classes and value not in classes[label]:
                counts["outside_classes"] += 1
                row[label] = None
                continue
            counts["kept"] += 1
            counts["lists_kept"] += how == "list_kept"
            row[label] = value
        othick = rec.get("aksdb_othick_cum_best")
        row["othick_cm"] = None if _is_missing(othick) or isinstance(othick, list) else othick
        rows.append(row)
    if not rows:
        raise MisoBenchError(f"{points}: no record has coordinates (x_3338/y_3338 or grid_id)")
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    if report.labels["peat_level"]["kept"] == 0:
        frame = frame.drop(columns="peat_level")
        del report.labels["peat_level"]
    gdf = gpd.GeoDataFrame(
        frame.drop(columns=["x", "y"]),
        geometry=gpd.points_from_xy(frame["x"], frame["y"]),
        crs=REFERENCE_CRS,
    )
    gdf.to_file(out / "pedons.gpkg", driver="GPKG")

    modalities: dict[str, Any] = {}
    Part = tuple[str, slice, str, float, tuple[str, ...]]
    groups: list[tuple[str, Any, list[Part]]] = [
        ("sentinel2", s2_dir, [("sentinel2", slice(0, 9), "int16", S2_NODATA, REFERENCE_S2_BANDS)]),
        (
            "covariates",
            cov_dir,
            [
                ("terrain", slice(0, 7), "float32", COV_NODATA, REFERENCE_TERRAIN),
                ("climate", slice(7, 10), "float32", COV_NODATA, REFERENCE_CLIMATE),
            ],
        ),
    ]
    wanted = {str(g) for g in frame["grid_id"].dropna()}
    for label, folder, parts in groups:
        if folder is None:
            continue
        files = sorted(Path(folder).glob("AK050H*V*.h5"))
        if not files:
            raise MisoBenchError(
                f"{folder}: no AK050HxxVyy.h5 tiles (fix: give the {label} folder)"
            )
        for h5 in files:
            targets = [(out / m / f"{h5.stem}.tif", s, dt, nd, b) for m, s, dt, nd, b in parts]
            if all(t[0].is_file() for t in targets):
                continue  # converted by an earlier, interrupted import
            _write_tile(h5, targets)
            if progress is not None:
                progress(f"{label} {h5.stem}")
        have = {h.stem for h in files}
        for m, _, _, nodata, bands in parts:
            import rasterio

            with rasterio.open(out / m / f"{files[0].stem}.tif") as written:
                dtype = written.dtypes[0]  # int16 unless the source did not fit it
            modalities[m] = {
                "folder": m,
                "glob": "AK050H*V*.tif",
                "bands": list(bands),
                "nodata": nodata,
                "dtype": dtype,
            }
            if m == "terrain":
                modalities[m]["circular"] = ["aspct_4"]  # aspect, degrees from north
            report.tiles[m] = len(files)
            gone = sorted(wanted - have)
            if gone:
                report.missing_tiles[m] = gone
    if not modalities:
        raise MisoBenchError("give --s2-dir and/or --cov-dir: the h5 tile folders")
    copied = []
    for split in splits:
        src = Path(split)
        if not src.is_file():
            raise MisoBenchError(f"{src}: no such split file")
        (out / "splits").mkdir(exist_ok=True)
        shutil.copyfile(src, out / "splits" / src.name)
        copied.append(f"splits/{src.name}")
    report.splits = copied
    labels: dict[str, Any] = {
        "tax_order": {"column": "tax_order", "classes": list(TAX_ORDERS)},
        "pf1m": {"column": "pf1m", "classes": [0, 1]},
    }
    if "peat_level" in frame:
        labels["peat_level"] = {"column": "peat_level", "classes": ["no", "yes"]}
    manifest = {
        "name": name,
        "description": f"imported by miso-bench data import-reference from {points.name}",
        "crs": REFERENCE_CRS,
        "res_m": 10.0,
        "modalities": modalities,
        "pedons": {"file": "pedons.gpkg", "id_column": "id", "labels": labels},
        "source": {"points": str(points), "label_rule": label_rule},
    }
    (out / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (out / "import_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    return report
