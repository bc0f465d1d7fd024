"""Project-wide locations and defaults (no project imports).

``MISO_BENCH_HOME`` (default ``./.miso-bench``) holds everything the suite generates: the
synthetic datasets under ``data/``, and later the tracking store and run artifacts.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_PRESET", "DEFAULT_SEED", "default_dataset_dir", "home_dir"]

#: Preset of the embedded default dataset.
DEFAULT_PRESET = "default"
#: Seed of the embedded default dataset.
DEFAULT_SEED = 0


def home_dir() -> Path:
    """Root folder of generated data and runs (``$MISO_BENCH_HOME`` or ``./.miso-bench``)."""
    return Path(os.environ.get("MISO_BENCH_HOME", ".miso-bench")).expanduser().resolve()


def default_dataset_dir(preset: str = DEFAULT_PRESET, seed: int = DEFAULT_SEED) -> Path:
    """Cache folder of a generated synthetic Alaska dataset."""
    return home_dir() / "data" / f"synthetic-alaska-{preset}-seed{seed}"
