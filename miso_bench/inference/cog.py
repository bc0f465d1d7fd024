"""Map outputs: tiles written block by block, turned into Cloud-Optimised GeoTIFFs, a VRT mosaic
and PNG quicklooks.

Each tile has two COGs on the input grid and CRS:

- ``<tile>.class.tif``: uint8, the mapped class with a colour table and the class names in its
  metadata (``CLASS_<i>``); no-data 255; overviews by nearest neighbour;
- ``<tile>.stats.tif``: float32, no-data NaN; bands (named in their descriptions) the
  positive-class probability (binary tasks) or the mapped class's probability, optionally one
  probability per class, ``uncertainty``, ``di`` (dissimilarity index) and ``aoa`` (1 inside
  the area of applicability, 0 outside); overviews by averaging.

Nothing is written in place: a tile is written to hidden ``.partial`` files, converted, and
renamed, so a killed run never leaves a half-written map under its final name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.shutil import copy as rio_copy
from rasterio.transform import Affine
from rasterio.windows import Window

__all__ = [
    "CLASS_NODATA",
    "TileWriter",
    "class_colours",
    "quicklook",
    "write_vrt",
]

#: No-data value of the class map.
CLASS_NODATA = 255
#: Internal tile size of the outputs (pixels).
BLOCKSIZE = 256


def class_colours(names: Sequence[str]) -> list[tuple[int, int, int]]:
    """One colour per class: the binary permafrost task gets tan (absent) and blue (present),
    other tasks matplotlib's qualitative ``tab10``/``tab20``."""
    import matplotlib

    if len(names) == 2:
        return [(222, 196, 140), (44, 102, 190)]
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return [tuple(int(255 * v) for v in cmap(i % cmap.N)[:3]) for i in range(len(names))]  # type: ignore[misc]


def partial_name(path: Path) -> Path:
    """The hidden name a file is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.partial")


class TileWriter:
    """Writes one tile's class map and statistics block by block, then publishes them as COGs.

    Args:
        class_path, stats_path: final paths.
        crs: the CRS (WKT or user input).
        transform: affine transform of the tile's upper-left pixel.
        height, width: tile size in pixels.
        class_names: class names (colour table and metadata).
        stat_bands: descriptions of the float32 bands.
        tags: dataset metadata written to both files.
    """

    def __init__(
        self,
        class_path: Path,
        stats_path: Path,
        crs: Any,
        transform: Affine,
        height: int,
        width: int,
        class_names: Sequence[str],
        stat_bands: Sequence[str],
        tags: dict[str, str],
    ) -> None:
        self.class_path, self.stats_path = Path(class_path), Path(stats_path)
        self.class_names = list(class_names)
        self.stat_bands = list(stat_bands)
        common = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "crs": crs,
            "transform": transform,
            "tiled": True,
            "blockxsize": BLOCKSIZE,
            "blockysize": BLOCKSIZE,
            "BIGTIFF": "IF_SAFER",
        }
        self._tmp = [partial_name(self.class_path), partial_name(self.stats_path)]
        for p in self._tmp:
            p.unlink(missing_ok=True)
        self._class = rasterio.open(
            self._tmp[0], "w", count=1, dtype="uint8", nodata=CLASS_NODATA, **common
        )
        self._stats = rasterio.open(
            self._tmp[1], "w", count=len(stat_bands), dtype="float32", nodata=np.nan, **common
        )
        self._class.write_colormap(
            1,
            {
                **{i: (*c, 255) for i, c in enumerate(class_colours(class_names))},
                CLASS_NODATA: (0, 0, 0, 0),
            },
        )
        self._class.set_band_description(1, "class")
        self._class.update_tags(
            **tags, **{f"CLASS_{i}": name for i, name in enumerate(class_names)}
        )
        for i, name in enumerate(stat_bands, start=1):
            self._stats.set_band_description(i, name)
        self._stats.update_tags(**tags)

    def write(self, row: int, col: int, classes: np.ndarray, stats: np.ndarray) -> None:
        """Write a block: ``classes (h, w)`` uint8 and ``stats (bands, h, w)`` float32 at the
        tile's pixel ``(row, col)``."""
        h, w = classes.shape
        window = Window(col, row, w, h)
        self._class.write(classes[None].astype(np.uint8), window=window)
        self._stats.write(stats.astype(np.float32), window=window)

    def close(self) -> None:
        """Drop the partial files (an interrupted tile)."""
        for ds in (self._class, self._stats):
            if not ds.closed:
                ds.close()
        for p in self._tmp:
            p.unlink(missing_ok=True)

    def publish(self) -> None:
        """Close, convert to COGs (with overviews) and rename into place."""
        self._class.close()
        self._stats.close()
        for tmp, final, resampling in (
            (self._tmp[0], self.class_path, "NEAREST"),
            (self._tmp[1], self.stats_path, "AVERAGE"),
        ):
            cog_tmp = final.with_name(f".{final.name}.cog.partial")
            rio_copy(
                tmp,
                cog_tmp,
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=str(BLOCKSIZE),
                OVERVIEW_RESAMPLING=resampling,
                BIGTIFF="IF_SAFER",
            )
            os.replace(cog_tmp, final)
            tmp.unlink(missing_ok=True)


