"""Validate a dataset against its manifest and report every problem, one line each.

Each :class:`Problem` names the file, the field and the fix. ``miso-bench data check`` prints
them and exits with code 2 when there is any.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from pyproj import CRS as PROJ_CRS

from ..errors import DatasetError, ManifestError
from .features import extract_point_features
from .manifest import DatasetManifest, load_manifest
from .pedons import PedonDataset
from .regions import RegionLayer

__all__ = ["Problem", "check_dataset"]


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset."""

    file: str
    field: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.problem} (fix: {self.fix})"


def _examples(values: Sequence[Any], k: int = 5) -> str:
    shown = ", ".join(str(v) for v in list(values)[:k])
    return shown + (", ..." if len(values) > k else "")


def _same_crs(a: Any, b: str) -> bool:
    try:
        return bool(PROJ_CRS.from_user_input(a) == PROJ_CRS.from_user_input(b))
    except Exception:  # an unparsable CRS is a mismatch, reported by the caller
        return False


def _check_rasters(m: DatasetManifest, out: list[Problem]) -> dict[str, list[tuple[Path, Any]]]:
    """Per-file checks; returns the readable files of each modality with their transforms."""
    readable: dict[str, list[tuple[Path, Any]]] = {}
    origins: dict[str, tuple[float, float, float]] = {}
    for name, spec in m.modalities.items():
        fld = f"modalities.{name}"
        folder = m.resolve(spec.folder)
        readable[name] = []
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
                good = src.count == len(spec.bands)
                if not good:
                    out.append(
                        Problem(
                            str(path),
                            f"{fld}.bands",
                            f"file has {src.count} bands, manifest lists {len(spec.bands)}",
                            "list one name per band in file order",
                        )
                    )
                if src.crs is None:
                    out.append(
                        Problem(
                            str(path),
                            "crs",
                            "file has no CRS",
                            f"assign {m.crs} (gdal_edit.py -a_srs {m.crs})",
                        )
                    )
                elif not _same_crs(src.crs, m.crs):
                    out.append(
                        Problem(
                            str(path),
                            "crs",
                            f"file CRS {src.crs.to_string()} differs from the dataset CRS {m.crs}",
                            f"reproject to {m.crs} (gdalwarp -t_srs {m.crs})",
                        )
                    )
                rx, ry = abs(src.transform.a), abs(src.transform.e)
                if not (np.isclose(rx, spec.res_m) and np.isclose(ry, spec.res_m)):
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
                if (
                    spec.nodata is not None
                    and src.nodata is not None
                    and not (
                        (np.isnan(spec.nodata) and np.isnan(src.nodata))
                        or spec.nodata == src.nodata
                    )
                ):
                    out.append(
                        Problem(
                            str(path),
                            f"{fld}.nodata",
                            f"file no-data {src.nodata} differs from {spec.nodata}",
                            f"set {fld}.nodata to {src.nodata} or rewrite the file",
                        )
                    )
                origin = (src.transform.c % rx, src.transform.f % ry, rx)
                if good:
                    readable[name].append((path, src.transform))
                if np.isclose(rx, m.res_m):
                    key = "grid"
                    if key in origins and not np.allclose(origins[key][:2], origin[:2]):
                        out.append(
                            Problem(
                                str(path),
                                "(grid)",
                                "pixel edges are not aligned with the other "
                                f"modalities' grid (offset {origin[0]:g}, "
                                f"{origin[1]:g} vs {origins[key][0]:g}, "
                                f"{origins[key][1]:g})",
                                "resample onto the common grid (gdalwarp -tap)",
                            )
                        )
                    origins.setdefault(key, origin)
    return readable


