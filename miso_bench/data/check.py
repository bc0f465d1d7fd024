"""Validate a dataset against its manifest and report every problem, one line each.

Each :class:`Problem` names the file, the field and the fix. ``miso-bench data check`` prints
them and exits with code 2 when there is any error. Facts of the data that runs handle by
themselves (some pedons outside every raster, which runs drop and count; pedons on no-data,
which trees read as missing values and MISO masks) are *notes*: printed, not failing.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import CRS as PROJ_CRS
from pyproj import Transformer

from ..errors import DatasetError, ManifestError, MisoBenchWarning
from .features import extract_point_features
from .manifest import (
    DatasetManifest,
    has_gdal_mask,
    load_manifest,
    looks_like_aspect,
    nodata_in_dtype,
    same_crs,
)
from .pedons import PedonDataset, read_truth
from .regions import OUTSIDE, RegionLayer

__all__ = ["Problem", "check_dataset"]


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset."""

    file: str
    field: str
    problem: str
    fix: str
    severity: str = "error"

    def __str__(self) -> str:
        note = "note: " if self.severity == "note" else ""
        return f"{note}{self.file}: {self.field}: {self.problem} (fix: {self.fix})"

    @property
    def is_error(self) -> bool:
        """An error (``data check`` fails), not a note."""
        return self.severity == "error"

    @classmethod
    def from_error(cls, exc: DatasetError | ManifestError) -> Problem:
        """A problem from a structured error."""
        return cls(exc.file, exc.field, exc.problem, exc.fix)


def _examples(values: Sequence[Any], k: int = 5) -> str:
    shown = ", ".join(str(v) for v in list(values)[:k])
    return shown + (", ..." if len(values) > k else "")


def _offset(value: float, res: float) -> float:
    """Distance of a coordinate from the nearest multiple of ``res`` (grid alignment)."""
    r = value % res
    return min(r, res - r)


def _read_all(src: Any) -> int:
    """Decode every block of every band (raises on corrupt data); the number of +-inf
    values (float files)."""
    n_inf = 0
    floating = np.issubdtype(np.dtype(src.dtypes[0]), np.floating)
    for _, window in src.block_windows(1):
        data = src.read(window=window)
        if floating:
            n_inf += int(np.isinf(data).sum())
    return n_inf


def _note_packing_and_nodata(src: Any, spec: Any, path: Path, fld: str, out: list[Problem]) -> None:
    """Notes on how values are read: scale/offset tags unpacked, and a file with no no-data
    value at all (fill values such as 0 then count as measurements)."""
    scales, offsets = list(src.scales), list(src.offsets)
    if any(k != 1.0 for k in scales) or any(o != 0.0 for o in offsets):
        out.append(
            Problem(
                str(path),
                "(file) scale/offset",
                f"values are unpacked as stored * scale + offset (scales {scales}, offsets "
                f"{offsets})",
                "nothing, if the tags are right; otherwise reset them "
                "(gdal_edit.py -scale 1 -offset 0)",
                "note",
            )
        )
    if spec.nodata is None and src.nodata is None and not has_gdal_mask(src):
        out.append(
            Problem(
                str(path),
                f"{fld}.nodata",
                "no no-data value (manifest, file tag or mask band): every pixel is read as "
                "a measurement, fill values (e.g. 0 of an Earth Engine export) included",
                f"set {fld}.nodata to the fill value, or tag the files (gdal_edit.py -a_nodata)",
                "note",
            )
        )