def axis_mapping(crs: Any) -> str:
    """GDAL's ``dataAxisToSRSAxisMapping`` for rasters in ``crs``: raster x is easting or
    longitude, so a CRS whose first axis is northing or latitude (EPSG:4326, EPSG:31467)
    maps data axis 1 to its axis 2."""
    from pyproj import CRS

    axes = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs).axis_info
    first = axes[0].direction.lower() if axes else "east"
    return "2,1" if first in ("north", "south") else "1,2"


def write_vrt(
    path: Path,
    tiles: Sequence[Path],
    band_names: Sequence[str],
    dtype: str,
    nodata: float,
    colours: Sequence[tuple[int, int, int]] | None = None,
) -> None:
    """A VRT mosaic of tiles on one grid (sources keep their no-data transparent)."""
    opened = []
    for t in tiles:
        with rasterio.open(t) as src:
            opened.append((t, src.transform, src.width, src.height, src.crs))
    res = opened[0][1].a
    xmin = min(o[1].c for o in opened)
    ymax = max(o[1].f for o in opened)
    xmax = max(o[1].c + o[2] * res for o in opened)
    ymin = min(o[1].f - o[3] * res for o in opened)
    width, height = round((xmax - xmin) / res), round((ymax - ymin) / res)
    vrt_type = {"uint8": "Byte", "float32": "Float32"}[dtype]
    nd = "nan" if np.isnan(nodata) else str(int(nodata))
    lines = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f'  <SRS dataAxisToSRSAxisMapping="{axis_mapping(opened[0][4])}">'
        f"{escape(opened[0][4].to_wkt())}</SRS>",
        f"  <GeoTransform>{xmin!r}, {res!r}, 0.0, {ymax!r}, 0.0, {-res!r}</GeoTransform>",
    ]
    for b, name in enumerate(band_names, start=1):
        lines.append(f'  <VRTRasterBand dataType="{vrt_type}" band="{b}">')
        lines.append(f"    <Description>{escape(name)}</Description>")
        lines.append(f"    <NoDataValue>{nd}</NoDataValue>")
        if colours is not None and b == 1:
            lines.append("    <ColorInterp>Palette</ColorInterp>")
            lines.append("    <ColorTable>")
            entries = {i: (*c, 255) for i, c in enumerate(colours)}
            for i in range(max(CLASS_NODATA + 1, len(colours))):
                c = entries.get(i, (0, 0, 0, 0))
                lines.append(f'      <Entry c1="{c[0]}" c2="{c[1]}" c3="{c[2]}" c4="{c[3]}"/>')
            lines.append("    </ColorTable>")
        for t, tr, w, h, _ in opened:
            xo, yo = round((tr.c - xmin) / res), round((ymax - tr.f) / res)
            rel = os.path.relpath(t, path.parent)
            lines += [
                "    <ComplexSource>",
                f'      <SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>',
                f"      <SourceBand>{b}</SourceBand>",
                f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                f'      <DstRect xOff="{xo}" yOff="{yo}" xSize="{w}" ySize="{h}"/>',
                f"      <NODATA>{nd}</NODATA>",
                "    </ComplexSource>",
            ]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    tmp = partial_name(path)
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def read_band_count(path: Path) -> int:
    """Bands of a raster file."""
    with rasterio.open(path) as src:
        return int(src.count)


def _read_small(path: Path, bands: Sequence[int], max_px: int) -> np.ndarray:
    with rasterio.open(path) as src:
        f = max(1, int(np.ceil(max(src.width, src.height) / max_px)))
        shape = (len(bands), max(1, src.height // f), max(1, src.width // f))
        data = src.read(list(bands), out_shape=shape, masked=True)
    return np.ma.filled(data.astype(np.float64), np.nan)


def quicklook(
    class_path: Path,
    stats_path: Path,
    png: Path,
    class_names: Sequence[str],
    title: str,
    max_px: int = 800,
) -> None:
    """A PNG of a tile (or mosaic): the class map, the uncertainty and the area of
    applicability, read from the overviews."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    with rasterio.open(stats_path) as src:
        names = list(src.descriptions)
    classes = _read_small(class_path, [1], max_px)[0]
    unc = _read_small(stats_path, [names.index("uncertainty") + 1], max_px)[0]
    aoa = _read_small(stats_path, [names.index("aoa") + 1], max_px)[0]
    colours = np.array(class_colours(class_names)) / 255.0
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), constrained_layout=True)
    axes[0].imshow(
        np.ma.masked_invalid(classes),
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=len(class_names) - 0.5,
        interpolation="nearest",
    )
    axes[0].legend(
        handles=[Patch(color=c, label=n) for c, n in zip(colours, class_names, strict=True)],
        loc="lower left",
        fontsize=7,
        framealpha=0.8,
    )
    axes[0].set_title("mapped class")
    im = axes[1].imshow(np.ma.masked_invalid(unc), cmap="magma", vmin=0, interpolation="nearest")
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    axes[1].set_title("uncertainty")
    axes[2].imshow(
        np.ma.masked_invalid(aoa),
        cmap=ListedColormap(["#c0392b", "#ecf0f1"]),
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    inside = float(np.nanmean(aoa)) if np.isfinite(aoa).any() else float("nan")
    axes[2].set_title(f"area of applicability (white: inside, {100 * inside:.0f} %)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    tmp = png.with_name(f".{png.name}.partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png)
