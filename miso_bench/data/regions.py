"""Region layers (permafrost zones, MLRAs) and point-to-region assignment for reporting."""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np

from ..errors import DatasetError, warn
from ..registry import slugify
from ..spatial import OUTSIDE_REGION
from .manifest import DatasetManifest, RegionSpec

__all__ = ["OUTSIDE", "RegionLayer", "load_regions"]

#: Region name given to points that fall in no polygon of a layer.
OUTSIDE = OUTSIDE_REGION


class RegionLayer:
    """One polygon layer whose attribute ``field`` names the region of each polygon.

    Args:
        manifest: the dataset manifest.
        spec: the region layer's manifest entry.
    """

    def __init__(self, manifest: DatasetManifest, spec: RegionSpec) -> None:
        self.spec = spec
        path = manifest.resolve(spec.file)
        if not path.is_file():
            raise DatasetError(
                path,
                f"regions.{spec.name}.file",
                "region layer not found",
                f"correct the path in {manifest.path}",
            )
        try:
            gdf = gpd.read_file(path)
        except Exception as exc:  # vector readers raise many types for broken files
            raise DatasetError(
                path,
                f"regions.{spec.name}.file",
                f"cannot read region layer: {exc}",
                "re-export it as GeoPackage",
            ) from exc
        if spec.field not in gdf.columns:
            raise DatasetError(
                path,
                f"regions.{spec.name}.field",
                f"column `{spec.field}` not found",
                f"use one of {[c for c in gdf.columns if c != 'geometry']}",
            )
        if gdf.crs is None:
            warn(
                "region_layer_without_crs",
                f"{path}: the region layer has no CRS, so it is read in the dataset's "
                f"({manifest.crs}) (fix: if it is in another, assign that one, e.g. "
                "ogr2ogr -a_srs EPSG:4326 out.gpkg in.shp, or restore its .prj)",
            )
            gdf = gdf.set_crs(manifest.crs)
        polygons = gdf[[spec.field, "geometry"]]
        unnamed = polygons[spec.field].isna() | (polygons[spec.field].astype(str).str.strip() == "")
        self.n_unnamed = int(unnamed.sum())
        if unnamed.any():
            # A polygon without a name is no region: its pedons are "outside" (said, never the
            # worst region nor a region-CV fold), not a region called "None" or "nan".
            warn(
                "region_polygons_without_name",
                f"{path}: {self.n_unnamed} of {len(polygons)} polygons have no `{spec.field}`"
                f": pedons in them are reported as '{OUTSIDE}' (fix: name them in the layer)",
            )
            polygons = polygons[~unnamed]
        self.polygons = polygons.to_crs(manifest.crs)
        self.polygons[spec.field] = self.polygons[spec.field].astype(str).str.strip()
        _check_keys(self.regions, path, f"regions.{spec.name}.field", spec.field)

    @property
    def name(self) -> str:
        """Layer key (``pf_zone``, ``mlra``)."""
        return self.spec.name

    @property
    def regions(self) -> list[str]:
        """Distinct region names, sorted."""
        return sorted(self.polygons[self.spec.field].unique())

    @property
    def file(self) -> str:
        """The layer's file as the manifest names it."""
        return str(self.spec.file)

    def assign(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Region name of each point (``"outside"`` when in no polygon; first match wins)."""
        points = gpd.GeoDataFrame(geometry=gpd.points_from_xy(x, y), crs=self.polygons.crs)
        joined = gpd.sjoin(points, self.polygons, how="left", predicate="intersects")
        joined = joined[~joined.index.duplicated(keep="first")]
        names = joined[self.spec.field].reindex(range(len(points)))
        return names.fillna(OUTSIDE).to_numpy(dtype=object)


def load_regions(manifest: DatasetManifest) -> dict[str, RegionLayer]:
    """All region layers of a manifest, by name."""
    return {name: RegionLayer(manifest, spec) for name, spec in manifest.regions.items()}


def _check_keys(names: list[str], path: Any, fld: str, column: str) -> None:
    """Refuse region names that share a metric key (``Yukon Flats`` and ``Yukon-Flats`` are
    both ``yukon_flats``; a region named ``Outside`` is the pedons in no polygon): their
    metrics would overwrite each other in MLflow and the report."""
    owner: dict[str, str] = {slugify(OUTSIDE): OUTSIDE}
    for name in names:
        key = slugify(name)
        if key in owner:
            other = owner[key]
            what = (
                "is the name of pedons in no polygon"
                if other == OUTSIDE
                else f"and {other!r} give the same metric key `{key}`"
            )
            raise DatasetError(
                path,
                fld,
                f"region {name!r} {what}",
                f"rename it in column `{column}` (or merge the two if they are one region)",
            )
        owner[key] = name