def _check_rasters(m: DatasetManifest, out: list[Problem]) -> dict[str, list[Path]]:
    """Per-file checks; returns the usable files of each modality."""
    usable: dict[str, list[Path]] = {}
    reference: tuple[float, float] | None = None
    for name, spec in m.modalities.items():
        fld = f"modalities.{name}"
        folder = m.resolve(spec.folder)
        usable[name] = []
        if not folder.is_dir():
            out.append(
                Problem(
                    str(folder),
                    f"{fld}.folder",
                    "folder not found",
                    f"create it or correct `folder` in {m.path.name}",
                )
            )
            continue
        undeclared = [
            b
            for b in spec.bands
            if looks_like_aspect(b) and b not in spec.circular and b not in spec.categorical
        ]
        if undeclared:
            out.append(
                Problem(
                    str(m.path),
                    f"{fld}.circular",
                    f"{undeclared} look like aspect (an angle): window means and warping "
                    "treat them as plain numbers (350 and 10 average to 180)",
                    f"list them under {fld}.circular, if they are angles in degrees",
                    "note",
                )
            )
        files = m.modality_files(name)
        if not files:
            out.append(
                Problem(
                    str(folder),
                    f"{fld}.glob",
                    f"no file matches `{spec.glob}`",
                    "correct `glob` or add the rasters",
                )
            )
            continue
        for path in files:
            try:
                src = rasterio.open(path)
            except rasterio.errors.RasterioError as exc:
                out.append(
                    Problem(
                        str(path),
                        "(file)",
                        f"unreadable raster: {exc}",
                        "re-export it as GeoTIFF or remove it",
                    )
                )
                continue
            with src:
                good = True
                try:
                    n_inf = _read_all(src)
                except rasterio.errors.RasterioError as exc:
                    out.append(
                        Problem(
                            str(path),
                            "(file)",
                            f"corrupt raster data: {exc}",
                            "re-export it as GeoTIFF or remove it",
                        )
                    )
                    good = False
                    n_inf = 0
                if n_inf:
                    out.append(
                        Problem(
                            str(path),
                            "(file)",
                            f"{n_inf:,} values are +-inf (e.g. a log of 0): read as missing",
                            "nothing, or recompute the band without infinities",
                            "note",
                        )
                    )
                _note_packing_and_nodata(src, spec, path, fld, out)
                if src.count != len(spec.bands):
                    out.append(
                        Problem(
                            str(path),
                            f"{fld}.bands",
                            f"file has {src.count} bands, manifest lists {len(spec.bands)}",
                            "list one name per band in file order",
                        )
                    )
                    good = False
                if src.crs is None:
                    out.append(
                        Problem(
                            str(path),
                            "crs",
                            "file has no CRS",
                            f"assign {m.crs} (gdal_edit.py -a_srs {m.crs})",
                        )
                    )
                    good = False
                in_crs = src.crs is not None and same_crs(src.crs, m.crs)
                if src.crs is not None and not in_crs:
                    # Supported: chips warp the file onto the grid, trees sample it at the
                    # points. Said, since warping resamples the file's values.
                    out.append(
                        Problem(
                            str(path),
                            "crs",
                            f"file CRS {src.crs.to_string()} differs from the dataset CRS "
                            f"{m.crs}: chips warp it onto the grid "
                            f"({'nearest' if spec.categorical else 'bilinear'}), trees sample "
                            "it at the points",
                            f"nothing, or reproject it to {m.crs} (gdalwarp -t_srs {m.crs}) to "
                            "choose the resampling yourself",
                            "note",
                        )
                    )
                rx, ry = abs(src.transform.a), abs(src.transform.e)
                if in_crs and not (np.isclose(rx, spec.res_m) and np.isclose(ry, spec.res_m)):
                    out.append(
                        Problem(
                            str(path),
                            f"{fld}.res_m",
                            f"file resolution {rx:g} x {ry:g} differs from {spec.res_m:g}",
                            f"resample to {spec.res_m:g} or set {fld}.res_m",
                        )
                    )
                if src.dtypes[0] != spec.dtype:
                    out.append(
                        Problem(
                            str(path),
                            f"{fld}.dtype",
                            f"file dtype {src.dtypes[0]} differs from {spec.dtype}",
                            f"set {fld}.dtype to {src.dtypes[0]}",
                        )
                    )
                try:
                    declared = nodata_in_dtype(spec.nodata, src.dtypes[0], path, f"{fld}.nodata")
                    stored = nodata_in_dtype(src.nodata, src.dtypes[0], path, "(file) no-data")
                except DatasetError as exc:
                    out.append(Problem.from_error(exc))
                    declared = stored = None
                    good = False
                if (
                    declared is not None
                    and stored is not None
                    and not ((np.isnan(declared) and np.isnan(stored)) or declared == stored)
                ):
                    out.append(
                        Problem(
                            str(path),
                            f"{fld}.nodata",
                            f"file no-data {src.nodata:g} differs from {spec.nodata:g}",
                            f"set {fld}.nodata to {src.nodata:g} or rewrite the file",
                        )
                    )
                if in_crs and np.isclose(rx, m.res_m):
                    origin = (_offset(src.transform.c, rx), _offset(src.transform.f, ry))
                    if reference is None:
                        reference = origin
                    elif not np.allclose(origin, reference, atol=1e-3 * rx):
                        out.append(
                            Problem(
                                str(path),
                                "(grid)",
                                "pixel edges are not aligned with the other files' "
                                f"grid (offset {origin[0]:g}, {origin[1]:g} m vs "
                                f"{reference[0]:g}, {reference[1]:g} m)",
                                "resample onto the common grid (gdalwarp -tap)",
                            )
                        )
                if good:
                    usable[name].append(path)
    return usable


