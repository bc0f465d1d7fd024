"""Pedon (field observation) points as a torchgeo point dataset, with task-aware filtering."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import torch
from torchgeo.datasets import GeoDataset

from ..errors import DatasetError
from .manifest import DatasetManifest, LabelSpec, normalise_label

__all__ = [
    "LabelFilterReport",
    "PedonDataset",
    "pedon_xy",
    "read_pedon_table",
    "read_truth",
    "truth_targets",
]

_VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb"}


def read_pedon_table(manifest: DatasetManifest) -> gpd.GeoDataFrame:
    """Read the pedon file of a manifest as a GeoDataFrame in the manifest's CRS.

    Supports GeoPackage, GeoJSON, Shapefile and FlatGeobuf (geometry column) as well as CSV and
    Parquet (``x_column``/``y_column`` in ``pedons.crs`` or the dataset CRS; GeoParquet with a
    geometry column works too).

    Raises:
        DatasetError: the file is missing or unreadable, or a named column is absent.
    """
    spec = manifest.pedons
    path = manifest.resolve(spec.file)
    if not path.is_file():
        raise DatasetError(
            path, "pedons.file", "pedon file not found", f"correct pedons.file in {manifest.path}"
        )
    suffix = path.suffix.lower()
    if suffix not in _VECTOR_SUFFIXES | {".parquet", ".csv", ".txt"}:
        raise DatasetError(
            path,
            "pedons.file",
            f"unsupported pedon file type `{suffix}`",
            "use .gpkg, .geojson, .csv or .parquet",
        )
    try:
        if suffix in _VECTOR_SUFFIXES:
            gdf = gpd.read_file(path, layer=spec.layer) if spec.layer else gpd.read_file(path)
        elif suffix == ".parquet":
            try:
                gdf = gpd.read_parquet(path)
            except (ValueError, KeyError):
                gdf = pd.read_parquet(path)
        else:
            # Ids as written: "007" is not the number 7 (split files list ids as text).
            gdf = pd.read_csv(path, dtype={spec.id_column: str})
    except Exception as exc:  # the vector/tabular readers raise many types for broken files
        raise DatasetError(
            path,
            "pedons.file",
            f"cannot read pedon file: {exc}",
            "re-export it as GeoPackage or CSV",
        ) from exc
    columns = [c for c in gdf.columns if c != "geometry"]
    if spec.x_column and spec.y_column:
        for col, key in ((spec.x_column, "x_column"), (spec.y_column, "y_column")):
            if col not in gdf.columns:
                raise DatasetError(
                    path, f"pedons.{key}", f"column `{col}` not found", f"use one of {columns[:20]}"
                )
        frame = pd.DataFrame(gdf.drop(columns="geometry", errors="ignore"))
        # Coordinates written as text (decimal commas, typos) become NaN and are reported
        # by `data check` as pedons without coordinates.
        xs = pd.to_numeric(frame[spec.x_column], errors="coerce").to_numpy(dtype=np.float64)
        ys = pd.to_numeric(frame[spec.y_column], errors="coerce").to_numpy(dtype=np.float64)
        gdf = gpd.GeoDataFrame(
            frame, geometry=gpd.points_from_xy(xs, ys), crs=spec.crs or manifest.crs
        )
    elif not isinstance(gdf, gpd.GeoDataFrame) or gdf.geometry is None:
        raise DatasetError(
            path,
            "pedons.x_column",
            "the pedon file has no geometry",
            f"set pedons.x_column and pedons.y_column in {manifest.path}",
        )
    if gdf.crs is None:
        gdf = gdf.set_crs(spec.crs or manifest.crs)
    elif spec.crs is not None and not gdf.crs.equals(spec.crs):
        # The file stores its own CRS; a different one in the manifest is a contradiction,
        # not an override (which of the two the coordinates are in is for the user to say).
        raise DatasetError(
            path,
            "pedons.crs",
            f"the manifest says {spec.crs}, the file stores its points in {gdf.crs.to_string()}",
            "remove `crs` under `pedons:` (the file's own CRS is used), or rewrite the file "
            "with the right CRS",
        )
    if spec.id_column not in gdf.columns:
        raise DatasetError(
            path,
            "pedons.id_column",
            f"column `{spec.id_column}` not found",
            f"use one of {columns[:20]}",
        )
    for lab in spec.labels.values():
        if lab.column not in gdf.columns:
            raise DatasetError(
                path,
                f"pedons.labels.{lab.name}.column",
                f"column `{lab.column}` not found",
                f"use one of {columns[:20]}",
            )
    return gdf.to_crs(manifest.crs)


def pedon_xy(gdf: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every row (NaN for missing or empty geometry; centroids for polygons)."""
    geoms = np.asarray(gdf.geometry.to_numpy(), dtype=object)
    missing = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    pts = np.array(geoms, dtype=object)
    pts[missing] = shapely.Point(0, 0)  # placeholder, reported as NaN below
    not_point = ~missing & (shapely.get_type_id(pts) != 0)
    if not_point.any():
        pts[not_point] = shapely.centroid(pts[not_point])
    x = np.where(missing, np.nan, shapely.get_x(pts))
    y = np.where(missing, np.nan, shapely.get_y(pts))
    return x.astype(np.float64), y.astype(np.float64)


