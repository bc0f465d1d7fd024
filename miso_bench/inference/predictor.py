"""Trained models loaded back from MLflow, predicting at any points of a dataset.

Every run logs each fold's model and (with ``refit``, the default) a final model refit on all
labelled pedons, with what it needs to predict again: the fitted estimator or the network's
weights, normalisation statistics, feature columns, class names, the task and the dataset's
CRS, grid and location normaliser. :func:`load_model` returns a :class:`Predictor`::

    from miso_bench import load_model

    predictor = load_model(run_id)              # the final model; fold=3 for a fold's
    proba = predictor.predict_points("path/to/dataset", x, y)   # (n, n_classes)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.cache import cache_dir
from ..data.features import feature_table
from ..data.manifest import DatasetManifest, load_manifest, same_crs
from ..errors import MisoBenchError
from ..models import load_fitted
from ..tracking import find_model_run

__all__ = ["Predictor", "load_model"]


class Predictor:
    """A trained model with what it needs to predict at points of a dataset.

    Attributes:
        model: the fitted estimator (scikit-learn contract).
        record: the saved ``model.json`` (task, classes, features, CRS, grid...).
        run_id: the MLflow run that holds the model.
    """

    def __init__(
        self, model: Any, record: dict[str, Any], run_id: str = "", folder: Path | None = None
    ) -> None:
        self.model = model
        self.record = record
        self.run_id = run_id
        self.folder = folder

    @property
    def kind(self) -> str:
        """``tabular`` or ``chips``."""
        return str(self.record["kind"])

    @property
    def class_names(self) -> list[str]:
        """Class values as strings, in probability-column order."""
        return list(self.record["class_names"])

    @property
    def crs(self) -> str:
        """The CRS of the data the model was trained on (points are given in it)."""
        return str(self.record["crs"])

    def _manifest(self, data: str | Path | DatasetManifest) -> DatasetManifest:
        manifest = data if isinstance(data, DatasetManifest) else load_manifest(data)
        if not same_crs(manifest.crs, self.crs):
            raise MisoBenchError(
                f"{manifest.path}: the model was trained on data in {self.crs}, this dataset "
                f"is in {manifest.crs} (fix: give a dataset in {self.crs})"
            )
        missing = [b for b in self.record["band_names"] if b not in manifest.band_names]
        if missing:
            raise MisoBenchError(
                f"{manifest.path}: bands {missing} that the model reads are not in this "
                "dataset (fix: use a dataset with the training bands)"
            )
        return manifest

    def predict_points(
        self,
        data: str | Path | DatasetManifest,
        x: np.ndarray,
        y: np.ndarray,
        how: str = "map",
    ) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` at points ``(x, y)`` of a dataset.

        Args:
            data: a dataset folder (or manifest) on the model's CRS with its bands.
            x, y: coordinates in the model's CRS (:attr:`crs`).
            how: chip models only: ``map`` (default) gives the map's value at the point's
                pixel (blended lattice windows: what cross-validation, the truth sample and
                ``miso-bench predict`` use); ``pedon`` decodes one chip centred on each point
                (the secondary ``centred`` figure).
        """
        manifest = self._manifest(data)
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if self.kind == "tabular":
            feats = feature_table(manifest, x, y, window_px=int(self.record["window_px"]))
            return np.asarray(self.model.predict_proba(feats[self.record["feature_columns"]]))
        if how not in ("map", "pedon"):
            raise MisoBenchError(f"how must be 'map' or 'pedon', got {how!r}")
        from ..data.chips import ChipSource

        self.model.attach(ChipSource(manifest))
        X = pd.DataFrame({"coord_x": x, "coord_y": y})
        if how == "pedon":
            return np.asarray(self.model.predict_proba(X))
        return np.asarray(self.model.predict_points(X))

    def decode_window(
        self, image: np.ndarray, valid: np.ndarray, bounds: tuple[float, float, float, float]
    ) -> np.ndarray:
        """Chip models: probabilities ``(n_classes, H, W)`` at every pixel centre of a raster
        window (see :meth:`MisoModel.decode_window`)."""
        if self.kind != "chips":
            raise MisoBenchError("decode_window is for chip models; trees use predict_points")
        return np.asarray(self.model.decode_window(image, valid, bounds))


def load_model(
    run_id: str, *, fold: str | int = "final", tracking_uri: str | None = None
) -> Predictor:
    """The model of a run, ready to predict.

    Args:
        run_id: a ``miso-bench run``'s MLflow run id (the parent run), or a fold's run id.
        fold: ``final`` (refit on all labelled pedons) or a fold number.
        tracking_uri: the MLflow store (default: ``$MLFLOW_TRACKING_URI`` or the local one).

    Raises:
        MisoBenchError: unknown run, no such fold, or a run logged without models.
    """
    model_run = find_model_run(run_id, str(fold), tracking_uri)
    target = cache_dir("models", model_run)
    folder = target / "model"
    if not (folder / "model.json").is_file():
        from ..tracking import download_run_artifact

        download_run_artifact(model_run, "model", target, tracking_uri)
    model, record = load_fitted(folder)
    json.dumps(record)  # a record that cannot round-trip is a defect
    return Predictor(model, record, model_run, folder)
