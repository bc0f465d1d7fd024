"""The model registry: tree models, honest baselines, and MISO with its ablations."""

from . import miso as _miso  # noqa: F401  (registers MISO and its ablations)
from . import trees as _trees  # noqa: F401  (registers the tree models)
from .base import MODELS, ModelEntry, TabularModel, build_model, register_model

__all__ = ["MODELS", "ModelEntry", "TabularModel", "build_model", "register_model"]
