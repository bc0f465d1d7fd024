"""Chips of the stacked rasters: a windowed source with a bounded cache, and a chip per pedon.

:class:`ChipSource` reads any window of the dataset's target grid (every band of every
modality) through an LRU cache of square blocks, so memory stays bounded whatever the size
of the tiles (a real AK050 delivery holds 5000 x 5000 px tiles of 19 bands). Files come from
the torchgeo datasets of the manifest (their file index gives each file's footprint in the
target CRS). Files on the target grid are read with plain windows; files in another CRS or
at another resolution are warped onto the grid (nearest for categorical bands, bilinear
otherwise). Where tiles overlap, each pixel of each band takes the first *valid* value in
file-name order, the same rule as :func:`~miso_bench.data.features.extract_point_features`
(and as torchgeo's merge).

:class:`PedonSampler` is a torchgeo sampler that yields, for each pedon, a chip-sized slice
snapped to the grid and centred on the pixel that contains the pedon (optionally jittered by
whole pixels for training; torchgeo has no point sampler, its PR #800 was not merged).
:class:`PedonChipDataset` turns those slices into samples: the stacked bands, a per-band
validity mask (no-data and outside-raster pixels are *masked*: their value is 0 and ``valid``
is False), the label, the pedon's position inside the chip in [-1, 1], its coordinates, id and
regions.

Position convention (as ``torch.nn.functional.grid_sample`` with ``align_corners=False``):
``(-1, -1)`` is the upper-left corner of the chip, ``(1, 1)`` the lower-right; x grows east
and y grows south, so the centre of pixel ``(row, col)`` is at
``((2 col + 1) / size - 1, (2 row + 1) / size - 1)``.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from torch.utils.data import Dataset
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import SpatialSampler

from ..errors import DatasetError
from .grid import GridSpec, dataset_grid
from .manifest import (
    DatasetManifest,
    open_raster,
    raster_nodata,
    read_masked,
    require_crs,
    unpack,
)
from .rasters import ManifestRaster, open_stack

__all__ = ["ChipSource", "GridSpec", "PedonChipDataset", "PedonSampler"]


#: Memory GDAL may use for its own tile cache while the source reads (MB).
GDAL_CACHE_MB = 64


@dataclass
class _File:
    """A raster file of one modality, as the source reads it."""

    path: str
    bounds: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in the target CRS
    aligned: bool  # on the target grid: plain windowed reads
    col0: int = 0  # global column of the file's first pixel (aligned files)
    row0: int = 0


class ChipSource:
    """Windows of every band of a dataset on its target grid, through a bounded block cache.

    Args:
        manifest: the dataset.
        modalities: modalities to stack (default: all, in manifest order).
        block_px: side of the cached square blocks, in pixels.
        cache_mb: the most memory the block cache may hold (least recently used blocks go).

    Attributes:
        grid: the target grid (pixel edges).
        band_names: bands in stacking order.
        stack: the torchgeo dataset of the stack (for samplers).
        hits, misses: block-cache statistics.
    """

    def __init__(
        self,
        manifest: DatasetManifest,
        modalities: Sequence[str] | None = None,
        block_px: int = 256,
        cache_mb: float = 1024.0,
    ) -> None:
        if block_px < 8:
            raise ValueError(f"block_px must be at least 8, got {block_px}")
        self.manifest = manifest
        self.modalities = list(modalities or manifest.modalities)
        self.block_px = int(block_px)
        self.cache_mb = float(cache_mb)
        self.stack, self.parts = open_stack(manifest, self.modalities, cache=False)
        self.grid = dataset_grid(manifest)
        self.band_names = [b for p in self.parts for b in p.bands]
        self.n_bands = len(self.band_names)
        block_bytes = self.n_bands * self.block_px**2 * 4
        self.max_blocks = max(4, int(self.cache_mb * 2**20 // block_bytes))
        self._files = [self._index(part) for part in self.parts]
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._set_handles(OrderedDict())
        self.hits = self.misses = 0

    def _set_handles(self, handles: OrderedDict[str, Any]) -> None:
        # Open files are closed when the source goes, or at exit before the interpreter
        # tears down the modules that rasterio needs to close them.
        self._handles = handles
        self._finalizer = weakref.finalize(self, _close_all, handles)

    # --- pickling (DataLoader workers, spawned processes): no handles, an empty cache -------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        state.pop("_handles", None)
        state.pop("_finalizer", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._set_handles(OrderedDict())

    def resized(self, cache_mb: float) -> ChipSource:
        """A copy of this source (same files and grid) with its own, empty cache of
        ``cache_mb`` (data-parallel workers share the memory budget)."""
        copy = object.__new__(ChipSource)
        copy.__setstate__(self.__getstate__())
        copy.cache_mb = float(cache_mb)
        block_bytes = self.n_bands * self.block_px**2 * 4
        copy.max_blocks = max(4, int(copy.cache_mb * 2**20 // block_bytes))
        copy.hits = copy.misses = 0
        return copy

    def close(self) -> None:
        """Close open files and drop the cache."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self._cache.clear()

    def _index(self, part: ManifestRaster) -> list[_File]:
        target = rasterio.crs.CRS.from_user_input(self.manifest.crs)
        g = self.grid
        files = []
        # The manifest's file order (the order point features use): it decides overlaps.
        indexed = {str(p) for p in part.index["filepath"]}
        ordered = [str(p) for p in self.manifest.modality_files(part.spec.name)]
        for path in [p for p in ordered if p in indexed]:
            with open_raster(path) as src:
                require_crs(src, path, self.manifest.crs)
                t = src.transform
                aligned = (
                    src.crs == target
                    and t.b == 0
                    and t.d == 0
                    and math.isclose(t.a, g.res, rel_tol=1e-9)
                    and math.isclose(-t.e, g.res, rel_tol=1e-9)
                )
                col0 = (t.c - g.x0) / g.res
                row0 = (g.y0 - t.f) / g.res
                aligned = (
                    aligned and abs(col0 - round(col0)) < 1e-6 and abs(row0 - round(row0)) < 1e-6
                )
                if aligned:
                    b = src.bounds
                    bounds = (b.left, b.bottom, b.right, b.top)
                else:
                    from rasterio.warp import transform_bounds

                    bounds = tuple(transform_bounds(src.crs, target, *src.bounds, densify_pts=21))
                files.append(_File(str(path), bounds, aligned, round(col0), round(row0)))
        return files

    def _open(self, path: str) -> Any:
        handle = self._handles.pop(path, None)
        if handle is None:
            handle = open_raster(path)
            while len(self._handles) >= 32:
                self._handles.popitem(last=False)[1].close()
        self._handles[path] = handle
        return handle

    # --- blocks ---------------------------------------------------------------------------
    def _read_block(self, br: int, bc: int) -> np.ndarray:
        """Block ``(br, bc)`` as float32 ``(C, B, B)`` with NaN where no file has valid data.

        GDAL's own block cache is kept small while reading: the decoded blocks live in this
        source's cache, and a second copy would double the memory a run holds."""
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20):
            return self._read_block_uncached(br, bc)

    def _read_block_uncached(self, br: int, bc: int) -> np.ndarray:
        bp, g = self.block_px, self.grid
        r0, c0 = br * bp, bc * bp
        xmin, xmax, ymin, ymax = g.bounds_of(r0, c0, bp, bp)
        out = np.full((self.n_bands, bp, bp), np.nan, dtype=np.float32)
        band0 = 0
        for part, files in zip(self.parts, self._files, strict=True):
            spec = part.spec
            n = len(part.bands)
            target = out[band0 : band0 + n]
            for f in files:
                fx0, fy0, fx1, fy1 = f.bounds
                if fx1 <= xmin or fx0 >= xmax or fy1 <= ymin or fy0 >= ymax:
                    continue
                values = self._file_window(f, spec, part, r0, c0, xmin, ymax)
                if values is None:
                    continue
                rows, cols, data = values
                view = target[:, rows, cols]  # a view: filling it fills the block
                empty = np.isnan(view)
                if empty.any():
                    view[empty] = data[empty]
                if not np.isnan(target).any():
                    break  # every pixel of every band is filled: later files cannot change it
            band0 += n
        return out

    def _file_window(
        self, f: _File, spec: Any, part: ManifestRaster, r0: int, c0: int, xmin: float, ymax: float
    ) -> tuple[slice, slice, np.ndarray] | None:
        """The part of block ``(r0, c0)`` that file ``f`` covers, NaN where it has no data."""
        bp = self.block_px
        src = self._open(f.path)
        if src.count != len(part.bands):
            raise DatasetError(
                f.path,
                f"modalities.{spec.name}.bands",
                f"file has {src.count} bands, the manifest lists {len(part.bands)}",
                "list one band name per band in file order",
            )
        nodata = raster_nodata(spec.nodata, src, f.path, spec.name)
        try:
            if f.aligned:
                fr0, fc0 = r0 - f.row0, c0 - f.col0
                rr0, rr1 = max(fr0, 0), min(fr0 + bp, src.height)
                cc0, cc1 = max(fc0, 0), min(fc0 + bp, src.width)
                if rr1 <= rr0 or cc1 <= cc0:
                    return None
                window = Window(cc0, rr0, cc1 - cc0, rr1 - rr0)
                data = read_masked(src, nodata, window=window).astype(np.float32)
                rows, cols = slice(rr0 - fr0, rr1 - fr0), slice(cc0 - fc0, cc1 - fc0)
            else:
                transform = Affine(self.grid.res, 0, xmin, 0, -self.grid.res, ymax)
                with WarpedVRT(
                    src,
                    crs=rasterio.crs.CRS.from_user_input(self.manifest.crs),
                    transform=transform,
                    width=bp,
                    height=bp,
                    resampling=part.resampling,
                    src_nodata=nodata,
                    nodata=np.nan,
                    dtype="float32",
                ) as vrt:
                    data = vrt.read().astype(np.float32)
                if nodata is not None and not np.isnan(nodata):
                    data[data == np.float32(nodata)] = np.nan
                # Scale and offset are linear, so they apply after the resampling too.
                data = unpack(src, data).astype(np.float32)
                data[np.isinf(data)] = np.nan
                rows, cols = slice(0, bp), slice(0, bp)
        except rasterio.errors.RasterioError as exc:
            raise DatasetError(
                f.path, "(file)", f"unreadable raster data: {exc}", "re-export it as GeoTIFF"
            ) from exc
        return rows, cols, data

    def _block(self, br: int, bc: int) -> np.ndarray:
        key = (br, bc)
        block = self._cache.get(key)
        if block is not None:
            self.hits += 1
            self._cache.move_to_end(key)
            return block
        self.misses += 1
        block = self._read_block(br, bc)
        self._cache[key] = block
        while len(self._cache) > self.max_blocks:
            self._cache.popitem(last=False)
        return block

    # --- windows --------------------------------------------------------------------------
    def raw_window(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        """Float32 ``(C, h, w)`` of the window with upper-left global pixel ``(r0, c0)``;
        NaN where no file has a valid value."""
        bp = self.block_px
        out = np.empty((self.n_bands, h, w), dtype=np.float32)
        for br in range(r0 // bp, (r0 + h - 1) // bp + 1):
            for bc in range(c0 // bp, (c0 + w - 1) // bp + 1):
                block = self._block(br, bc)
                rr0, rr1 = max(r0, br * bp), min(r0 + h, (br + 1) * bp)
                cc0, cc1 = max(c0, bc * bp), min(c0 + w, (bc + 1) * bp)
                out[:, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = block[
                    :, rr0 - br * bp : rr1 - br * bp, cc0 - bc * bp : cc1 - bc * bp
                ]
        return out

    def window(self, r0: int, c0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image, valid)`` of a window: float32 values with 0 where invalid, and the
        per-band validity mask (False on no-data and outside every raster)."""
        raw = self.raw_window(r0, c0, h, w)
        valid = ~np.isnan(raw)
        return np.where(valid, raw, np.float32(0.0)), valid

    def window_at(self, x: float, y: float, size_px: int) -> tuple[np.ndarray, np.ndarray, tuple]:
        """A ``size_px`` window centred on the pixel holding ``(x, y)``: image, valid, bounds
        ``(xmin, xmax, ymin, ymax)``."""
        row, col = self.grid.pixel_of(np.array([x]), np.array([y]))
        r0, c0 = int(row[0]) - size_px // 2, int(col[0]) - size_px // 2
        image, valid = self.window(r0, c0, size_px, size_px)
        return image, valid, self.grid.bounds_of(r0, c0, size_px, size_px)

    def extent(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of all files of all modalities, in the target CRS."""
        bounds = np.array([f.bounds for files in self._files for f in files])
        return (
            float(bounds[:, 0].min()),
            float(bounds[:, 1].min()),
            float(bounds[:, 2].max()),
            float(bounds[:, 3].max()),
        )

    @property
    def cached_mb(self) -> float:
        """Memory held by the block cache."""
        return sum(b.nbytes for b in self._cache.values()) / 2**20


def _close_all(handles: OrderedDict[str, Any]) -> None:
    for handle in handles.values():
        with contextlib.suppress(Exception):  # closing at exit must never raise
            handle.close()
    handles.clear()


class PedonSampler(SpatialSampler):
    """Yield one chip-sized slice per pedon, snapped to the grid and centred on its pixel.

    Args:
        dataset: the raster dataset (or stack) that the slices address.
        x, y: pedon coordinates in the dataset CRS.
        chip_size_px: chip side in pixels.
        grid: pixel grid of the dataset.
        jitter_px: maximum random shift of the chip, in whole pixels (0 for evaluation).
        seed: seed of the jitter; the same seed and epoch give the same chips.
    """

    strategy = "sequential"

    def __init__(
        self,
        dataset: GeoDataset,
        x: np.ndarray,
        y: np.ndarray,
        chip_size_px: int,
        grid: GridSpec,
        jitter_px: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset)
        if chip_size_px < 1:
            raise ValueError(f"chip_size_px must be positive, got {chip_size_px}")
        # The pedon's pixel must stay inside the chip: at most (size - 1) // 2 pixels of shift.
        if jitter_px < 0 or jitter_px > (chip_size_px - 1) // 2:
            raise ValueError(
                f"jitter_px must be in [0, {(chip_size_px - 1) // 2}], got {jitter_px}"
            )
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        self.chip_size_px = int(chip_size_px)
        self.jitter_px = int(jitter_px)
        self.seed = seed
        self.epoch = 0
        self.grid = grid
        self.row, self.col = grid.pixel_of(self.x, self.y)

    def set_epoch(self, epoch: int) -> None:
        """Draw a new jitter per epoch (deterministic in ``seed`` and ``epoch``)."""
        self.epoch = epoch

    def offset(self, i: int) -> tuple[int, int]:
        """Upper-left (row, col) of chip ``i`` in the global grid."""
        half = self.chip_size_px // 2
        dr = dc = 0
        if self.jitter_px:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            dr, dc = rng.integers(-self.jitter_px, self.jitter_px + 1, size=2)
        return int(self.row[i] - half + dr), int(self.col[i] - half + dc)

    def window(self, i: int) -> tuple[slice, slice]:
        """The ``[xmin:xmax:res, ymin:ymax:res]`` slice of chip ``i``."""
        r0, c0 = self.offset(i)
        s = self.chip_size_px
        xmin, xmax, ymin, ymax = self.grid.bounds_of(r0, c0, s, s)
        return slice(xmin, xmax, self.grid.res), slice(ymin, ymax, self.grid.res)

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        """One slice per pedon, in pedon order."""
        for i in range(len(self)):
            yield self.window(i)

    def __len__(self) -> int:
        """Number of pedons."""
        return len(self.x)


class PedonChipDataset(Dataset[dict[str, Any]]):
    """Chips of the stacked rasters centred on pedons, with labels, masks and metadata.

    Args:
        source: the dataset's :class:`ChipSource` (share one between datasets: its cache is
            bounded and reused).
        pedons: frame with columns ``id``, ``x``, ``y`` and optionally ``target`` (class index)
            and region columns.
        chip_size_px: chip side in pixels.
        jitter_px: random whole-pixel shift for training (0, the default, for evaluation).
        seed: jitter seed.
        region_columns: columns of ``pedons`` to return under ``regions``.
    """

    def __init__(
        self,
        source: ChipSource,
        pedons: pd.DataFrame,
        chip_size_px: int,
        jitter_px: int = 0,
        seed: int = 0,
        region_columns: Sequence[str] = (),
    ) -> None:
        self.source = source
        self.pedons = pedons.reset_index(drop=True)
        self.region_columns = list(region_columns)
        self.grid = source.grid
        self.band_names = source.band_names
        self.sampler = PedonSampler(
            source.stack,
            self.pedons["x"].to_numpy(),
            self.pedons["y"].to_numpy(),
            chip_size_px,
            grid=self.grid,
            jitter_px=jitter_px,
            seed=seed,
        )
        self._x = self.pedons["x"].to_numpy(dtype=np.float64)
        self._y = self.pedons["y"].to_numpy(dtype=np.float64)
        self._ids = self.pedons["id"].tolist()
        self.targets = (
            torch.tensor(self.pedons["target"].to_numpy(dtype=np.int64))
            if "target" in self.pedons
            else None
        )

    def __len__(self) -> int:
        """Number of pedons (chips)."""
        return len(self.pedons)

    def set_epoch(self, epoch: int) -> None:
        """Change the jitter draw (training)."""
        self.sampler.set_epoch(epoch)

    def geometry(self, i: int) -> tuple[int, int, tuple[float, float, float, float], np.ndarray]:
        """Where chip ``i`` lies this epoch, without reading it: its upper-left global pixel
        ``(row, col)``, its bounds ``(xmin, xmax, ymin, ymax)`` and the pedon's position in it,
        ``(2,)`` float32 in [-1, 1] (x right, y down)."""
        size = self.sampler.chip_size_px
        r0, c0 = self.sampler.offset(i)
        xmin, xmax, ymin, ymax = self.grid.bounds_of(r0, c0, size, size)
        x, y = self._x[i], self._y[i]
        query = np.array(
            [2.0 * (x - xmin) / (xmax - xmin) - 1.0, 2.0 * (ymax - y) / (ymax - ymin) - 1.0],
            dtype=np.float32,
        )
        return r0, c0, (xmin, xmax, ymin, ymax), query

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample ``i``: ``image`` (C, H, W) float32 (raw values, 0 where invalid), ``valid``
        (C, H, W) bool, ``query_xy`` (2,) in [-1, 1], ``coords`` (2,), ``id``, ``label`` (when
        the pedons carry a ``target``), ``regions`` and ``bounds`` (xmin, xmax, ymin, ymax)."""
        size = self.sampler.chip_size_px
        r0, c0, bounds, query = self.geometry(i)
        image, valid = self.source.window(r0, c0, size, size)
        ident = self._ids[i]
        sample: dict[str, Any] = {
            "image": torch.from_numpy(image),
            "valid": torch.from_numpy(valid),
            "query_xy": torch.from_numpy(query),
            "coords": torch.tensor([self._x[i], self._y[i]], dtype=torch.float64),
            "id": ident.item() if isinstance(ident, np.generic) else ident,
            "bounds": torch.tensor(bounds, dtype=torch.float64),
            "regions": {c: str(self.pedons.at[i, c]) for c in self.region_columns},
        }
        if self.targets is not None:
            sample["label"] = self.targets[i]
        return sample