def _check_pedons(m: DatasetManifest, usable: dict[str, list[Path]], out: list[Problem]) -> None:
    try:
        pedons = PedonDataset(m)
    except DatasetError as exc:
        out.append(Problem.from_error(exc))
        return
    file = str(pedons.path)
    table = pedons.table
    ids = table["id"]
    id_field = f"pedons.id_column ({m.pedons.id_column})"
    if ids.isna().any():
        out.append(
            Problem(
                file, id_field, f"{int(ids.isna().sum())} pedons have no id", "give every row an id"
            )
        )
    dupes = ids[ids.duplicated(keep=False) & ids.notna()]
    if len(dupes):
        examples = _examples(sorted(dupes.unique(), key=str))
        out.append(
            Problem(
                file,
                id_field,
                f"{dupes.nunique()} duplicate ids ({examples})",
                "make ids unique (one row per site)",
            )
        )
    bad_xy = (~np.isfinite(table["x"]) | ~np.isfinite(table["y"])).to_numpy()
    if bad_xy.any():
        out.append(
            Problem(
                file,
                "geometry",
                f"{int(bad_xy.sum())} pedons have no usable coordinates "
                f"(ids {_examples(ids[bad_xy].tolist())})",
                "add numeric coordinates (no text, decimal point) or drop the rows",
            )
        )
    for label in m.pedons.labels:
        _, report = pedons.labelled(label)
        if report.n_unknown:
            spec = m.pedons.labels[label]
            hints = []
            for value in list(report.unknown_values)[:5]:
                close = difflib.get_close_matches(str(value), [str(c) for c in spec.classes], n=1)
                if close:
                    hints.append(f"{value!r} -> {close[0]!r}?")
            hint = f" ({'; '.join(hints)})" if hints else ""
            out.append(
                Problem(
                    file,
                    f"pedons.labels.{label}.classes",
                    f"{report.n_unknown} pedons have values not in the class list: "
                    f"{report.unknown_values}{hint}",
                    f"add them to the classes of `{spec.column}` or recode them",
                )
            )
    ok = ~bad_xy
    x, y = table["x"].to_numpy()[ok], table["y"].to_numpy()[ok]
    ok_ids = ids.to_numpy()[ok]
    projected = PROJ_CRS.from_user_input(m.crs).is_projected
    if (
        projected
        and m.pedons.crs is None
        and x.size
        and np.mean((np.abs(x) <= 180) & (np.abs(y) <= 90)) > 0.9
    ):
        out.append(
            Problem(
                file,
                "pedons.crs",
                f"coordinates look like longitude/latitude but are read in {m.crs}",
                "add `crs: EPSG:4326` under `pedons:` in the manifest",
            )
        )
        return
    outside_all = np.ones(x.size, dtype=bool)
    on_by_modality: dict[str, np.ndarray] = {}
    for name, files in usable.items():
        if not files:
            continue
        on_any = np.zeros(x.size, dtype=bool)
        for path in files:
            with rasterio.open(path) as src:
                b, file_crs = src.bounds, src.crs
            fx, fy = x, y
            if not same_crs(file_crs, m.crs):  # the points where the file's bounds are
                fx, fy = Transformer.from_crs(m.crs, file_crs, always_xy=True).transform(x, y)
                fx, fy = np.asarray(fx), np.asarray(fy)
            on_any |= (fx >= b.left) & (fx < b.right) & (fy > b.bottom) & (fy <= b.top)
        on_by_modality[name] = on_any
        outside_all &= ~on_any
        try:
            values = extract_point_features(
                m, x[on_any], y[on_any], modalities=[name], files={name: files}
            )
        except DatasetError as exc:
            out.append(Problem.from_error(exc))
            continue
        all_nodata = values.isna().all(axis=1).to_numpy()
        if all_nodata.any():
            bad = ok_ids[on_any][all_nodata]
            out.append(
                Problem(
                    file,
                    f"modalities.{name}",
                    f"{all_nodata.sum()} pedons lie on no-data pixels of `{name}` "
                    f"(ids {_examples(bad.tolist())}; trees read missing values there, MISO "
                    "masks them)",
                    "fill the gaps or exclude these pedons",
                    "note",
                )
            )
        partial = values[~all_nodata].isna()
        for band in partial.columns[partial.any(axis=0).to_numpy()]:
            n = int(partial[band].sum())
            out.append(
                Problem(
                    file,
                    f"modalities.{name}.bands ({band})",
                    f"{n} pedons lie on no-data of band `{band}` only",
                    "fill the band or leave it out of the model's features",
                    "note",
                )
            )
    if any(usable.values()):
        for name, on_any in on_by_modality.items():
            missing = ~on_any & ~outside_all
            if missing.any():
                out.append(
                    Problem(
                        file,
                        f"modalities.{name}",
                        f"{missing.sum()} pedons lie outside the `{name}` rasters "
                        f"but on others (ids {_examples(ok_ids[missing].tolist())})",
                        f"add the missing `{name}` tiles",
                    )
                )
        if outside_all.any():
            every = bool(outside_all.all())
            out.append(
                Problem(
                    file,
                    "geometry",
                    f"{outside_all.sum()} pedons lie outside all rasters "
                    f"(ids {_examples(ok_ids[outside_all].tolist())})"
                    + ("" if every else "; runs leave them out and count them"),
                    "extend the rasters or drop these pedons"
                    if not every
                    else "check the pedons' CRS and that the rasters cover them",
                    "error" if every else "note",
                )
            )


