"""The deterministic synthetic Alaska: the suite's embedded default dataset."""

from .generate import GENERATOR_VERSION, generate_synthetic_alaska
from .sites import PRESETS, SITES, Preset, Site

__all__ = ["GENERATOR_VERSION", "PRESETS", "SITES", "Preset", "Site", "generate_synthetic_alaska"]
