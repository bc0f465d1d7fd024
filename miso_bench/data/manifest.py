"""The dataset manifest (``dataset.yaml``): what is on disk and how to read it.

A manifest describes one dataset: its CRS and resolution, each raster modality's folder, file
glob, band names, no-data value and dtype, the pedon file with its label columns and class
lists, and the region layers used for reporting. Paths are relative to ``root`` (itself
relative to the manifest's folder, default ``.``), so a manifest kept in the project can point
at data stored elsewhere.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..errors import DatasetError, ManifestError

__all__ = [
    "MANIFEST_NAME",
    "MISSING_LABELS",
    "RESERVED_LABEL_NAMES",
    "DatasetManifest",
    "LabelSpec",
    "ModalitySpec",
    "PedonSpec",
    "RegionSpec",
    "find_manifest",
    "load_manifest",
    "nodata_in_dtype",
    "nodata_problem",
    "normalise_label",
    "open_raster",
    "raster_nodata",
    "read_masked",
    "require_crs",
    "same_crs",
]

#: File name of a dataset manifest inside a dataset folder.
MANIFEST_NAME = "dataset.yaml"
_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True)
class ModalitySpec:
    """One raster modality (a folder of GeoTIFFs with the same bands).

    Attributes:
        name: modality key (``sentinel2``, ``terrain``, ``climate`` or any other).
        folder: folder of the files, relative to the dataset root.
        glob: file-name pattern inside ``folder``.
        bands: band names, in file order.
        nodata: value marking missing pixels (all bands), or None when the files have none.
        dtype: on-disk data type.
        res_m: native resolution in CRS units (defaults to the dataset's).
        categorical: names of bands holding class codes (nearest resampling, no scaling).
        circular: names of bands holding angles in degrees (aspect): window means average
            them as directions (350 and 10 give 0, not 180), and warping reads them nearest.
        scale: factor from the stored values to the units models expect; for Sentinel-2,
            L2A digital numbers (reflectance x 10,000): ``scale: 10000`` for reflectance
            stored as 0-1. Only MISO's image encoder applies it (trees are scale-free).
    """

    name: str
    folder: str
    glob: str
    bands: tuple[str, ...]
    nodata: float | None
    dtype: str
    res_m: float
    categorical: tuple[str, ...] = ()
    scale: float = 1.0
    circular: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSpec:
    """A label column of the pedon file.

    Attributes:
        name: task-facing label name (``pf1m``, ``tax_order``).
        column: column in the pedon file.
        classes: allowed values, in class-index order.
    """

    name: str
    column: str
    classes: tuple[Any, ...]


@dataclass(frozen=True)
class PedonSpec:
    """The pedon (field observation) file.

    Attributes:
        file: GeoPackage, GeoJSON, CSV or Parquet file relative to the dataset root.
        id_column: column with unique integer site ids.
        labels: label columns by name.
        layer: layer name for multi-layer GeoPackages.
        x_column, y_column: coordinate columns for files without geometry (CSV, Parquet).
        crs: CRS of ``x_column``/``y_column`` (defaults to the dataset CRS).
    """

    file: str
    id_column: str
    labels: dict[str, LabelSpec]
    layer: str | None = None
    x_column: str | None = None
    y_column: str | None = None
    crs: str | None = None


@dataclass(frozen=True)
class RegionSpec:
    """A polygon layer used to report results by region.

    Attributes:
        name: region key (``pf_zone``, ``mlra``).
        file: vector file relative to the dataset root.
        field: attribute holding the region name.
    """

    name: str
    file: str
    field: str


@dataclass(frozen=True)
class DatasetManifest:
    """A parsed, validated ``dataset.yaml``.

    Attributes:
        path: the manifest file.
        root: folder that the manifest's relative paths start from.
        name: dataset name.
        crs: coordinate reference system (``EPSG:3338``).
        res_m: resolution of the common grid, in CRS units.
        modalities: raster modalities by name, in stacking order.
        pedons: the pedon file.
        regions: region layers by name.
        truth_file: optional dense truth sample (synthetic data only).
        source: free-form provenance (generator, preset, seed, version).
        description: free text.
    """

    path: Path
    root: Path
    name: str
    crs: str
    res_m: float
    modalities: dict[str, ModalitySpec]
    pedons: PedonSpec
    regions: dict[str, RegionSpec] = field(default_factory=dict)
    truth_file: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def resolve(self, relative: str) -> Path:
        """Absolute path of a file named relative to the dataset root."""
        return (self.root / relative).resolve()

    def modality_files(self, name: str, required: bool = False) -> list[Path]:
        """Sorted raster files of a modality (``required``: raise when there is none)."""
        spec = self.modalities[name]
        files = sorted(self.resolve(spec.folder).glob(spec.glob))
        if required and not files:
            raise DatasetError(
                self.resolve(spec.folder),
                f"modalities.{name}.glob",
                f"no raster matches `{spec.glob}`",
                "run `miso-bench data check` and fix what it reports",
            )
        return files

    @property
    def band_names(self) -> list[str]:
        """All band names in stacking order (modality by modality)."""
        return [b for spec in self.modalities.values() for b in spec.bands]

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain YAML-ready data (paths stay relative)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out.update({"crs": self.crs, "res_m": self.res_m, "modalities": {}})
        for m in self.modalities.values():
            entry: dict[str, Any] = {
                "folder": m.folder,
                "glob": m.glob,
                "bands": list(m.bands),
                "nodata": m.nodata,
                "dtype": m.dtype,
            }
            if m.res_m != self.res_m:
                entry["res_m"] = m.res_m
            if m.categorical:
                entry["categorical"] = list(m.categorical)
            if m.circular:
                entry["circular"] = list(m.circular)
            if m.scale != 1.0:
                entry["scale"] = m.scale
            out["modalities"][m.name] = entry
        p = self.pedons
        ped: dict[str, Any] = {"file": p.file, "id_column": p.id_column}
        for key in ("layer", "x_column", "y_column", "crs"):
            if getattr(p, key) is not None:
                ped[key] = getattr(p, key)
        ped["labels"] = {
            lab.name: {"column": lab.column, "classes": list(lab.classes)}
            for lab in p.labels.values()
        }
        out["pedons"] = ped
        if self.regions:
            out["regions"] = {
                r.name: {"file": r.file, "field": r.field} for r in self.regions.values()
            }
        if self.truth_file:
            out["truth"] = {"file": self.truth_file}
        if self.source:
            out["source"] = dict(self.source)
        return out

    def write(self, path: Path | None = None) -> Path:
        """Write the manifest as YAML (to ``path`` or its own path)."""
        target = Path(path or self.path)
        target.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return target


# --------------------------------------------------------------------------------------------
# Parsing with errors that name the file, the field and the fix.


class _Reader:
    def __init__(self, file: Path) -> None:
        self.file = str(file)

    def fail(self, fld: str, problem: str, fix: str) -> ManifestError:
        return ManifestError(self.file, fld, problem, fix)

    def mapping(self, value: Any, fld: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(
                fld,
                f"expected a mapping, got {type(value).__name__}",
                "write it as `key: value` lines",
            )
        return value

    def keys(
        self, value: Mapping[str, Any], fld: str, required: set[str], optional: set[str]
    ) -> None:
        allowed = required | optional
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = (
                    f"did you mean `{close[0]}`?"
                    if close
                    else f"allowed keys: {', '.join(sorted(allowed))}"
                )
                raise self.fail(
                    f"{fld}.{key}" if fld else str(key),
                    "unknown key",
                    f"remove it or rename it; {hint}",
                )
        missing = sorted(k for k in required if k not in value)
        if missing:
            names = ", ".join(f"{fld}.{k}" if fld else k for k in missing)
            raise self.fail(
                names, "missing", "add it (see datasets/README.md for the manifest format)"
            )

    def string(self, value: Any, fld: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(
                fld, f"expected a non-empty string, got {value!r}", "write a string value"
            )
        return value

    def number(self, value: Any, fld: str, positive: bool = False) -> float:
        if isinstance(value, str):  # YAML reads nan, -1e38 (no dot) as text
            with contextlib.suppress(ValueError):
                value = float(value.strip())
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(fld, f"expected a number, got {value!r}", "write a number")
        if positive and value <= 0:
            raise self.fail(fld, f"must be positive, got {value}", "write a positive number")
        return float(value)

    def str_list(self, value: Any, fld: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(fld, "expected a non-empty list", "write a YAML list: [a, b, c]")
        items = tuple(str(v) for v in value)
        dupes = sorted({v for v in items if items.count(v) > 1})
        if dupes:
            raise self.fail(fld, f"duplicate entries {dupes}", "list each entry once")
        return items


#: Text that marks a missing label in files that store labels as text (a GeoPackage text
#: column, a CSV read without pandas' own missing-value markers): counted as missing, never a
#: class.
MISSING_LABELS = frozenset(
    {"", "-", "--", "?", "na", "n/a", "nan", "null", "none", "#n/a", "<na>", "missing"}
)
#: Columns of the pedon table itself: a label may not take these names.
RESERVED_LABEL_NAMES = frozenset({"id", "x", "y", "geometry", "target"})


def looks_like_aspect(band: str) -> bool:
    """A band name that says aspect (``aspect``, ``aspct_4``, ``ASP``), an angle in degrees."""
    return re.fullmatch(r"(?i)(.*[^a-z])?(aspect|aspct|asp)([^a-z].*)?", band) is not None


def normalise_label(value: Any) -> Any:
    """A label or class value in one comparable form: whole floats as integers (1.0 -> 1),
    numbers stored as text as numbers ("1" -> 1, so a text column matches classes [0, 1]),
    text stripped (" Gelisols" -> "Gelisols"), missing markers (NaN, "", "NA", "-") as None.
    Manifest classes and file values both pass through it."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return None
        return int(value) if float(value).is_integer() else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.lower() in MISSING_LABELS:
            return None
        try:
            number = float(stripped)
        except ValueError:
            return stripped
        if not np.isfinite(number):
            return stripped
        # Only plain decimal numbers: "1e3" or "0x1" stay text (class codes, not numbers).
        if stripped.lstrip("+-").replace(".", "", 1).isdigit():
            return int(number) if number.is_integer() else number
        return stripped
    return value


def same_crs(a: Any, b: Any) -> bool:
    """Whether two CRSs (any spelling: ``EPSG:3338``, ``epsg:3338``, WKT, a rasterio or pyproj
    CRS) are the same; an unparsable one is not the same as anything."""
    from pyproj import CRS

    try:
        return bool(CRS.from_user_input(a) == CRS.from_user_input(b))
    except Exception:  # pyproj raises several types for text it cannot read
        return False


def nodata_problem(value: float | None, dtype: str) -> str | None:
    """Why ``value`` cannot mark missing pixels of a ``dtype`` file, or None when it can.

    A value the dtype cannot hold would be cast to another one (-9999 in uint8 is 241), and
    the pixels holding *that* real value would be read as missing; NaN never occurs in an
    integer file, so declaring it masks nothing.
    """
    if value is None:
        return None
    dt = np.dtype(dtype)
    if np.isnan(value):
        if np.issubdtype(dt, np.integer):
            return f"NaN cannot occur in {dtype} pixels, so no pixel would be read as missing"
        return None
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        if not np.isfinite(value) or value != np.floor(value):
            return f"{value:g} is not a whole number, and {dtype} pixels hold whole numbers"
        if not info.min <= value <= info.max:
            return f"{value:g} is outside the {dtype} range {info.min}..{info.max}"
        return None
    with np.errstate(over="ignore"):
        stored = np.asarray(value, dtype=np.float64).astype(dt)
    if np.isfinite(value) and not np.isfinite(stored):
        return f"{value:g} overflows {dtype} (it would be read as {float(stored):g})"
    return None


def nodata_in_dtype(
    value: float | None,
    dtype: str,
    file: str | os.PathLike[str] = "(raster)",
    field: str = "nodata",
) -> float | None:
    """A no-data value as the file's dtype stores it (-3e38 in float32 is -3.0000000054977558e38).

    Compare pixels with this value, never with the float64 number written in a manifest.

    Raises:
        DatasetError: the dtype cannot hold the value (naming ``file`` and ``field``).
    """
    if value is None:
        return None
    problem = nodata_problem(value, dtype)
    if problem is not None:
        raise DatasetError(
            file,
            field,
            f"no-data {problem}",
            f"declare the value that marks missing pixels of this {dtype} file "
            "(or leave `nodata` out to use the file's own)",
        )
    if np.isnan(value):
        return float("nan")
    return float(np.asarray(value, dtype=np.float64).astype(dtype))


def raster_nodata(
    declared: float | None, src: Any, path: str | os.PathLike[str], modality: str
) -> float | None:
    """The no-data value of one open file, as its dtype stores it: the manifest's
    (``modalities.<modality>.nodata``) when it declares one, else the file's own.

    Raises:
        DatasetError: the file's dtype cannot hold the value (naming the file and field).
    """
    if declared is not None:
        return nodata_in_dtype(declared, src.dtypes[0], path, f"modalities.{modality}.nodata")
    return nodata_in_dtype(src.nodata, src.dtypes[0], path, "(file) no-data")


def read_masked(src: Any, nodata: float | None, **read_args: Any) -> np.ndarray:
    """``src.read(**read_args)`` as float64 with NaN on every missing pixel: those holding
    ``nodata`` (see :func:`raster_nodata`), those the file's own GDAL mask marks invalid
    (an internal or external mask band, or an alpha band) and +-inf (a log of 0); values
    unpacked with the file's scale and offset tags (:func:`unpack`). Files with none of these
    read the same as a plain read.

    A read with ``out_shape`` (a decimated sample) comes from the file's overviews when it has
    them, which are resampled (COGs: cubic), not its pixels: open such files with
    ``OVERVIEW_LEVEL="NONE"`` (:func:`open_raster` with ``full_resolution``)."""

    raw = src.read(**read_args)
    data = raw.astype(np.float64)
    if nodata is not None and not np.isnan(nodata):
        missing = data == nodata
        if raw.dtype == np.float32:  # a manifest's -3.4e38 is the float32 nodata it rounds to
            missing |= raw == np.float32(nodata)
        data[missing] = np.nan
    if has_gdal_mask(src):
        valid = src.read_masks(**read_args)
        data[valid == 0] = np.nan
    data = unpack(src, data, read_args.get("indexes"))
    data[np.isinf(data)] = np.nan
    return data


def has_gdal_mask(src: Any) -> bool:
    """The open raster marks its missing pixels with a mask band (internal or external) or
    an alpha band."""
    import rasterio

    masked = rasterio.enums.MaskFlags
    return any(masked.per_dataset in f or masked.alpha in f for f in src.mask_flag_enums)


def unpack(src: Any, data: np.ndarray, indexes: Any = None) -> np.ndarray:
    """Stored values -> physical values, ``stored * scale + offset``, with the scale and
    offset tags GDAL reports per band (packed climate grids, Sentinel-2 L2A's -1000 offset);
    ``data`` is every band (``indexes`` None), a list of bands, or one band (an int)."""
    many = not isinstance(indexes, int)
    if indexes is None:
        picked = list(range(1, src.count + 1))
    else:
        picked = [int(b) for b in indexes] if many else [int(indexes)]
    scales = [float(src.scales[b - 1]) for b in picked]
    offsets = [float(src.offsets[b - 1]) for b in picked]
    if all(k == 1.0 for k in scales) and all(o == 0.0 for o in offsets):
        return data
    if not many:
        return data * scales[0] + offsets[0]
    shape = (-1,) + (1,) * (data.ndim - 1)
    k = np.asarray(scales, dtype=data.dtype).reshape(shape)
    o = np.asarray(offsets, dtype=data.dtype).reshape(shape)
    return data * k + o


def open_raster(path: str | os.PathLike[str], full_resolution: bool = False) -> Any:
    """``rasterio.open`` with a one-line :class:`DatasetError` for unreadable files.

    Args:
        full_resolution: never read from overviews (for decimated samples of the pixels).
    """
    import rasterio

    try:
        return rasterio.open(path, **({"OVERVIEW_LEVEL": "NONE"} if full_resolution else {}))
    except rasterio.errors.RasterioError as exc:
        raise DatasetError(
            path,
            "(file)",
            f"unreadable raster: {exc}",
            "re-export it as GeoTIFF (`miso-bench data check` lists every problem)",
        ) from exc


def require_crs(src: Any, path: str | os.PathLike[str], dataset_crs: str) -> None:
    """Raise a one-line :class:`DatasetError` when an open raster has no CRS.

    Args:
        src: the open rasterio dataset.
        path: its file (named in the error).
        dataset_crs: the dataset's CRS, suggested in the fix.
    """
    if src.crs is None:
        raise DatasetError(
            path,
            "crs",
            "file has no CRS, so its pixels cannot be placed on the map",
            f"assign the CRS it is in (gdal_edit.py -a_srs {dataset_crs} if it is the dataset's)",
        )


def find_manifest(path: str | Path) -> Path:
    """Return the manifest file for a dataset folder or manifest path.

    Raises:
        ManifestError: when there is no manifest there.
    """
    p = Path(path)
    candidate = p / MANIFEST_NAME if p.is_dir() else p
    if not candidate.is_file():
        raise ManifestError(
            str(candidate),
            "(file)",
            "no dataset manifest found",
            f"pass a dataset folder containing {MANIFEST_NAME} (create one with "
            "`miso-bench data synth` or write it by hand, see datasets/README.md)",
        )
    return candidate


class _ManifestLoader(yaml.SafeLoader):
    """YAML 1.2 scalars where YAML 1.1 (PyYAML's default) turns class codes into other
    values: only ``true``/``false`` are booleans (``[no, yes]``, ``ON`` stay text) and a
    leading zero is not octal (``010`` stays the code "010", not 8)."""


_BOOL, _INT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int"
_ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _rx, _firsts in (
    (_BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (_INT, r"^[-+]?(?:0|[1-9][0-9]*)$", "-+0123456789"),
):
    for _first in _firsts:
        _ManifestLoader.yaml_implicit_resolvers.setdefault(_first, []).append(
            (_tag, re.compile(_rx))
        )


def load_manifest(path: str | Path) -> DatasetManifest:
    """Read and validate a dataset manifest.

    Args:
        path: a dataset folder (containing ``dataset.yaml``) or the manifest file itself.

    Raises:
        ManifestError: naming the file, the field and the fix.
    """
    file = find_manifest(path)
    r = _Reader(file)
    try:
        raw = yaml.load(file.read_text(), Loader=_ManifestLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise r.fail(
            "(file)", f"cannot be parsed as YAML: {exc}".replace("\n", " "), "fix the YAML syntax"
        ) from exc
    top = r.mapping(raw, "(top level)")
    r.keys(
        top,
        "",
        {"name", "crs", "res_m", "modalities", "pedons"},
        {"description", "root", "regions", "truth", "source"},
    )
    res_m = r.number(top["res_m"], "res_m", positive=True)
    crs = r.string(top["crs"], "crs")
    try:
        from pyproj import CRS

        CRS.from_user_input(crs)
    except Exception as exc:  # pyproj raises several types for an unknown CRS
        raise r.fail("crs", f"unknown CRS {crs!r}", "write an EPSG code such as EPSG:3338") from exc
    root = (file.parent / str(top.get("root", "."))).resolve()

    modalities: dict[str, ModalitySpec] = {}
    mods = r.mapping(top["modalities"], "modalities")
    if not mods:
        raise r.fail("modalities", "no modality listed", "describe at least one raster modality")
    for name, value in mods.items():
        fld = f"modalities.{name}"
        m = r.mapping(value, fld)
        r.keys(
            m,
            fld,
            {"folder", "bands"},
            {"glob", "nodata", "dtype", "res_m", "categorical", "scale", "circular"},
        )
        bands = r.str_list(m["bands"], f"{fld}.bands")
        dtype = str(m.get("dtype", "float32"))
        if dtype not in _DTYPES:
            raise r.fail(
                f"{fld}.dtype", f"unknown dtype {dtype!r}", f"use one of {', '.join(_DTYPES)}"
            )
        nodata = m.get("nodata")
        if nodata is not None:
            nodata = r.number(nodata, f"{fld}.nodata")
            problem = nodata_problem(nodata, dtype)
            if problem is not None:
                raise r.fail(
                    f"{fld}.nodata",
                    f"no-data {problem} (`dtype: {dtype}`)",
                    "declare the value that marks missing pixels in the files' dtype, or "
                    "correct `dtype`",
                )
        listed: dict[str, tuple[str, ...]] = {}
        for key in ("categorical", "circular"):
            listed[key] = r.str_list(m[key], f"{fld}.{key}") if m.get(key) else ()
            unknown = [b for b in listed[key] if b not in bands]
            if unknown:
                raise r.fail(
                    f"{fld}.{key}",
                    f"{unknown} are not in bands",
                    "list only band names from `bands`",
                )
        categorical = listed["categorical"]
        both = sorted(set(categorical) & set(listed["circular"]))
        if both:
            raise r.fail(
                f"{fld}.circular",
                f"{both} are also categorical",
                "a band is either class codes or angles",
            )
        modalities[str(name)] = ModalitySpec(
            name=str(name),
            folder=r.string(m["folder"], f"{fld}.folder"),
            glob=str(m.get("glob", "*.tif")),
            bands=bands,
            nodata=nodata,
            dtype=dtype,
            res_m=r.number(m.get("res_m", res_m), f"{fld}.res_m", positive=True),
            categorical=categorical,
            scale=r.number(m.get("scale", 1.0), f"{fld}.scale", positive=True),
            circular=listed["circular"],
        )
    all_bands = [b for spec in modalities.values() for b in spec.bands]
    dupes = sorted({b for b in all_bands if all_bands.count(b) > 1})
    if dupes:
        raise r.fail(
            "modalities",
            f"band names {dupes} appear in more than one modality",
            "give every band a unique name",
        )

    ped = r.mapping(top["pedons"], "pedons")
    r.keys(ped, "pedons", {"file", "id_column", "labels"}, {"layer", "x_column", "y_column", "crs"})
    labels: dict[str, LabelSpec] = {}
    for lname, lvalue in r.mapping(ped["labels"], "pedons.labels").items():
        fld = f"pedons.labels.{lname}"
        lab = r.mapping(lvalue, fld)
        r.keys(lab, fld, {"column", "classes"}, set())
        classes = lab["classes"]
        if not isinstance(classes, list) or len(classes) < 2:
            raise r.fail(
                f"{fld}.classes",
                "expected a list of at least two classes",
                "list every class value, e.g. [0, 1]",
            )
        if str(lname) in RESERVED_LABEL_NAMES:
            raise r.fail(
                fld,
                f"the label name `{lname}` is a column of the pedon table itself "
                f"({', '.join(sorted(RESERVED_LABEL_NAMES))})",
                f"rename the label (the key under `labels:`, e.g. `{lname}_label`); its "
                "`column` may keep its name",
            )
        seen: dict[Any, Any] = {}
        for c in classes:
            key = normalise_label(c)
            if key is None:
                raise r.fail(
                    f"{fld}.classes",
                    f"class {c!r} reads as a missing value",
                    "list only real class values (missing labels are dropped and counted)",
                )
            if key in seen:
                raise r.fail(
                    f"{fld}.classes",
                    f"classes {seen[key]!r} and {c!r} are the same value",
                    "list each class once",
                )
            seen[key] = c
        labels[str(lname)] = LabelSpec(
            str(lname), r.string(lab["column"], f"{fld}.column"), tuple(classes)
        )
    if not labels:
        raise r.fail("pedons.labels", "no label listed", "describe at least one label column")
    has_x, has_y = "x_column" in ped, "y_column" in ped
    if has_x != has_y:
        raise r.fail(
            "pedons.x_column" if has_y else "pedons.y_column",
            "missing",
            "give both x_column and y_column, or neither for files with geometry",
        )
    if ped.get("crs") is not None:
        try:
            from pyproj import CRS as _CRS

            _CRS.from_user_input(ped["crs"])
        except Exception as exc:  # pyproj raises several types for an unknown CRS
            raise r.fail(
                "pedons.crs",
                f"unknown CRS {ped['crs']!r}",
                "write an EPSG code such as EPSG:4326 for longitude/latitude",
            ) from exc
    pedons = PedonSpec(
        file=r.string(ped["file"], "pedons.file"),
        id_column=r.string(ped["id_column"], "pedons.id_column"),
        labels=labels,
        layer=ped.get("layer"),
        x_column=ped.get("x_column"),
        y_column=ped.get("y_column"),
        crs=ped.get("crs"),
    )

    regions: dict[str, RegionSpec] = {}
    for rname, rvalue in r.mapping(top.get("regions") or {}, "regions").items():
        fld = f"regions.{rname}"
        reg = r.mapping(rvalue, fld)
        r.keys(reg, fld, {"file", "field"}, set())
        regions[str(rname)] = RegionSpec(
            str(rname), r.string(reg["file"], f"{fld}.file"), r.string(reg["field"], f"{fld}.field")
        )
    truth_file = None
    if top.get("truth") is not None:
        truth = r.mapping(top["truth"], "truth")
        r.keys(truth, "truth", {"file"}, set())
        truth_file = r.string(truth["file"], "truth.file")
    source = dict(r.mapping(top.get("source") or {}, "source"))
    return DatasetManifest(
        path=file,
        root=root,
        name=r.string(top["name"], "name"),
        crs=crs,
        res_m=res_m,
        modalities=modalities,
        pedons=pedons,
        regions=regions,
        truth_file=truth_file,
        source=source,
        description=str(top.get("description", "")),
    )