def _check_regions(m: DatasetManifest, out: list[Problem]) -> None:
    """Each region layer reads, and the pedons that lie in none of its polygons (reported as
    region ``outside`` by runs) are listed: a note, or an error when that is every pedon (the
    layer is elsewhere: its CRS or extent). A layer without a CRS is a note."""
    import warnings

    try:
        table = PedonDataset(m).table if m.regions else None
    except DatasetError:
        table = None  # _check_pedons reports it
    for spec in m.regions.values():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MisoBenchWarning)
            try:
                layer = RegionLayer(m, spec)
            except DatasetError as exc:
                out.append(Problem.from_error(exc))
                continue
        field = f"regions.{spec.name}"
        if any(
            isinstance(w.message, MisoBenchWarning) and w.message.key == "region_layer_without_crs"
            for w in caught
        ):
            out.append(
                Problem(
                    layer.file,
                    f"{field}.file",
                    f"the layer has no CRS, so runs read it in the dataset's ({m.crs})",
                    "if it is in another, assign that one (e.g. ogr2ogr -a_srs EPSG:4326 "
                    "out.gpkg in.shp) or restore its .prj",
                    "note",
                )
            )
        if layer.n_unnamed:
            out.append(
                Problem(
                    layer.file,
                    f"{field}.field",
                    f"{layer.n_unnamed} polygons have no `{spec.field}`: pedons in them are "
                    f"reported as '{OUTSIDE}'",
                    f"give every polygon a `{spec.field}`",
                    "note",
                )
            )
        if table is None:
            continue
        xy = table[["x", "y"]].to_numpy(np.float64)
        usable = np.isfinite(xy).all(axis=1)
        outside = layer.assign(xy[usable, 0], xy[usable, 1]) == OUTSIDE
        if outside.any():
            ids = table["id"].to_numpy()[usable][outside]
            every = bool(outside.all())
            out.append(
                Problem(
                    layer.file,
                    field,
                    f"{int(outside.sum()):,} of {int(usable.sum()):,} pedons lie in no polygon "
                    f"(ids {_examples(ids.tolist())}); runs report them as region "
                    f"'{OUTSIDE}', never the worst region nor a region-CV fold",
                    "check the layer's CRS and extent"
                    if every
                    else "extend the layer if these pedons belong to a region",
                    "error" if every else "note",
                )
            )


def check_dataset(path: str | Path) -> list[Problem]:
    """Every problem found in the dataset at ``path`` (a folder or its ``dataset.yaml``)."""
    out: list[Problem] = []
    try:
        m = load_manifest(path)
    except ManifestError as exc:
        return [Problem.from_error(exc)]
    usable = _check_rasters(m, out)
    _check_pedons(m, usable, out)
    _check_regions(m, out)
    if m.truth_file:
        tpath = m.resolve(m.truth_file)
        try:
            read_truth(m)
        except DatasetError as exc:
            out.append(Problem.from_error(exc))
        except (OSError, ValueError) as exc:
            out.append(
                Problem(
                    str(tpath),
                    "truth.file",
                    f"unreadable: {exc}",
                    "regenerate the dataset or remove `truth` from the manifest",
                )
            )
    return out
