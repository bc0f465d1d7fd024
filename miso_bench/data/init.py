"""``miso-bench data init``: draft a manifest from a folder of rasters and a point file.

Nothing is asked: every choice is a guess from the files, written into ``dataset.yaml`` and
listed with what to check. The rules:

- **Modalities**: raster files (``.tif``/``.tiff``) grouped by folder and by band count, data
  type, CRS and resolution; a group whose bands include the nine Satlas Sentinel-2 bands (``B4``
  or ``B04``...) is ``sentinel2``, other groups are named by their folder or file name.
- **Bands**: the files' band descriptions, else ``<modality>_<i>``. **No-data** and **dtype**:
  the files'. **Categorical**: bands whose sampled values are all whole numbers with at most
  32 distinct values (not Sentinel-2 bands). **Scale**: Sentinel-2 stored as reflectance 0-1
  (98th percentile below 2) gets ``scale: 10000`` (L2A digital numbers).
- **Grid**: the CRS and pixel size of the imagery (else of the raster with the finest pixels
  on the ground: 0.001 degrees is not finer than 10 m); other resolutions are declared per
  modality and resampled onto it.
- **Points**: the vector file given, or the only one in the folder (``.gpkg``, ``.geojson``,
  ``.shp``, ``.csv`` / ``.parquet`` with x/y columns). The id column is a unique column named
  like an id (else any unique column). Labels are the text columns with 2-50 classes and the
  two-valued numeric columns.
- **Polygons** become points by a fixed rule: every pixel centre of the grid inside a polygon
  (or, for large polygons, a seeded sample of ``max_per_polygon`` of them), each carrying the
  polygon's attributes and ``polygon_id``; written next to the manifest.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml

from ..errors import MisoBenchError
from .bands import SATLAS_S2_BANDS, canonical_s2_name
from .manifest import RESERVED_LABEL_NAMES, looks_like_aspect, normalise_label, read_masked

__all__ = ["Draft", "draft_manifest", "polygons_to_points"]

RASTER_EXT = (".tif", ".tiff")
VECTOR_EXT = (".gpkg", ".geojson", ".json", ".shp", ".csv", ".parquet")
ID_NAMES = ("id", "site_id", "pedon_id", "pid", "point_id", "fid", "uid", "plot_id")
MAX_CATEGORIES = 32
MAX_CLASSES = 50
#: Pixel centres of a polygon's box tested one by one; larger boxes draw seeded candidates.
MAX_CANDIDATES = 4_000_000


@dataclass
class Draft:
    """A drafted manifest and what was guessed."""

    manifest: dict[str, Any]
    guesses: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


@dataclass
class _Raster:
    path: Path
    count: int
    dtype: str
    crs: Any
    res: tuple[float, float]
    descriptions: tuple[str | None, ...]
    nodata: float | None
    #: The pixel's size on the ground in metres (geometric mean of its width and height at
    #: the file's centre): resolutions in degrees, feet and metres compare on it.
    pixel_m: float = math.nan


def _pixel_metres(src: Any) -> float:
    """Ground size in metres of the file's centre pixel (NaN without a CRS)."""
    from pyproj import Geod, Transformer

    if src.crs is None:
        return math.nan
    t = src.transform
    c, r = src.width / 2, src.height / 2
    pixels = ((c, r), (c + 1, r), (c, r + 1))  # the centre pixel's corner and its neighbours
    corners = [(t.a * i + t.b * j + t.c, t.d * i + t.e * j + t.f) for i, j in pixels]
    to_lonlat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform([p[0] for p in corners], [p[1] for p in corners])
    geod = Geod(ellps="WGS84")
    _, _, width = geod.inv(lon[0], lat[0], lon[1], lat[1])
    _, _, height = geod.inv(lon[0], lat[0], lon[2], lat[2])
    return float(math.sqrt(abs(width * height)))


