"""The model registry: tree models, honest baselines and (later) MISO with its ablations."""

from . import trees as _trees  # noqa: F401  (registers the tree models)
from .base import MODELS, ModelEntry, TabularModel, build_model, register_model

__all__ = ["MODELS", "ModelEntry", "TabularModel", "build_model", "register_model"]
