"""A chip per pedon: the sampler and dataset that torchgeo lacks (its PR #800 was not merged).

:class:`PedonSampler` is a torchgeo sampler that yields, for each pedon, a chip-sized slice
snapped to the raster grid and centred on the pixel that contains the pedon (optionally
jittered by whole pixels for training). :class:`PedonChipDataset` turns those slices into
training/evaluation samples: the stacked bands, a per-band validity mask (no-data and
outside-raster pixels are *masked*, never silently zero-filled), the label, the pedon's
position inside the chip in [-1, 1], its CRS coordinates, its id and its regions.

Position convention (as ``torch.nn.functional.grid_sample`` with ``align_corners=False``):
``(-1, -1)`` is the upper-left corner of the chip, ``(1, 1)`` the lower-right; x grows east
and y grows south, so the centre of pixel ``(row, col)`` is at
``((2 col + 1) / size - 1, (2 row + 1) / size - 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import shapely
import torch
from shapely.prepared import prep
from torch.utils.data import Dataset
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import SpatialSampler

from .manifest import nodata_in_dtype
from .rasters import ManifestRaster

__all__ = [
    "FootprintCache",
    "GridSpec",
    "PedonChipDataset",
    "PedonSampler",
    "band_fill",
    "grid_of",
    "valid_pixels",
]


@dataclass(frozen=True)
class GridSpec:
    """A regular pixel grid: pixel edges at ``x0 + k * res`` and ``y0 - k * res``."""

    x0: float
    y0: float
    res: float

    def pixel_of(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global (row, col) of the pixels containing the points."""
        col = np.floor((np.asarray(x) - self.x0) / self.res).astype(np.int64)
        row = np.floor((self.y0 - np.asarray(y)) / self.res).astype(np.int64)
        return row, col


def band_fill(parts: Sequence[ManifestRaster]) -> np.ndarray:
    """Per-band no-data value as the pixels hold it (float32; NaN when a modality has none)."""
    values = [nodata_in_dtype(p.spec.nodata, p.spec.dtype) for p in parts for _ in p.bands]
    return np.array([np.nan if v is None else v for v in values], dtype=np.float32)