def _scan(path: Path) -> _Raster:
    from .manifest import open_raster

    with open_raster(path) as src:
        return _Raster(
            path,
            src.count,
            src.dtypes[0],
            src.crs,
            (abs(src.transform.a), abs(src.transform.e)),
            tuple(src.descriptions),
            src.nodata,
            _pixel_metres(src),
        )


def _sample(path: Path, band: int, nodata: float | None) -> np.ndarray:
    with rasterio.open(path, OVERVIEW_LEVEL="NONE") as src:  # pixels, not overviews
        f = max(1, math.ceil(max(src.width, src.height) / 256))
        shape = (max(1, src.height // f), max(1, src.width // f))
        data = read_masked(src, None, indexes=band, out_shape=shape)  # GDAL masks as NaN
    values: np.ndarray = data.ravel()
    values = values[np.isfinite(values)]
    if nodata is not None and not math.isnan(nodata):
        values = values[values != nodata]
    return values


def _modality_name(folder: str, files: list[Path], taken: set[str]) -> str:
    if folder not in ("", "."):
        base = Path(folder).name
    else:
        stems = [p.stem for p in files]
        prefix = stems[0]
        for s in stems[1:]:
            while not s.startswith(prefix):
                prefix = prefix[:-1]
        base = prefix.strip("_-. ") or stems[0]
    base = re.sub(r"[^0-9A-Za-z_]+", "_", base).strip("_").lower() or "rasters"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def polygons_to_points(
    gdf: Any, crs: str, res: float, x0: float, y0: float, max_per_polygon: int, seed: int = 0
) -> Any:
    """Points for polygon labels: the grid's pixel centres inside each polygon (a seeded sample
    of ``max_per_polygon`` where there are more), with the polygon's attributes, an ``id``
    and ``polygon_id``. Polygons that hold no pixel centre give their representative point."""
    import geopandas as gpd
    import shapely

    poly = gdf.to_crs(crs).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, geom in enumerate(poly.geometry):
        if geom is None or geom.is_empty:
            continue
        xmin, ymin, xmax, ymax = geom.bounds
        cols = np.arange(math.floor((xmin - x0) / res), math.ceil((xmax - x0) / res))
        rws = np.arange(math.floor((y0 - ymax) / res), math.ceil((y0 - ymin) / res))
        cx: np.ndarray
        cy: np.ndarray
        if len(cols) * len(rws) <= MAX_CANDIDATES:
            gx, gy = np.meshgrid(x0 + (cols + 0.5) * res, y0 - (rws + 0.5) * res)
            cx, cy = gx.ravel(), gy.ravel()
        else:  # a large polygon: seeded candidate pixel centres, not every one of the box
            n = 50 * max_per_polygon
            cx = x0 + (rng.integers(cols[0], cols[-1] + 1, n) + 0.5) * res
            cy = y0 - (rng.integers(rws[0], rws[-1] + 1, n) + 0.5) * res
            cx, cy = np.unique(np.column_stack([cx, cy]), axis=0).T
        inside = shapely.contains_xy(geom, cx, cy)
        px, py = cx[inside], cy[inside]
        if len(px) == 0:
            p = geom.representative_point()
            px, py = np.array([p.x]), np.array([p.y])
        if len(px) > max_per_polygon:
            keep = np.sort(rng.choice(len(px), max_per_polygon, replace=False))
            px, py = px[keep], py[keep]
        for x, y in zip(px, py, strict=True):
            rows.append((i, x, y))
    idx = np.array([r[0] for r in rows], dtype=np.int64)
    attrs = poly.drop(columns="geometry").iloc[idx].reset_index(drop=True)
    attrs.insert(0, "polygon_id", idx)
    attrs.insert(0, "id", np.arange(len(rows)))
    return gpd.GeoDataFrame(
        attrs,
        geometry=gpd.points_from_xy([r[1] for r in rows], [r[2] for r in rows]),
        crs=crs,
    )


def _read_points(path: Path) -> Any:
    import geopandas as gpd
    import pandas as pd

    if path.suffix.lower() in (".csv", ".parquet"):
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
        return frame
    return gpd.read_file(path)


def _label_columns(frame: Any, skip: set[str]) -> dict[str, list[Any]]:
    import pandas as pd

    labels: dict[str, list[Any]] = {}
    for col in frame.columns:
        if col in skip or col == "geometry":
            continue
        values = frame[col].dropna()
        if values.dtype.kind in "OUS":  # text: missing markers ("-", "NA") are not classes
            values = values[[normalise_label(v) is not None for v in values.tolist()]]
            values = values.map(lambda v: v.strip() if isinstance(v, str) else v)
        if len(values) < 10:
            continue
        unique = pd.unique(values)
        kind = values.dtype.kind
        if kind in "OUSb" or str(values.dtype) in ("string", "str", "category"):
            if 2 <= len(unique) <= MAX_CLASSES and len(unique) < len(values):
                labels[str(col)] = sorted(unique.tolist(), key=str)
        elif kind in "iuf" and len(unique) == 2:
            vals = sorted(float(v) for v in unique)
            if all(v == int(v) for v in vals):
                labels[str(col)] = [int(v) for v in vals]
    return labels


def draft_manifest(
    folder: str | Path,
    out: str | Path | None = None,
    points: str | Path | None = None,
    max_per_polygon: int = 200,
) -> Draft:
    """Draft ``dataset.yaml`` for a folder of rasters and points (see the module docstring).

    Args:
        folder: the data folder.
        out: the manifest to write (default ``folder/dataset.yaml``); files it derives (points
            from polygons) go next to it.
        points: the point (or polygon) file (default: the only vector file in the folder).
        max_per_polygon: most points drawn from one polygon.

    Raises:
        MisoBenchError: no rasters, no or several point files, no id or label column, or a
            manifest already there.
    """
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise MisoBenchError(f"{folder}: not a folder (fix: give the folder of your rasters)")
    target = Path(out).expanduser().resolve() if out else folder / "dataset.yaml"
    if target.exists():
        raise MisoBenchError(
            f"{target} already exists (fix: remove it, or give --out for the new draft)"
        )
    draft = Draft({})
    rasters = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in RASTER_EXT and not _hidden(p, folder)
    )
    if not rasters:
        raise MisoBenchError(f"{folder}: no GeoTIFF (.tif) files found (fix: add the rasters)")
    scanned = [_scan(p) for p in rasters]
    groups: dict[tuple, list[_Raster]] = {}
    for r in scanned:
        if r.crs is None:
            raise MisoBenchError(
                f"{r.path}: the raster has no CRS (fix: assign one, e.g. with gdal_edit.py "
                "-a_srs EPSG:xxxx)"
            )
        key = (
            str(r.path.parent.relative_to(folder)),
            r.count,
            r.dtype,
            r.crs.to_string(),
            round(r.res[0], 12),
            r.descriptions,
        )
        groups.setdefault(key, []).append(r)

    modalities: dict[str, dict[str, Any]] = {}
    info: dict[str, tuple[list[_Raster], bool]] = {}
    taken: set[str] = set()
    for key, members in groups.items():
        first = members[0]
        names = [d for d in first.descriptions]
        described = all(names) and len(set(names)) == len(names)
        canon = {canonical_s2_name(str(n)) for n in names if n}
        is_s2 = described and set(SATLAS_S2_BANDS) <= canon
        name = "sentinel2" if is_s2 and "sentinel2" not in taken else None
        name = name or _modality_name(key[0], [m.path for m in members], taken)
        taken.add(name)
        bands = (
            [str(n) for n in names]
            if described
            else [f"{name}_{i + 1}" for i in range(first.count)]
        )
        if not described:
            draft.checks.append(
                f"{name}: the files carry no band descriptions; bands are named {bands[0]}... "
                "in file order: rename them (`bands`)"
            )
        rel = key[0]
        in_folder = [p for p in (folder / rel).glob("*") if p.suffix.lower() in RASTER_EXT]
        if len(members) == 1:
            glob = members[0].path.name
        elif len(members) == len(in_folder):
            glob = f"*{members[0].path.suffix}"
        else:
            stems = [m.path.name for m in members]
            prefix = stems[0]
            for s in stems[1:]:
                while not s.startswith(prefix):
                    prefix = prefix[:-1]
            glob = f"{prefix}*{members[0].path.suffix}"
        matched = {p.name for p in (folder / rel).glob(glob)}
        if matched != {m.path.name for m in members}:
            others = sorted(matched - {m.path.name for m in members})
            raise MisoBenchError(
                f"{folder / rel}: files of different kinds share this folder (e.g. "
                f"{members[0].path.name} and {others[0] if others else '?'}) and no file name "
                "pattern tells them apart (fix: move each kind of raster into its own folder)"
            )
        entry: dict[str, Any] = {
            "folder": rel if rel else ".",
            "glob": glob,
            "bands": bands,
            "nodata": first.nodata,
            "dtype": first.dtype,
        }
        categorical = []
        for b, band in enumerate(bands, start=1):
            if canonical_s2_name(band) is not None and is_s2:
                continue
            v = _sample(first.path, b, first.nodata)
            if v.size and np.all(v == np.round(v)) and len(np.unique(v)) <= MAX_CATEGORIES:
                categorical.append(band)
        if categorical:
            entry["categorical"] = categorical
            draft.guesses.append(
                f"{name}: {', '.join(categorical)} look categorical (whole numbers, at most "
                f"{MAX_CATEGORIES} values): class codes, never averaged"
            )
        circular = [b for b in bands if b not in categorical and looks_like_aspect(b)]
        if circular:
            entry["circular"] = circular
            draft.guesses.append(
                f"{name}: {', '.join(circular)} look like aspect (by name): angles in degrees, "
                "averaged as directions (`circular`)"
            )
        if is_s2:
            red = bands[[canonical_s2_name(b) for b in bands].index("B04")]
            v = _sample(first.path, bands.index(red) + 1, first.nodata)
            if v.size and np.percentile(v, 98) < 2.0:
                entry["scale"] = 10000.0
                draft.guesses.append(
                    f"{name}: values look like reflectance 0-1 (98th percentile of {red} "
                    f"{np.percentile(v, 98):.3f}): scale 10000 gives L2A digital numbers"
                )
        modalities[name] = entry
        info[name] = (members, is_s2)
        draft.guesses.append(
            f"{name}: {len(members)} file(s) in {entry['folder']} ({glob}), {first.count} "
            f"band(s) {first.dtype}, no-data {first.nodata}, {first.crs.to_string()}"
        )
    # The grid: the imagery's, else the finest raster's (on the ground: degrees, feet and
    # metres are not comparable numbers).
    order = sorted(info, key=lambda n: (not info[n][1], info[n][0][0].pixel_m))
    ref = info[order[0]][0][0]
    crs = ref.crs.to_string()
    res = float(ref.res[0])
    if ref.crs.to_epsg():
        crs = f"EPSG:{ref.crs.to_epsg()}"
    for name, (members, _) in info.items():
        m = members[0]
        if m.crs.to_string() != ref.crs.to_string() or not math.isclose(
            m.res[0], res, rel_tol=1e-9
        ):
            if m.crs.to_string() == ref.crs.to_string():
                modalities[name]["res_m"] = float(m.res[0])
            draft.guesses.append(
                f"{name}: {m.crs.to_string()} at {m.res[0]:g} is resampled onto the grid "
                "(nearest for categorical bands, bilinear otherwise)"
            )
    unit = "degrees" if ref.crs.is_geographic else "CRS units"
    draft.guesses.append(f"grid: {crs}, {res:g} {unit} per pixel, from {ref.path.name}")
    if ref.crs.is_geographic:
        draft.checks.append(
            f"the grid is geographic ({crs}): distances are measured in a local metric CRS "
            "chosen per run (the `distance_crs` tag); set cv.block_size_m in metres"
        )

    # Points.
    vectors = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in VECTOR_EXT and not _hidden(p, folder) and p.name != "dataset.yaml"
    )
    if points is not None:
        pfile = Path(points).expanduser().resolve()
        if not pfile.is_file():
            raise MisoBenchError(f"{pfile}: no such point file (fix: give --points FILE)")
    else:
        usable: list[Path] = []
        for vec in vectors:
            try:
                table = _read_points(vec)
            except Exception:  # not a table: skip it, and say so
                draft.checks.append(f"{vec.name}: could not be read as points; skipped")
                continue
            if hasattr(table, "geometry") or _xy_columns(table) is not None:
                usable.append(vec)  # tables without coordinates (code lists...) are not points
        if not usable:
            raise MisoBenchError(
                f"{folder}: no point file (.gpkg, .geojson, .shp, .csv, .parquet) found (fix: "
                "add the field points, or give --points FILE)"
            )
        if len(usable) > 1:
            raise MisoBenchError(
                f"{folder}: several point files ({', '.join(u.name for u in usable)}) (fix: "
                "choose one with --points FILE)"
            )
        pfile = usable[0]
    try:
        frame = _read_points(pfile)
    except Exception as exc:  # any reader error of the user's file: one line, no traceback
        raise MisoBenchError(
            f"{pfile}: cannot read it as points or polygons: {exc} (fix: export it as "
            "GeoPackage or CSV with x/y columns)".replace("\n", " ")
        ) from exc
    pedons: dict[str, Any]
    if hasattr(frame, "geometry") and len(frame) and frame.geom_type.iloc[0] != "Point":
        kinds = sorted(set(frame.geom_type.dropna()))
        if not set(kinds) <= {"Polygon", "MultiPolygon"}:
            raise MisoBenchError(f"{pfile}: geometries {kinds}: need points or polygons")
        if frame.crs is None:
            raise MisoBenchError(
                f"{pfile}: the polygons have no CRS (fix: set it, e.g. in QGIS or with "
                "ogr2ogr -a_srs EPSG:xxxx)"
            )
        x0, y0 = _grid_origin(ref, res)
        derived = polygons_to_points(frame, crs, res, x0, y0, max_per_polygon)
        out_points = target.parent / f"{pfile.stem}_points.gpkg"
        target.parent.mkdir(parents=True, exist_ok=True)
        derived.to_file(out_points, driver="GPKG")
        draft.written.append(out_points)
        draft.guesses.append(
            f"{pfile.name}: {len(frame)} polygons became {len(derived)} points (pixel centres "
            f"inside each polygon, at most {max_per_polygon} per polygon) in {out_points.name}"
        )
        draft.checks.append(
            "points from one polygon are near-duplicates: use spatial CV (the default) so a "
            "polygon's points do not sit on both sides of a fold"
        )
        frame = derived
        pedons = {"file": _rel(out_points, folder), "id_column": "id"}
        skip = {"id", "polygon_id"}
    else:
        id_col = _id_column(frame)
        if id_col is None:
            raise MisoBenchError(
                f"{pfile}: no column with a unique value per point (fix: add an `id` column)"
            )
        pedons = {"file": _rel(pfile, folder), "id_column": id_col}
        skip = {id_col}
        if not hasattr(frame, "geometry"):
            xy = _xy_columns(frame)
            if xy is None:
                raise MisoBenchError(
                    f"{pfile}: no geometry and no x/y columns (fix: name them x and y, or "
                    "export as GeoPackage)"
                )
            pedons.update(x_column=xy[0], y_column=xy[1])
            skip |= set(xy)
            if xy[0].lower() in ("lon", "longitude"):
                pedons["crs"] = "EPSG:4326"
            draft.checks.append(
                f"{pfile.name}: coordinates from columns {xy[0]}/{xy[1]} in "
                f"{pedons.get('crs', crs)}: check the CRS (`pedons.crs`)"
            )
        skip |= {c for c in frame.columns if str(c).lower() in ("x", "y")}
    labels = _label_columns(frame, skip)
    if not labels:
        raise MisoBenchError(
            f"{pfile}: no label column found (text columns with 2-{MAX_CLASSES} classes, or "
            "0/1 columns) (fix: add one, or write the manifest's `labels` by hand)"
        )
    named = {(f"{k}_label" if k in RESERVED_LABEL_NAMES else k): k for k in labels}
    pedons["labels"] = {n: {"column": k, "classes": labels[k]} for n, k in named.items()}
    for n, k in named.items():
        classes = labels[k]
        shown = ", ".join(map(str, classes[:8])) + (" ..." if len(classes) > 8 else "")
        draft.guesses.append(f"label {n}: {len(classes)} classes ({shown})")
        if len(classes) == 2:
            draft.checks.append(
                f"label {n}: binary, scored on its second class {classes[1]!r} (F1, "
                f"p/{classes[1]}): swap the two classes if {classes[0]!r} is the one to score"
            )
    draft.checks.append(
        "labels: remove columns that are not targets, and classes you do not want predicted"
    )
    root = _rel(folder, target.parent)
    manifest: dict[str, Any] = {
        "name": re.sub(r"[^0-9A-Za-z_-]+", "-", folder.name).strip("-") or "my-dataset",
        "description": f"drafted by miso-bench data init from {folder}",
        "crs": crs,
        "res_m": res,
    }
    if root != ".":
        manifest["root"] = root
    grid_modality = order[0]
    manifest["modalities"] = dict(
        sorted(modalities.items(), key=lambda kv: (kv[0] != "sentinel2", kv[0] != grid_modality))
    )
    for entry in manifest["modalities"].values():
        if entry["nodata"] is None:
            del entry["nodata"]
            draft.checks.append(
                "a modality declares no no-data value: pixels outside the data will be read "
                "as values (set `nodata`)"
            )
    manifest["pedons"] = pedons
    draft.manifest = manifest
    text = yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True)  # NaN as .nan
    header = (
        f"# Drafted by `miso-bench data init` on {datetime.date.today()}: every value is a\n"
        "# guess from the files. Check it, then run `miso-bench data check` on this file.\n"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(header + text)
    draft.written.insert(0, target)
    return draft


def _hidden(path: Path, folder: Path) -> bool:
    """Under a dot-folder (or a dot-file) inside ``folder``; the folder's own path may hold
    dot-folders (``./.miso-bench/...``)."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _xy_columns(frame: Any) -> tuple[str, str] | None:
    xs = [c for c in frame.columns if str(c).lower() in ("x", "lon", "longitude", "easting")]
    ys = [c for c in frame.columns if str(c).lower() in ("y", "lat", "latitude", "northing")]
    return (str(xs[0]), str(ys[0])) if xs and ys else None


def _grid_origin(ref: _Raster, res: float) -> tuple[float, float]:
    with rasterio.open(ref.path) as src:
        return float(src.transform.c) % res, float(src.transform.f) % res


def _id_column(frame: Any) -> str | None:
    lower = {str(c).lower(): c for c in frame.columns}
    candidates: Sequence[Any] = [lower[n] for n in ID_NAMES if n in lower] + list(frame.columns)
    for col in candidates:
        if col == "geometry":
            continue
        values = frame[col]
        if values.notna().all() and values.is_unique and values.dtype.kind in "iuOUS":
            return str(col)
    return None


def _rel(path: Path, start: Path) -> str:
    import os

    try:
        rel = os.path.relpath(path, start)
    except ValueError:  # another drive
        return str(path)
    return str(path) if rel.startswith("..") else rel  # inside: relative; outside: absolute
