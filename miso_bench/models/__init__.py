"""The model registry: tree models, honest baselines, and MISO with its ablations."""

from . import miso as _miso  # noqa: F401  (registers MISO and its ablations)
from . import trees as _trees  # noqa: F401  (registers the tree models)
from .base import (
    MODELS,
    ChipModel,
    FoldContext,
    ModelEntry,
    TabularModel,
    build_model,
    deep_merge,
    load_fitted,
    register_model,
    save_fitted,
)

__all__ = [
    "MODELS",
    "ChipModel",
    "FoldContext",
    "ModelEntry",
    "TabularModel",
    "build_model",
    "deep_merge",
    "load_fitted",
    "register_model",
    "save_fitted",
]