def _check_pedons(
    m: DatasetManifest, readable: dict[str, list[tuple[Path, Any]]], out: list[Problem]
) -> None:
    try:
        pedons = PedonDataset(m)
    except DatasetError as exc:
        out.append(Problem(str(m.resolve(m.pedons.file)), "pedons", str(exc), "see the message"))
        return
    file = str(pedons.path)
    table = pedons.table
    ids = table["id"]
    if ids.isna().any():
        out.append(
            Problem(
                file,
                f"pedons.id_column ({m.pedons.id_column})",
                f"{int(ids.isna().sum())} pedons have no id",
                "give every row an id",
            )
        )
    dupes = ids[ids.duplicated(keep=False) & ids.notna()]
    if len(dupes):
        out.append(
            Problem(
                file,
                f"pedons.id_column ({m.pedons.id_column})",
                f"{dupes.nunique()} duplicate ids ({_examples(sorted(dupes.unique(), key=str))})",
                "make ids unique (one row per site)",
            )
        )
    bad_xy = ~np.isfinite(table["x"]) | ~np.isfinite(table["y"])
    if bad_xy.any():
        out.append(
            Problem(
                file,
                "geometry",
                f"{int(bad_xy.sum())} pedons have no coordinates "
                f"(ids {_examples(ids[bad_xy].tolist())})",
                "drop them or add coordinates",
            )
        )
    for label in m.pedons.labels:
        _, report = pedons.labelled(label)
        if report.n_unknown:
            spec = m.pedons.labels[label]
            out.append(
                Problem(
                    file,
                    f"pedons.labels.{label}.classes",
                    f"{report.n_unknown} pedons have values not in the class list: "
                    f"{report.unknown_values}",
                    f"add them to the classes of `{spec.column}` or recode them",
                )
            )
    ok = ~bad_xy.to_numpy()
    x, y = table["x"].to_numpy()[ok], table["y"].to_numpy()[ok]
    ok_ids = ids.to_numpy()[ok]
    outside_all = np.ones(x.size, dtype=bool)
    for name, files in readable.items():
        if not files:
            continue
        on_any = np.zeros(x.size, dtype=bool)
        for path, _ in files:
            with rasterio.open(path) as src:
                b = src.bounds
                if src.crs is not None and not _same_crs(src.crs, m.crs):
                    continue  # already reported as a CRS problem
                on_any |= (x >= b.left) & (x < b.right) & (y > b.bottom) & (y <= b.top)
        outside_all &= ~on_any
        values = extract_point_features(
            m, x[on_any], y[on_any], modalities=[name], files={name: [p for p, _ in files]}
        )
        nod = values.isna().all(axis=1).to_numpy()
        if nod.any():
            bad = ok_ids[on_any][nod]
            out.append(
                Problem(
                    file,
                    f"modalities.{name}",
                    f"{nod.sum()} pedons lie on no-data pixels of `{name}` "
                    f"(ids {_examples(bad.tolist())})",
                    "fill the gaps or exclude these pedons",
                )
            )
    if any(readable.values()) and outside_all.any():
        bad = ok_ids[outside_all]
        out.append(
            Problem(
                file,
                "geometry",
                f"{outside_all.sum()} pedons lie outside all rasters "
                f"(ids {_examples(bad.tolist())})",
                "extend the rasters or drop these pedons",
            )
        )


def check_dataset(path: str | Path) -> list[Problem]:
    """Every problem found in the dataset at ``path`` (a folder or its ``dataset.yaml``)."""
    out: list[Problem] = []
    try:
        m = load_manifest(path)
    except ManifestError as exc:
        return [Problem(exc.file, exc.field, exc.problem, exc.fix)]
    readable = _check_rasters(m, out)
    _check_pedons(m, readable, out)
    for name, spec in m.regions.items():
        try:
            RegionLayer(m, spec)
        except DatasetError as exc:
            out.append(
                Problem(str(m.resolve(spec.file)), f"regions.{name}", str(exc), "see the message")
            )
    if m.truth_file:
        tpath = m.resolve(m.truth_file)
        try:
            truth = pd.read_parquet(tpath)
            missing = [c for c in ("x_3338", "y_3338") if c not in truth.columns]
            if missing:
                out.append(
                    Problem(
                        str(tpath),
                        "truth.file",
                        f"columns {missing} missing",
                        "write x_3338, y_3338 and one column per label",
                    )
                )
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