@dataclass(frozen=True)
class LabelFilterReport:
    """What task-aware filtering kept and dropped.

    Attributes:
        label: label name.
        n_total: pedons in the file.
        n_missing: pedons without a value.
        n_unknown: pedons whose value is not in the class list.
        unknown_values: the distinct unknown values with their counts.
        n_kept: pedons with a valid label and coordinates.
        n_unlocated: pedons with a valid label but no usable coordinates.
        class_counts: kept pedons per class, in class order.
    """

    label: str
    n_total: int
    n_missing: int
    n_unknown: int
    unknown_values: dict[Any, int]
    n_kept: int
    class_counts: dict[Any, int]
    n_unlocated: int = 0

    def summary(self) -> str:
        """One line for logs and the CLI."""
        text = (
            f"{self.label}: kept {self.n_kept:,} of {self.n_total:,} pedons "
            f"({self.n_missing:,} missing"
        )
        if self.n_unknown:
            text += f", {self.n_unknown:,} with unknown values {self.unknown_values}"
        if self.n_unlocated:
            text += f", {self.n_unlocated:,} without coordinates"
        return text + ")"


class PedonDataset(GeoDataset):
    """Pedon sites as a torchgeo point dataset (the pattern of :class:`torchgeo.datasets.GBIF`).

    Indexing with a spatial slice returns the pedons inside it; :attr:`table` holds every
    pedon with its id, coordinates (in the dataset CRS) and raw label columns, and
    :meth:`labelled` gives the pedons that carry a valid value for one label.

    Args:
        manifest: the dataset manifest.
        table: an already-read pedon table (defaults to reading the manifest's file).
    """

    def __init__(self, manifest: DatasetManifest, table: gpd.GeoDataFrame | None = None) -> None:
        super().__init__()
        self.manifest = manifest
        self.paths = str(manifest.resolve(manifest.pedons.file))
        raw = read_pedon_table(manifest) if table is None else table
        spec = manifest.pedons
        x, y = pedon_xy(raw)
        frame = pd.DataFrame({"id": raw[spec.id_column].to_numpy(), "x": x, "y": y})
        for lab in spec.labels.values():
            frame[lab.name] = [normalise_label(v) for v in raw[lab.column].tolist()]
        self.table = gpd.GeoDataFrame(
            frame, geometry=gpd.points_from_xy(frame["x"], frame["y"]), crs=manifest.crs
        )
        interval = pd.Interval(pd.Timestamp.min, pd.Timestamp.max, closed="both")
        located = np.flatnonzero(np.isfinite(x) & np.isfinite(y))  # spatial index: located only
        self.index = gpd.GeoDataFrame(
            {"row": located},
            index=pd.IntervalIndex([interval] * len(located), name="datetime"),
            geometry=gpd.points_from_xy(x[located], y[located]),
            crs=manifest.crs,
        )
        self._res = (manifest.res_m, manifest.res_m)

    def __len__(self) -> int:
        """Number of pedons."""
        return len(self.table)

    def __getitem__(self, index: Any) -> dict[str, Any]:
        """Pedons inside a ``[xmin:xmax, ymin:ymax]`` slice: ids, coordinates and row numbers.

        Raises:
            IndexError: no pedon lies inside the slice.
        """
        x, y, _ = self._disambiguate_slice(index)
        hits = self.index.cx[x.start : x.stop, y.start : y.stop]
        if hits.empty:
            raise IndexError(f"no pedon inside {index}")
        rows = hits["row"].to_numpy()
        sub = self.table.iloc[rows]
        return {
            "rows": torch.tensor(rows, dtype=torch.long),
            "ids": sub["id"].tolist(),
            "keypoints": torch.tensor(sub[["x", "y"]].to_numpy(), dtype=torch.float64),
            "bounds": self._slice_to_tensor(index),
        }

    def label_spec(self, label: str) -> LabelSpec:
        """The manifest's spec of a label; unknown names list the available ones."""
        labels = self.manifest.pedons.labels
        if label not in labels:
            raise DatasetError(
                self.manifest.path,
                "pedons.labels",
                f"no label `{label}`",
                f"use one of {sorted(labels)}",
            )
        return labels[label]

    def labelled(self, label: str) -> tuple[gpd.GeoDataFrame, LabelFilterReport]:
        """Pedons with a valid value for ``label``, with a class-index column ``target``.

        Missing values and values outside the manifest's class list are dropped and counted.
        """
        spec = self.label_spec(label)
        classes = [normalise_label(c) for c in spec.classes]
        lookup = {c: i for i, c in enumerate(classes)}
        values = self.table[label]
        missing = values.isna().to_numpy()
        known = values.map(lambda v: v in lookup).to_numpy(dtype=bool)
        unknown = ~missing & ~known
        unknown_values = values[unknown].value_counts().to_dict()
        located = (np.isfinite(self.table["x"]) & np.isfinite(self.table["y"])).to_numpy()
        kept = self.table.loc[known & located].copy()
        # Dict lookups (not Series.map) so that True matches class 1 exactly as `in` did.
        kept["target"] = np.array([lookup[v] for v in kept[label]], dtype=np.int64)
        counts = np.bincount(kept["target"].to_numpy(), minlength=len(classes))
        report = LabelFilterReport(
            label=label,
            n_total=len(values),
            n_missing=int(missing.sum()),
            n_unknown=int(unknown.sum()),
            unknown_values={k: int(v) for k, v in unknown_values.items()},
            n_kept=len(kept),
            class_counts={c: int(n) for c, n in zip(spec.classes, counts, strict=True)},
            n_unlocated=int((known & ~located).sum()),
        )
        return kept, report

    @property
    def path(self) -> Path:
        """The pedon file."""
        return Path(str(self.paths))


