"""TorchGeo raster datasets for the Alaska inputs, configured from a dataset manifest.

:class:`Sentinel2Composite`, :class:`TerrainDerivatives` and :class:`ClimateLayers` carry the
reference study's band names as class attributes; a manifest may override band names, file
glob and no-data value (real deliveries differ). :func:`open_stack` combines all modalities of
a manifest with torchgeo's intersection so that one slice query returns every band.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pyproj import CRS as PROJ_CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from torchgeo.datasets import IntersectionDataset, RasterDataset
from torchgeo.datasets.errors import DatasetNotFoundError

from ..errors import DatasetError
from .manifest import DatasetManifest, ModalitySpec

__all__ = [
    "ClimateLayers",
    "ManifestRaster",
    "Sentinel2Composite",
    "TerrainDerivatives",
    "modality_dataset",
    "open_stack",
]


class ManifestRaster(RasterDataset):
    """A :class:`~torchgeo.datasets.RasterDataset` whose files and bands come from a manifest.

    Subclasses set the modality's default band names; the manifest's values take precedence,
    so the same class reads the synthetic default and a user's real delivery.

    Args:
        manifest: the dataset manifest.
        modality: key of the modality in ``manifest.modalities``.
        bands: subset of bands to return (default: all, in file order).
        crs: CRS to warp to (default: the manifest's).
        res: resolution to sample at (default: the manifest's ``res_m``).
        transforms: optional sample transform.
        cache: keep file handles open between queries.
    """

    #: Modality key in the manifest that this class reads by default.
    modality: ClassVar[str] = ""
    #: Band names in file order (the reference's names; a manifest may rename them).
    all_bands: tuple[str, ...] = ()
    #: Files are one multi-band GeoTIFF per tile.
    separate_files = False
    #: Every modality is model input.
    is_image = True

    def __init__(
        self,
        manifest: DatasetManifest,
        modality: str | None = None,
        bands: Sequence[str] | None = None,
        crs: PROJ_CRS | None = None,
        res: float | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache: bool = True,
    ) -> None:
        key = modality or self.modality
        if key not in manifest.modalities:
            raise DatasetError(
                manifest.path,
                f"modalities.{key}",
                "missing",
                f"add the `{key}` modality or use one of {sorted(manifest.modalities)}",
            )
        spec = manifest.modalities[key]
        self.spec: ModalitySpec = spec
        self.manifest = manifest
        # Instance attributes shadow the class defaults with the manifest's values.
        self.filename_glob = spec.glob
        self.all_bands = spec.bands
        self.nodata = spec.nodata
        if bands is not None:
            unknown = [b for b in bands if b not in spec.bands]
            if unknown:
                raise DatasetError(
                    manifest.path,
                    f"modalities.{key}.bands",
                    f"{unknown} not available",
                    f"choose from {list(spec.bands)}",
                )
        folder = manifest.resolve(spec.folder)
        try:
            super().__init__(
                paths=folder,
                crs=crs or PROJ_CRS.from_user_input(manifest.crs),
                res=res or manifest.res_m,
                bands=bands,
                transforms=transforms,
                cache=cache,
            )
        except DatasetNotFoundError as exc:
            raise DatasetError(
                folder,
                f"modalities.{key}.glob",
                f"no raster matches `{spec.glob}`",
                f"check modalities.{key}.folder and glob in {manifest.path}",
            ) from exc
        except (RuntimeError, RasterioError) as exc:
            # GDAL cannot warp a file into the dataset CRS (e.g. a projected tile across the
            # antimeridian onto a longitude/latitude grid): "Parameterization error".
            raise DatasetError(
                folder,
                f"modalities.{key}",
                f"a file cannot be warped into the dataset CRS {manifest.crs}: {exc}",
                f"reproject the files to {manifest.crs} yourself (gdalwarp -t_srs "
                f"{manifest.crs}; split a tile that crosses the antimeridian)",
            ) from exc

    @property
    def resampling(self) -> Resampling:
        """Nearest for modalities with categorical bands (class codes) or circular ones
        (angles: bilinear would turn 350 and 10 into 180), else bilinear."""
        if self.spec.categorical or self.spec.circular:
            return Resampling.nearest
        return Resampling.bilinear


class Sentinel2Composite(ManifestRaster):
    """Sentinel-2 L2A summer median composite, 9 bands in SatlasPretrain order."""

    modality = "sentinel2"
    all_bands = ("B04", "B03", "B02", "B05", "B06", "B07", "B08", "B11", "B12")
    rgb_bands = ("B04", "B03", "B02")


class TerrainDerivatives(ManifestRaster):
    """Seven derivatives of the IfSAR DEM (aspect, elevation, curvature, slope, SPI, SWI, TPI)."""

    modality = "terrain"
    all_bands = ("aspct_4", "elevation_full_10m_3338", "maxc_4", "sl_4", "spi", "swi_10", "tpi_4")


class ClimateLayers(ManifestRaster):
    """Annual precipitation, summer warmth index and January minimum temperature."""

    modality = "climate"
    all_bands = ("ppt_annual", "tmean_swi", "tmin_january")


_CLASSES: dict[str, type[ManifestRaster]] = {
    "sentinel2": Sentinel2Composite,
    "terrain": TerrainDerivatives,
    "climate": ClimateLayers,
}


def modality_dataset(manifest: DatasetManifest, modality: str, **kwargs: Any) -> ManifestRaster:
    """The dataset class for a modality (a generic :class:`ManifestRaster` for other names)."""
    cls = _CLASSES.get(modality, ManifestRaster)
    return cls(manifest, modality=modality, **kwargs)


def open_stack(
    manifest: DatasetManifest, modalities: Sequence[str] | None = None, cache: bool = True
) -> tuple[RasterDataset | IntersectionDataset, list[ManifestRaster]]:
    """All (or the chosen) modalities of a manifest intersected into one torchgeo dataset.

    Returns:
        The stacked dataset (channels concatenated in modality order) and the per-modality
        datasets it was built from.
    """
    names = list(modalities or manifest.modalities)
    parts = [modality_dataset(manifest, m, cache=cache) for m in names]
    stack: RasterDataset | IntersectionDataset = parts[0]
    for part in parts[1:]:
        stack = IntersectionDataset(stack, part)
    return stack, parts
