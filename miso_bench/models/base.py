"""The model contract and registry shared by tree models and deep models.

Every model speaks scikit-learn's estimator contract: ``__init__`` stores arguments, ``fit``
returns ``self``, learned state ends in ``_`` (``classes_`` is the task's class indices), and
``predict_proba`` returns one column per class of the task (``n_classes``), even when a
training fold lacks a class. ``sklearn.clone`` works on every registered model.

Two kinds of model, declared by the registry entry (``ModelEntry.kind``) and dispatched on by
the fold engine:

- ``tabular`` (:class:`TabularModel`): learns from a feature table, one row per pedon;
- ``chips`` (:class:`ChipModel`): reads image chips around the pedons itself. Its ``fit``
  takes a :class:`FoldContext` (the chip source, the coordinates no training chip may cover,
  a checkpoint folder, a per-epoch callback) besides the rows.

Models that need a validation set (early stopping, model selection) say so with
``needs_validation = True``; the engine then passes a spatial validation split carved from the
training fold only (never the test fold).

Registry entries are small dicts of arguments over one implementation class (the timm
pattern), so a new variant or ablation is a few lines and is covered by the tests that
parametrize over the whole registry. Nested arguments (dicts) merge with the defaults at every
layer: an entry's defaults, then the run's ``model.params``.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from ..errors import MisoBenchError
from ..registry import Registry

if TYPE_CHECKING:
    from ..data.chips import ChipSource
    from ..data.normalization import Normalizer

__all__ = [
    "MODELS",
    "ChipModel",
    "EpochCallback",
    "FoldContext",
    "ModelEntry",
    "TabularModel",
    "build_model",
    "deep_merge",
    "load_fitted",
    "register_model",
    "save_fitted",
]

#: Called after each training epoch with the epoch number and its record (losses, learning
#: rate and ``val/score``, the validation score). It may raise to stop training: the exception
#: reaches the caller of ``fit`` (sweeps raise Optuna's ``TrialPruned`` here).
EpochCallback = Callable[[int, dict[str, float]], None]

#: Version of the saved-model layout (``model.json`` + the estimator or weights).
SAVED_FORMAT = 1


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on ``base``; nested mappings merge key by key instead of replacing."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _Classifier(ClassifierMixin, BaseEstimator):
    """What every model shares: ``n_classes`` columns, ``classes_``, ``predict``."""

    needs_validation = False
    n_classes: int

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Most probable class index."""
        return self.predict_proba(X).argmax(axis=1)

    def predict_points(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities at many points (the truth sample, maps); rows as in ``predict_proba``."""
        return self.predict_proba(X)

    def run_tags(self) -> dict[str, str]:
        """Tags for the run record (how the model ran: preset, device, weights...)."""
        return {}

    def fit_report(self) -> dict[str, float]:
        """Figures of the last fit worth logging (``best_iteration``, ``best_epoch``...)."""
        return {}


class TabularModel(_Classifier):
    """Base of models that learn from a feature table (one row per pedon).

    Subclasses implement :meth:`_fit` and :meth:`_predict_proba` on classes encoded
    ``0..m-1`` over the classes present in the training fold; this base maps them back to the
    task's ``n_classes`` columns.
    """

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        X_val: pd.DataFrame | None = None,
        y_val: np.ndarray | None = None,
    ) -> TabularModel:
        """Fit on ``(X, y)``; ``(X_val, y_val)`` is the inner validation split, if any."""
        y = np.asarray(y, dtype=np.int64)
        self.classes_ = np.arange(self.n_classes)
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

    def _fit(
        self, X: pd.DataFrame, y: np.ndarray, val: tuple[pd.DataFrame, np.ndarray] | None
    ) -> None:
        raise NotImplementedError

    def _predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError


@dataclass
class FoldContext:
    """What a chip model needs for one fit besides its rows.

    Attributes:
        source: the dataset's chip source (a bounded, shared block cache).
        normalizer: per-band normalisation of the dataset (covariates).
        exclude_xy: ``(n, 2)`` coordinates (dataset CRS) that no unlabelled training chip may
            cover: the test fold, and in nested CV every pedon held out from this fit. The
            engine checks that it holds every held-out pedon before the fit, and that no
            unlabelled chip the model trained on covers one after it. (Labelled chips around
            training pedons may show a nearby test pedon's pixels, never its label.)
        checkpoint_dir: where to keep checkpoints (an interrupted fit resumes).
        on_epoch: per-epoch callback (progress, pruning); see :data:`EpochCallback`.
        fold: a label of the fit, for messages.
        positive_index: for binary tasks, the class index whose F1 the validation split
            scores (early stopping, the kept epoch, pruning): the task's scored class, which
            a manifest listing ``[1, 0]`` puts first.
    """

    source: ChipSource
    normalizer: Normalizer
    exclude_xy: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    checkpoint_dir: Path | None = None
    on_epoch: EpochCallback | None = None
    fold: str = ""
    positive_index: int = 1


class ChipModel(_Classifier):
    """Base of models that read image chips around the pedons (MISO and its ablations).

    ``X`` holds one row per pedon with its coordinates in columns ``coord_x``/``coord_y`` (the
    dataset CRS); the model reads its chips from ``context.source``. After ``fit`` the model
    keeps the source for ``predict_proba`` (a chip centred on each pedon) and
    ``predict_points`` (many points per encoded chip: the map path); a loaded model is given a
    source with :meth:`attach`.
    """

    needs_validation = True

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        X_val: pd.DataFrame | None = None,
        y_val: np.ndarray | None = None,
        *,
        context: FoldContext | None = None,
    ) -> ChipModel:
        raise NotImplementedError

    def unlabeled_windows(self) -> np.ndarray:
        """``(n, 4)`` bounds ``(xmin, xmax, ymin, ymax)`` of every chip the last fit trained on
        without a label (the engine checks that none covers a held-out pedon)."""
        return np.empty((0, 4))

    def attach(self, source: ChipSource) -> ChipModel:
        """Read chips from ``source`` (a dataset on the grid and bands the model was trained
        on)."""
        raise NotImplementedError

    def save_state(self, folder: Path) -> dict[str, Any]:
        """Write the trained state into ``folder``; return what ``model.json`` should hold."""
        raise NotImplementedError

    def load_state(self, folder: Path, meta: Mapping[str, Any]) -> None:
        """Restore the trained state written by :meth:`save_state`."""
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
        family: the entries sharing one implementation and one search space
            (``configs/search/<family>.yaml``): ``rf`` for rf and coords_only, ``miso`` for
            MISO and its ablations.
    """

    name: str
    cls: type[Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = ()
    description: str = ""
    kind: str = "tabular"
    family: str = ""


#: Registered models.
MODELS: Registry[ModelEntry] = Registry("model")

_KIND_BASE = {"tabular": TabularModel, "chips": ChipModel}


def register_model(
    name: str,
    cls: type,
    defaults: dict[str, Any] | None = None,
    features: tuple[str, ...] = (),
    description: str = "",
    kind: str = "tabular",
    family: str | None = None,
) -> ModelEntry:
    """Register a model variant: an implementation class plus the arguments it overrides.

    Raises:
        ValueError: an unknown kind, or a class that does not implement it.
    """
    if kind not in _KIND_BASE:
        raise ValueError(f"model kind must be one of {sorted(_KIND_BASE)}, got {kind!r}")
    if not issubclass(cls, _KIND_BASE[kind]):
        raise ValueError(f"{cls.__name__} is not a {_KIND_BASE[kind].__name__} ({kind} model)")
    entry = ModelEntry(
        name, cls, dict(defaults or {}), tuple(features), description, kind, family or name
    )
    MODELS.register(name)(entry)
    return entry


def build_model(name: str, params: Mapping[str, Any] | None, n_classes: int, seed: int) -> Any:
    """Instantiate registry entry ``name`` with ``params`` merged over its defaults.

    Raises:
        UnknownNameError: unknown model name (the message lists close matches).
        MisoBenchError: a parameter the model does not take (the message lists valid ones).
    """
    entry = MODELS.get(name)
    kwargs = deep_merge(entry.defaults, params or {})
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


# --- saved models ---------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def save_fitted(model: Any, folder: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write a fitted model and what it needs to predict again into ``folder``.

    ``model.json`` holds ``meta`` (task, class names, feature columns, dataset CRS and grid...)
    with the model's class and parameters; tabular models are stored whole with joblib
    (``estimator.joblib``: load only files you trust), chip models write their weights
    (``weights.pt``, read back with ``weights_only=True``) and their own state.
    """
    import joblib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cls = type(model)
    record = {
        "format": SAVED_FORMAT,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "kind": "chips" if isinstance(model, ChipModel) else "tabular",
        "params": _jsonable(model.get_params()),
        **_jsonable(dict(meta)),
    }
    if isinstance(model, ChipModel):
        record["state"] = _jsonable(model.save_state(folder))
    else:
        joblib.dump(model, folder / "estimator.joblib")
    (folder / "model.json").write_text(json.dumps(record, indent=1))
    return folder


def load_fitted(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """A model written by :func:`save_fitted` and its ``model.json`` record.

    Raises:
        MisoBenchError: the folder holds no saved model, or one of an unknown format.
    """
    import joblib

    folder = Path(folder)
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise MisoBenchError(f"{folder}: no saved model here (model.json missing)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != SAVED_FORMAT:
        raise MisoBenchError(
            f"{meta_path}: saved-model format {meta.get('format')!r}; this miso-bench reads "
            f"format {SAVED_FORMAT} (fix: retrain with this version)"
        )
    if meta["kind"] == "tabular":
        return joblib.load(folder / "estimator.joblib"), meta
    module, _, name = meta["class"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    model = cls(**meta["params"])
    model.load_state(folder, meta)
    return model, meta
