"""Caches under ``$MISO_BENCH_HOME/cache``: dataset fingerprints, point features and band
statistics.

A dataset's fingerprint is a SHA-256 over its manifest and the bytes of every file it names.
Hashing gigabytes of rasters on every run would cost more than a forest's cross-validation, so
the full hash is kept under a cheap key (the manifest's bytes plus each file's name, size and
modification time): a repeated run reads the cached hash, and any change of a file's size or
time recomputes it. Point features (what tree models read) are cached per fingerprint,
window and point set, so a dataset's pedons are read from the rasters once; a dataset's
normalisation statistics (a strided sample of every raster) per fingerprint. Each cached value
is keyed by the code that computes it too: an upgrade that changes it never reads an older
version's value.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..config import home_dir
from .manifest import DatasetManifest

if TYPE_CHECKING:
    from .normalization import BandStats

__all__ = [
    "cache_dir",
    "cached_band_stats",
    "cached_feature_table",
    "dataset_files",
    "dataset_fingerprint",
]


def cache_dir(*parts: str) -> Path:
    """A folder under ``$MISO_BENCH_HOME/cache`` (created)."""
    path = home_dir().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def dataset_files(manifest: DatasetManifest) -> list[Path]:
    """Every file a manifest names: rasters, pedons, region layers and the truth sample."""
    files: list[Path] = []
    for name in manifest.modalities:
        files += manifest.modality_files(name)
    files.append(manifest.resolve(manifest.pedons.file))
    files += [manifest.resolve(r.file) for r in manifest.regions.values()]
    if manifest.truth_file:
        files.append(manifest.resolve(manifest.truth_file))
    return files


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def dataset_fingerprint(
    manifest: DatasetManifest, chunk: int = 1 << 20, use_cache: bool = True
) -> str:
    """SHA-256 (first 16 hex digits) over the manifest and the bytes of every file it names.

    The result is cached under a key of file names, sizes and modification times, so only the
    first call on unchanged files reads them.
    """
    files = dataset_files(manifest)
    manifest_bytes = manifest.path.read_bytes()
    quick = hashlib.sha256(manifest_bytes)
    for path in files:
        quick.update(str(path).encode())
        if path.is_file():
            st = path.stat()
            quick.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    key_file = cache_dir("fingerprints") / f"{quick.hexdigest()[:32]}.txt" if use_cache else None
    if key_file is not None and key_file.is_file():
        cached = key_file.read_text().strip()
        if len(cached) == 16:
            return cached
    h = hashlib.sha256(manifest_bytes)
    for path in files:
        h.update(path.name.encode())
        if path.is_file():
            with path.open("rb") as fh:
                while block := fh.read(chunk):
                    h.update(block)
    digest = h.hexdigest()[:16]
    if key_file is not None:
        _write_atomic(key_file, digest.encode())
    return digest


def _code(*modules: object) -> str:
    """A hash of the modules whose code decides a cached value."""
    h = hashlib.sha256()
    for module in modules:
        h.update(Path(str(getattr(module, "__file__", ""))).read_bytes())
    return h.hexdigest()[:8]


def _features_code() -> str:
    from . import features, manifest

    return _code(features, manifest)


def cached_band_stats(manifest: DatasetManifest, fingerprint: str) -> dict[str, BandStats]:
    """:func:`~miso_bench.data.normalization.compute_band_stats` of the dataset, read from the
    cache when the same dataset's statistics were computed before by the same code."""
    from . import manifest as manifest_module
    from . import normalization
    from .normalization import BandStats, compute_band_stats

    path = cache_dir("band_stats", fingerprint) / f"{_code(normalization, manifest_module)}.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            stats = {b: BandStats(**v) for b, v in raw.items()}
            if list(stats) == list(manifest.band_names):
                return stats
        except (OSError, ValueError, TypeError):  # a damaged cache file is recomputed
            pass
    stats = compute_band_stats(manifest)
    _write_atomic(path, json.dumps({b: asdict(v) for b, v in stats.items()}).encode())
    return stats


def cached_feature_table(
    manifest: DatasetManifest,
    fingerprint: str,
    x: np.ndarray,
    y: np.ndarray,
    window_px: int = 1,
) -> pd.DataFrame:
    """:func:`~miso_bench.data.features.feature_table` at the points, read from the cache when
    the same dataset, window and points were read before."""
    from .features import feature_table

    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    points = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()[:16]
    # The code that computes the values is part of the key: an upgrade that changes them
    # (a no-data or overlap rule) never reads an older version's cached values.
    path = cache_dir("features", fingerprint) / f"{_features_code()}-w{window_px}-{points}.parquet"
    if path.is_file():
        try:
            frame = pd.read_parquet(path)
            if len(frame) == len(x):
                return frame
        except (OSError, ValueError):  # a damaged cache file is recomputed
            pass
    frame = feature_table(manifest, x, y, window_px=window_px)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".parquet")
    os.close(fd)
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return frame
