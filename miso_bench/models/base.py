"""The model contract and registry shared by tree models and deep models.

Every model speaks scikit-learn's estimator contract: ``__init__`` stores arguments,
``fit`` returns ``self``, learned state ends in ``_``, and ``predict_proba`` returns one
column per class of the task (``n_classes``), even when a training fold lacks a class.
Models that need a validation set (early stopping, tuning) say so with
``needs_validation = True``; the runner then passes a spatial validation split carved from
the training fold only (never the test fold).

Registry entries are small functions over one implementation class (the timm pattern): each
variant overrides a dict of arguments, so a new variant or ablation is a few lines and is
covered by the tests that parametrize over the whole registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from ..errors import MisoBenchError
from ..registry import Registry

__all__ = [
    "MODELS",
    "ModelEntry",
    "TabularModel",
    "build_model",
    "register_model",
]


class TabularModel(ClassifierMixin, BaseEstimator):
    """Base of models that learn from a feature table (one row per pedon).

    Subclasses implement :meth:`_fit` and :meth:`_predict_proba` on classes encoded
    ``0..m-1`` over the classes present in the training fold; this base maps them back to the
    task's ``n_classes`` columns.
    """

    needs_validation = False
    n_classes: int

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        X_val: pd.DataFrame | None = None,
        y_val: np.ndarray | None = None,
    ) -> TabularModel:
        """Fit on ``(X, y)``; ``(X_val, y_val)`` is the inner validation split, if any."""
        y = np.asarray(y, dtype=np.int64)
        self.present_ = np.unique(y)
        self.feature_names_in_ = np.asarray(X.columns)
        encode = {c: i for i, c in enumerate(self.present_)}
        y_enc = np.array([encode[v] for v in y])
        val = None
        if X_val is not None and y_val is not None:
            keep = np.isin(y_val, self.present_)
            val = (X_val[keep], np.array([encode[v] for v in np.asarray(y_val)[keep]]))
        self._fit(X, y_enc, val)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities ``(n, n_classes)`` over the task's classes."""
        out = np.zeros((len(X), self.n_classes))
        if len(X):
            out[:, self.present_] = self._predict_proba(X)
        return out

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Most probable class index."""
        return self.predict_proba(X).argmax(axis=1)

    def _fit(
        self, X: pd.DataFrame, y: np.ndarray, val: tuple[pd.DataFrame, np.ndarray] | None
    ) -> None:
        raise NotImplementedError

    def _predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class ModelEntry:
    """A registry entry: how to build a model and which inputs it uses by default.

    Attributes:
        name: registry key.
        cls: implementation class.
        defaults: constructor arguments of this variant.
        features: default feature groups (tabular models).
        description: one line for ``miso-bench list models``.
        kind: ``tabular`` (pedon feature table) or ``chips`` (image chips around pedons).
    """

    name: str
    cls: type
    defaults: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = ()
    description: str = ""
    kind: str = "tabular"


#: Registered models.
MODELS: Registry[ModelEntry] = Registry("model")


def register_model(
    name: str,
    cls: type,
    defaults: dict[str, Any] | None = None,
    features: tuple[str, ...] = (),
    description: str = "",
    kind: str = "tabular",
) -> ModelEntry:
    """Register a model variant: an implementation class plus the arguments it overrides."""
    entry = ModelEntry(name, cls, dict(defaults or {}), tuple(features), description, kind)
    MODELS.register(name)(entry)
    return entry


def build_model(name: str, params: dict[str, Any] | None, n_classes: int, seed: int) -> Any:
    """Instantiate registry entry ``name`` with ``params`` overriding its defaults.

    Raises:
        UnknownNameError: unknown model name (the message lists close matches).
        MisoBenchError: a parameter the model does not take (the message lists valid ones).
    """
    entry = MODELS.get(name)
    kwargs = {**entry.defaults, **(params or {})}
    valid = set(entry.cls().get_params()) - {"n_classes", "random_state"}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(valid), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise MisoBenchError(
            f"model {name!r} has no parameter {unknown[0]!r}.{hint} Valid: "
            f"{', '.join(sorted(valid))}"
        )
    return entry.cls(n_classes=n_classes, random_state=seed, **kwargs)


Builder = Callable[..., Any]