def valid_pixels(image: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` bool: not NaN and not the band's no-data value (``fill`` from
    :func:`band_fill`; NaN there means the band has no no-data value)."""
    nod = fill[:, None, None]
    return np.where(np.isnan(nod), True, image != nod) & ~np.isnan(image)


def grid_of(parts: Sequence[ManifestRaster]) -> GridSpec:
    """The sampling grid of a stack: the first file's pixel edges at the stack resolution."""
    first = parts[0]
    path = first.index.iloc[0]["filepath"]
    with rasterio.open(path) as src:
        res = float(first.res[0])
        return GridSpec(float(src.transform.c) % res, float(src.transform.f) % res, res)


class PedonSampler(SpatialSampler):
    """Yield one chip-sized slice per pedon, snapped to the grid and centred on its pixel.

    Args:
        dataset: the raster dataset (or stack) that will be indexed with the slices.
        x, y: pedon coordinates in the dataset CRS.
        chip_size_px: chip side in pixels.
        grid: pixel grid of the dataset (default: from ``dataset``'s first file).
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
        grid: GridSpec | None = None,
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
        if grid is None:
            parts = getattr(dataset, "datasets", [dataset])
            while hasattr(parts[0], "datasets"):
                parts = parts[0].datasets
            grid = grid_of(parts)
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
        g, s = self.grid, self.chip_size_px
        xmin = g.x0 + c0 * g.res
        ymax = g.y0 - r0 * g.res
        return slice(xmin, xmin + s * g.res, g.res), slice(ymax - s * g.res, ymax, g.res)

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        """One slice per pedon, in pedon order."""
        for i in range(len(self)):
            yield self.window(i)

    def __len__(self) -> int:
        """Number of pedons."""
        return len(self.x)


class FootprintCache:
    """Every file footprint of a stack read once into memory (numpy), for fast chipping."""

    def __init__(self, stack: GeoDataset, grid: GridSpec, fill: np.ndarray) -> None:
        self.grid = grid
        self.fill = fill
        self.blocks: list[tuple[int, int, np.ndarray]] = []
        geoms = shapely.get_parts(stack.index.geometry.union_all())
        for geom in geoms:
            xmin, ymin, xmax, ymax = geom.bounds
            c0 = math.floor((xmin - grid.x0) / grid.res + 1e-6)
            c1 = math.ceil((xmax - grid.x0) / grid.res - 1e-6)
            r0 = math.floor((grid.y0 - ymax) / grid.res + 1e-6)
            r1 = math.ceil((grid.y0 - ymin) / grid.res - 1e-6)
            xs = slice(grid.x0 + c0 * grid.res, grid.x0 + c1 * grid.res, grid.res)
            ys = slice(grid.y0 - r1 * grid.res, grid.y0 - r0 * grid.res, grid.res)
            image = stack[xs, ys]["image"].numpy()
            self.blocks.append((r0, c0, image))

    def chip(self, r0: int, c0: int, size: int) -> np.ndarray | None:
        """The chip with upper-left global pixel ``(r0, c0)``; None when it spans two blocks."""
        hits = [
            (br, bc, arr)
            for br, bc, arr in self.blocks
            if r0 < br + arr.shape[1]
            and br < r0 + size
            and c0 < bc + arr.shape[2]
            and bc < c0 + size
        ]
        if len(hits) > 1:
            return None  # let torchgeo mosaic across neighbouring files
        out = np.broadcast_to(self.fill[:, None, None], (len(self.fill), size, size)).copy()
        for br, bc, arr in hits:
            h, w = arr.shape[1:]
            rr0, cc0 = r0 - br, c0 - bc
            src_r = slice(max(rr0, 0), min(rr0 + size, h))
            src_c = slice(max(cc0, 0), min(cc0 + size, w))
            out[:, src_r.start - rr0 : src_r.stop - rr0, src_c.start - cc0 : src_c.stop - cc0] = (
                arr[:, src_r, src_c]
            )
        return out


class PedonChipDataset(Dataset[dict[str, Any]]):
    """Chips of the stacked rasters centred on pedons, with labels, masks and metadata.

    Args:
        stack: the stacked raster dataset (see :func:`~miso_bench.data.rasters.open_stack`).
        parts: the per-modality datasets of the stack (for band names and no-data values).
        pedons: frame with columns ``id``, ``x``, ``y`` and optionally ``target`` (class index)
            and region columns.
        chip_size_px: chip side in pixels.
        jitter_px: random whole-pixel shift for training (0, the default, for evaluation).
        seed: jitter seed.
        region_columns: columns of ``pedons`` to return under ``regions``.
        preload: read every file footprint once into memory and cut chips from it (fast for
            training), or pass the :attr:`cache` of another dataset of the same stack to share
            it; otherwise each chip is a torchgeo slice query.
    """

    def __init__(
        self,
        stack: GeoDataset,
        parts: Sequence[ManifestRaster],
        pedons: pd.DataFrame,
        chip_size_px: int,
        jitter_px: int = 0,
        seed: int = 0,
        region_columns: Sequence[str] = (),
        preload: bool | FootprintCache = False,
    ) -> None:
        self.stack = stack
        self.parts = list(parts)
        self.pedons = pedons.reset_index(drop=True)
        self.region_columns = list(region_columns)
        self.grid = grid_of(self.parts)
        self.sampler = PedonSampler(
            stack,
            self.pedons["x"].to_numpy(),
            self.pedons["y"].to_numpy(),
            chip_size_px,
            grid=self.grid,
            jitter_px=jitter_px,
            seed=seed,
        )
        self.band_names = [b for p in self.parts for b in p.bands]
        # No-data as the pixels hold it: float32 files store -3e38 as -3.0000000054977558e38.
        self._nodata = band_fill(self.parts)
        # Outside every raster, torchgeo's merge writes the file's no-data value, or 0 when a
        # file has none; the footprint test below masks those pixels either way.
        self._fill = self._nodata
        self._footprint = stack.index.geometry.union_all()
        self._footprint_prep = prep(self._footprint)
        if isinstance(preload, FootprintCache):
            self._cache: FootprintCache | None = preload  # shared between datasets
        else:
            self._cache = FootprintCache(stack, self.grid, self._fill) if preload else None
        self.targets = (
            torch.tensor(self.pedons["target"].to_numpy(dtype=np.int64))
            if "target" in self.pedons
            else None
        )

    @property
    def cache(self) -> FootprintCache | None:
        """The in-memory footprint cache (``preload``), to share with other datasets."""
        return self._cache

    def __len__(self) -> int:
        """Number of pedons (chips)."""
        return len(self.pedons)

    def set_epoch(self, epoch: int) -> None:
        """Change the jitter draw (training)."""
        self.sampler.set_epoch(epoch)

    def _read(self, i: int) -> tuple[np.ndarray, tuple[slice, slice]]:
        xs, ys = self.sampler.window(i)
        if self._cache is not None:
            r0, c0 = self.sampler.offset(i)
            chip = self._cache.chip(r0, c0, self.sampler.chip_size_px)
            if chip is not None:
                return chip, (xs, ys)
        try:
            return self.stack[xs, ys]["image"].numpy(), (xs, ys)
        except IndexError:  # the chip lies outside every raster: all of it is masked
            size = self.sampler.chip_size_px
            return np.broadcast_to(
                self._fill[:, None, None], (len(self._fill), size, size)
            ).copy(), (
                xs,
                ys,
            )

    def _valid(self, image: np.ndarray, xs: slice, ys: slice) -> np.ndarray:
        valid = valid_pixels(image, self._nodata)
        box = shapely.box(xs.start, ys.start, xs.stop, ys.stop)
        if not self._footprint_prep.covers(box):
            size = image.shape[-1]
            centres = xs.start + (np.arange(size) + 0.5) * self.grid.res
            rows = ys.stop - (np.arange(size) + 0.5) * self.grid.res
            gx, gy = np.meshgrid(centres, rows)
            inside = shapely.contains_xy(self._footprint, gx, gy)
            valid &= inside[None]
        return valid

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample ``i``: ``image`` (C, H, W) float32 with raw values, ``valid`` (C, H, W) bool,
        ``query_xy`` (2,) in [-1, 1], ``coords`` (2,) CRS metres, ``id``, ``label`` (when the
        pedons carry a ``target``), ``regions`` and ``bounds``."""
        image, (xs, ys) = self._read(i)
        image = image.astype(np.float32, copy=False)
        valid = self._valid(image, xs, ys)
        row = self.pedons.iloc[i]
        size_m = self.sampler.chip_size_px * self.grid.res
        query = np.array(
            [2.0 * (row["x"] - xs.start) / size_m - 1.0, 2.0 * (ys.stop - row["y"]) / size_m - 1.0],
            dtype=np.float32,
        )
        sample: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "valid": torch.from_numpy(valid),
            "query_xy": torch.from_numpy(query),
            "coords": torch.tensor([row["x"], row["y"]], dtype=torch.float64),
            "id": row["id"] if not isinstance(row["id"], np.generic) else row["id"].item(),
            "bounds": torch.tensor([xs.start, xs.stop, ys.start, ys.stop], dtype=torch.float64),
            "regions": {c: str(row[c]) for c in self.region_columns},
        }
        if self.targets is not None:
            sample["label"] = self.targets[i]
        return sample