def read_truth(manifest: DatasetManifest) -> pd.DataFrame | None:
    """The dense truth sample (synthetic data), with coordinates in columns ``x``/``y`` of the
    dataset CRS (files written before that naming hold ``x_3338``/``y_3338``); None when the
    manifest names no truth file.

    Raises:
        DatasetError: the file lacks coordinate columns.
    """
    if not manifest.truth_file:
        return None
    path = manifest.resolve(manifest.truth_file)
    truth = pd.read_parquet(path)
    if {"x", "y"} <= set(truth.columns):
        return truth
    if {"x_3338", "y_3338"} <= set(truth.columns):
        return truth.rename(columns={"x_3338": "x", "y_3338": "y"})
    raise DatasetError(
        path,
        "truth.file",
        "columns x and y missing",
        "write the coordinates (dataset CRS) as columns x and y, and one column per label",
    )


def truth_targets(
    truth: pd.DataFrame, label: str, classes: tuple[Any, ...]
) -> tuple[pd.DataFrame, np.ndarray]:
    """The truth points of ``label`` whose value is one of ``classes`` and their class
    indices; values and classes compared as :func:`normalise_label` reads them (text codes,
    padded text and 1.0 match the class 1), exactly as pedon labels are."""
    lookup = {normalise_label(c): i for i, c in enumerate(classes)}
    values = [normalise_label(v) for v in truth[label].tolist()]
    keep = np.array([v in lookup for v in values], dtype=bool)
    target = np.array([lookup[v] for v, k in zip(values, keep, strict=True) if k], dtype=np.int64)
    return truth[keep].reset_index(drop=True), target
