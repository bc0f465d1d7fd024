"""Per-band normalisation statistics computed from the data (robust percentiles).

The reference min-max scaled every covariate over extreme clip ranges, which squashed stream
power, TPI and curvature to near-constants (normalised std < 0.01). Here each band is centred
on its median and scaled by its 2-98 % range; heavily skewed bands (stream power) are first
passed through ``asinh`` so that their bulk keeps its spread. Categorical bands are left as
codes. Statistics come from a strided sample of valid pixels of every file and are stored as
JSON next to the run that used them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError
from .manifest import DatasetManifest, raster_nodata, read_masked

__all__ = ["BandStats", "Normalizer", "compute_band_stats"]

#: Skewness above which a band is log-like transformed (asinh) before scaling.
SKEW_THRESHOLD = 5.0


@dataclass(frozen=True)
class BandStats:
    """Robust statistics of one band (after its transform, when ``transform == "asinh"``).

    Attributes:
        band: band name.
        transform: ``none`` or ``asinh`` (applied before centring and scaling).
        p02, p50, p98: 2nd, 50th and 98th percentiles of the valid pixels.
        raw_mean, raw_std: mean and standard deviation of the raw valid pixels.
        n_valid: number of sampled valid pixels.
        categorical: band holds class codes (not scaled).
    """

    band: str
    transform: str
    p02: float
    p50: float
    p98: float
    raw_mean: float
    raw_std: float
    n_valid: int
    categorical: bool = False

    @property
    def scale(self) -> float:
        """Divisor of the centred values (the 2-98 % range, floored to avoid division by 0)."""
        return max(self.p98 - self.p02, 1e-6)


def _sample_band_values(
    manifest: DatasetManifest, max_pixels_per_file: int
) -> dict[str, list[np.ndarray]]:
    import rasterio

    values: dict[str, list[np.ndarray]] = {b: [] for b in manifest.band_names}
    for name, spec in manifest.modalities.items():
        files = manifest.modality_files(name, required=True)
        for path in files:
            try:
                # Full-resolution pixels, not the file's (resampled) overviews.
                with rasterio.open(path, OVERVIEW_LEVEL="NONE") as src:
                    if src.count != len(spec.bands):
                        raise DatasetError(
                            path,
                            f"modalities.{name}.bands",
                            f"file has {src.count} bands, the manifest lists {len(spec.bands)}",
                            "list one band name per band in file order",
                        )
                    step = max(1, int(np.sqrt(src.width * src.height / max_pixels_per_file)))
                    shape = (src.count, max(1, src.height // step), max(1, src.width // step))
                    nodata = raster_nodata(spec.nodata, src, path, name)
                    data = read_masked(
                        src,
                        nodata,
                        out_shape=shape,
                        resampling=rasterio.enums.Resampling.nearest,
                    )
            except rasterio.errors.RasterioError as exc:
                raise DatasetError(
                    path,
                    "(file)",
                    f"unreadable raster: {exc}",
                    "run `miso-bench data check` and fix what it reports",
                ) from exc
            for j, band in enumerate(spec.bands):
                v = data[j].ravel()
                values[band].append(v[~np.isnan(v)])
    return values


def compute_band_stats(
    manifest: DatasetManifest, max_pixels_per_file: int = 250_000
) -> dict[str, BandStats]:
    """Robust statistics of every band of a dataset, from a strided sample of valid pixels."""
    categorical = {b for spec in manifest.modalities.values() for b in spec.categorical}
    stats: dict[str, BandStats] = {}
    for band, chunks in _sample_band_values(manifest, max_pixels_per_file).items():
        v = np.concatenate(chunks) if chunks else np.empty(0)
        if v.size == 0:
            stats[band] = BandStats(band, "none", 0.0, 0.0, 1.0, 0.0, 0.0, 0, band in categorical)
            continue
        raw_mean, raw_std = float(v.mean()), float(v.std())
        skew = float(np.mean(((v - raw_mean) / (raw_std + 1e-12)) ** 3))
        transform = "asinh" if abs(skew) > SKEW_THRESHOLD and band not in categorical else "none"
        t = np.arcsinh(v) if transform == "asinh" else v
        p02, p50, p98 = (float(q) for q in np.percentile(t, [2, 50, 98]))
        stats[band] = BandStats(
            band, transform, p02, p50, p98, raw_mean, raw_std, int(v.size), band in categorical
        )
    return stats


class Normalizer:
    """Apply :class:`BandStats` to arrays or tensors shaped ``(..., C, H, W)`` or ``(N, C)``.

    Values are transformed, centred on the median, divided by the 2-98 % range and clipped to
    ``[-clip, clip]``; categorical bands pass through. Invalid pixels (per the mask) become 0
    *after* normalisation, and the mask travels with the sample, so nothing is silently
    zero-filled.

    Args:
        stats: statistics per band.
        bands: band order of the inputs.
        clip: absolute clip value of normalised data.
    """

    def __init__(self, stats: dict[str, BandStats], bands: list[str], clip: float = 5.0) -> None:
        missing = [b for b in bands if b not in stats]
        if missing:
            raise KeyError(f"no statistics for bands {missing}")
        self.bands = list(bands)
        self.stats = stats
        self.clip = clip
        self.center = np.array([stats[b].p50 for b in bands], dtype=np.float32)
        self.scale = np.array([stats[b].scale for b in bands], dtype=np.float32)
        self.asinh = np.array([stats[b].transform == "asinh" for b in bands])
        self.categorical = np.array([stats[b].categorical for b in bands])

    def _shape(self, arr: np.ndarray, channel_axis: int) -> tuple[int, ...]:
        shape = [1] * arr.ndim
        shape[channel_axis] = -1
        return tuple(shape)

    def __call__(
        self,
        x: np.ndarray | torch.Tensor,
        valid: np.ndarray | torch.Tensor | None = None,
        channel_axis: int = -3,
        channels: Sequence[int] | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Normalise ``x``; ``valid`` (same shape, bool) marks usable pixels; ``channels``
        selects the bands to normalise and return (all by default). Tensors are normalised in
        torch (same values to float rounding), arrays in numpy."""
        sel = slice(None) if channels is None else list(channels)
        center, scale = self.center[sel], self.scale[sel]
        asinh, cat = self.asinh[sel], self.categorical[sel]
        if isinstance(x, torch.Tensor):
            return self._torch(x, valid, channel_axis, channels, center, scale, asinh, cat)
        arr = np.asarray(x)
        if channels is not None:
            arr = np.take(arr, list(channels), axis=channel_axis)
            if valid is not None:
                valid = np.take(np.asarray(valid), list(channels), axis=channel_axis)
        arr = arr.astype(np.float32, copy=True)
        shape = self._shape(arr, channel_axis)
        if asinh.any():  # only the bands that use it (often one of many)
            pick: list[Any] = [slice(None)] * arr.ndim
            pick[channel_axis] = np.flatnonzero(asinh)
            arr[tuple(pick)] = np.arcsinh(arr[tuple(pick)])
        out = np.clip((arr - center.reshape(shape)) / scale.reshape(shape), -self.clip, self.clip)
        cat_b = np.broadcast_to(cat.reshape(shape), arr.shape)
        out = np.where(cat_b, arr, out)
        if valid is not None:
            out = np.where(np.asarray(valid), out, 0.0)
        return np.nan_to_num(out, nan=0.0).astype(np.float32)

    def _torch(
        self,
        x: torch.Tensor,
        valid: np.ndarray | torch.Tensor | None,
        channel_axis: int,
        channels: Sequence[int] | None,
        center: np.ndarray,
        scale: np.ndarray,
        asinh: np.ndarray,
        cat: np.ndarray,
    ) -> torch.Tensor:
        arr = x.detach()
        v = None if valid is None else torch.as_tensor(valid, device=arr.device)
        if channels is not None:
            index = torch.tensor(list(channels), device=arr.device)
            arr = arr.index_select(channel_axis % arr.ndim, index)
            if v is not None:
                v = v.index_select(channel_axis % v.ndim, index)
        arr = arr.to(torch.float32)
        shape = [1] * arr.ndim
        shape[channel_axis] = -1

        def const(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(arr.device).reshape(shape)

        if asinh.any():  # only the bands that use it (often one of many)
            dim = channel_axis % arr.ndim
            index = torch.from_numpy(np.flatnonzero(asinh)).to(arr.device)
            arr = arr.index_copy(dim, index, torch.asinh(arr.index_select(dim, index)))
        out = ((arr - const(center)) / const(scale)).clamp(-self.clip, self.clip)
        if cat.any():
            out = torch.where(const(cat), arr, out)
        if v is not None:
            out = torch.where(v, out, 0.0)
        return torch.nan_to_num(out, nan=0.0)

    def to_json(self, path: str | Path) -> Path:
        """Write the statistics (for the run record)."""
        target = Path(path)
        target.write_text(json.dumps({b: asdict(self.stats[b]) for b in self.bands}, indent=1))
        return target

    @classmethod
    def from_json(cls, path: str | Path, clip: float = 5.0) -> Normalizer:
        """Read statistics written by :meth:`to_json`."""
        raw = json.loads(Path(path).read_text())
        stats = {b: BandStats(**v) for b, v in raw.items()}
        return cls(stats, list(raw), clip=clip)
