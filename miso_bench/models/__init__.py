"""The model registry: tree models, honest baselines, and MISO with its ablations.

Models of your own: register them (``register_model``) in a module of yours and list it in
``$MISO_BENCH_PLUGINS`` (comma-separated module names); every miso-bench process imports
them, worker processes of sweeps and data-parallel fits included.
"""

import importlib as _importlib
import os as _os

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


def _load_plugins() -> None:
    from ..errors import MisoBenchError

    for name in filter(
        None, (m.strip() for m in _os.environ.get("MISO_BENCH_PLUGINS", "").split(","))
    ):
        try:
            _importlib.import_module(name)
        except ImportError as exc:
            raise MisoBenchError(
                f"$MISO_BENCH_PLUGINS: cannot import {name!r} ({exc}) (fix: put the module "
                "on PYTHONPATH or remove it from the list)"
            ) from exc


_load_plugins()
