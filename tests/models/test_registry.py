"""Every registered model, trained and used on tiny data (parametrized over the registry)."""

import numpy as np
import pandas as pd
import pytest

from miso_bench.data.features import feature_table, resolve_feature_columns
from miso_bench.data.pedons import PedonDataset
from miso_bench.errors import MisoBenchError
from miso_bench.models import MODELS, build_model
from miso_bench.registry import UnknownNameError


@pytest.fixture(scope="module")
def tabular(tiny):
    kept, _ = PedonDataset(tiny).labelled("tax_order")
    feats = feature_table(tiny, kept["x"].to_numpy(), kept["y"].to_numpy())
    return kept.reset_index(drop=True), feats


TABULAR = [n for n in MODELS.list() if MODELS.get(n).kind == "tabular"]


@pytest.mark.parametrize("name", TABULAR)
def test_every_tabular_model_fits_and_predicts_all_classes(name, tiny, tabular):
    kept, feats = tabular
    entry = MODELS.get(name)
    columns = resolve_feature_columns(tiny, entry.features or list(tiny.modalities))
    X, y = feats[columns], kept["target"].to_numpy()
    # Drop a class from training: the model must still answer for all 7 classes.
    train = y != 5
    model = build_model(
        name,
        {"n_estimators": 20} if name in ("rf", "coords_only", "xgboost") else {},
        n_classes=7,
        seed=0,
    )
    half = np.flatnonzero(train)
    fit, val = half[: len(half) * 3 // 4], half[len(half) * 3 // 4 :]
    if model.needs_validation:
        model.fit(X.iloc[fit], y[fit], X.iloc[val], y[val])
    else:
        model.fit(X.iloc[fit], y[fit])
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 7)
    assert np.allclose(proba.sum(1), 1)
    assert np.all(proba[:, 5] == 0)
    again = build_model(
        name,
        {"n_estimators": 20} if name in ("rf", "coords_only", "xgboost") else {},
        n_classes=7,
        seed=0,
    )
    if again.needs_validation:
        again.fit(X.iloc[fit], y[fit], X.iloc[val], y[val])
    else:
        again.fit(X.iloc[fit], y[fit])
    assert np.allclose(again.predict_proba(X), proba)  # seeded: same numbers


def test_reference_rf_defaults_are_honoured_for_multiclass():
    model = build_model("rf", None, n_classes=7, seed=3)
    assert (model.n_estimators, model.max_depth, model.min_samples_split) == (253, 16, 5)
    model.fit(pd.DataFrame({"a": np.arange(40.0)}), np.arange(40) % 3)
    assert model.forest_.max_depth == 16 and model.forest_.random_state == 3


def test_unknown_model_and_parameter_errors():
    with pytest.raises(UnknownNameError, match="Did you mean rf"):
        MODELS.get("rff")
    with pytest.raises(MisoBenchError, match="max_depth"):
        build_model("rf", {"max_dept": 4}, n_classes=2, seed=0)


def test_xgboost_stops_early_on_the_validation_split(tiny, tabular):
    kept, feats = tabular
    columns = resolve_feature_columns(tiny, ["s2", "terrain", "climate"])
    X, y = feats[columns], kept["target"].to_numpy()
    model = build_model(
        "xgboost", {"n_estimators": 2000, "early_stopping_rounds": 10}, n_classes=7, seed=0
    )
    model.fit(X.iloc[:300], y[:300], X.iloc[300:], y[300:])
    assert model.best_iteration_ < 1999


def test_the_model_registry_imports_without_the_raster_stack():
    """Networks, losses and the training loop load without torchgeo or rasterio (a GPU
    machine with only PyTorch runs them; tree-model runs start faster)."""
    import subprocess
    import sys

    code = (
        "import sys, miso_bench.models; "
        "print(','.join(m for m in ('torchgeo', 'rasterio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
