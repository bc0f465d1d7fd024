"""Hyperparameter search: Optuna sweeps scored by nested spatial cross-validation (the only
package that imports optuna)."""

from .space import Dimension, SearchSpace, SearchSpaceError, load_search_space, space_file
from .sweep import (
    SweepResult,
    SweepSettings,
    best_params,
    default_storage,
    join_sweep,
    outer_folds,
    run_sweep,
    study_name,
    tuned_on,
    usable_space,
)

__all__ = [
    "Dimension",
    "SearchSpace",
    "SearchSpaceError",
    "SweepResult",
    "SweepSettings",
    "best_params",
    "default_storage",
    "join_sweep",
    "load_search_space",
    "outer_folds",
    "run_sweep",
    "space_file",
    "study_name",
    "tuned_on",
    "usable_space",
]
