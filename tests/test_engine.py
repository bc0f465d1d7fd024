"""The fold engine: inputs built once, the pure fold step, and its hygiene guard (each
invariant tested by injecting a violation)."""

from dataclasses import replace

import numpy as np
import pytest
from sklearn.base import clone

from miso_bench.config import resolve_config
from miso_bench.data.manifest import load_manifest
from miso_bench.engine import (
    FoldSpec,
    HygieneError,
    build_inputs,
    check_hygiene,
    fit_predict_fold,
    plan_fold,
)
from miso_bench.models import MODELS, build_model


def cfg(tiny_dir, **sets):
    overrides = [f"data.path={tiny_dir}", *(f"{k}={v}" for k, v in sets.items())]
    return resolve_config(None, None, overrides)


@pytest.fixture(scope="module")
def xgb_inputs(tiny_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # the feature cache goes to a private home
        mp.setenv("MISO_BENCH_HOME", str(tmp_path_factory.mktemp("home")))
        c = cfg(tiny_dir, **{"model.name": "xgboost", "task": "tax_order"})
        yield build_inputs(c, load_manifest(tiny_dir)), c


def halves(n):
    idx = np.arange(n)
    return idx[: n // 2], idx[n // 2 :]


def test_inputs_hold_features_ids_and_metric_coordinates(xgb_inputs):
    inputs, _ = xgb_inputs
    assert list(inputs.X.index) == list(inputs.ids)
    assert inputs.frame.metric_crs == "EPSG:3338"  # already metric: used as is
    np.testing.assert_array_equal(inputs.xy_m, inputs.table[["x", "y"]].to_numpy())
    assert inputs.truth is not None and len(inputs.truth.X) == len(inputs.truth.table)


def test_plan_fold_carves_validation_from_the_training_fold_only(xgb_inputs):
    inputs, c = xgb_inputs
    train, test = halves(len(inputs.table))
    spec = plan_fold("f", inputs, train, test, c["cv"], seed=0)
    assert set(spec.fit) | set(spec.val) == set(train)
    assert not set(spec.fit) & set(spec.val) and len(spec.val) > 0
    np.testing.assert_array_equal(spec.test, test)


def test_fold_step_fits_and_predicts_without_tracking(xgb_inputs, home):
    inputs, c = xgb_inputs
    train, test = halves(len(inputs.table))
    spec = plan_fold("f", inputs, train, test, c["cv"], seed=0)
    result = fit_predict_fold(inputs, spec, {"n_estimators": 30}, seed=0)
    assert result.proba.shape == (len(test), inputs.task.n_classes)
    np.testing.assert_array_equal(result.test_ids, inputs.ids[test])
    assert "test/overall/macro_f1" in result.metrics
    assert not (home / "mlflow.db").exists()  # no tracking in the fold step


def _bad(spec: FoldSpec, **change) -> FoldSpec:
    return replace(spec, **change)


@pytest.mark.parametrize(
    "violation",
    ["test_in_fit", "test_in_val", "val_outside_train", "fit_outside_train", "held_out_in_fit"],
)
def test_hygiene_guard_refuses_each_injected_violation(xgb_inputs, violation):
    inputs, c = xgb_inputs
    n = len(inputs.table)
    train, test = halves(n)
    spec = plan_fold("f", inputs, train, test, c["cv"], seed=0)
    bad = {
        "test_in_fit": _bad(spec, fit=np.concatenate([spec.fit, test[:1]])),
        "test_in_val": _bad(spec, val=np.concatenate([spec.val, test[:1]])),
        # A validation row from outside the outer training fold (and not a test row either:
        # the test fold is made smaller so that row is only "outside").
        "val_outside_train": _bad(spec, test=test[1:], val=np.concatenate([spec.val, test[:1]])),
        "fit_outside_train": _bad(spec, test=test[1:], fit=np.concatenate([spec.fit, test[:1]])),
        # Nested CV: an inner fold whose fit rows include the outer test fold.
        "held_out_in_fit": _bad(
            spec, test=test[:10], held_out=test[10:], fit=np.concatenate([spec.fit, test[10:11]])
        ),
    }[violation]
    with pytest.raises(HygieneError):
        fit_predict_fold(inputs, bad, {"n_estimators": 5}, seed=0)


def test_chip_model_exclusion_must_cover_every_held_out_pedon(tiny_dir, home):
    c = cfg(tiny_dir, **{"model.name": "miso", "task": "tax_order"})
    inputs = build_inputs(c, load_manifest(tiny_dir))
    train, test = halves(len(inputs.table))
    spec = plan_fold("f", inputs, train, test[:20], c["cv"], seed=0, held_out=test[20:])

    def drop_one(context):  # a defect that forgets one held-out pedon
        return replace(context, exclude_xy=context.exclude_xy[1:])

    with pytest.raises(HygieneError, match="exclusion area misses 1"):
        fit_predict_fold(inputs, spec, {"epochs": 1}, seed=0, context_hook=drop_one)


def test_check_hygiene_accepts_a_clean_fold():
    check_hygiene(
        "f",
        train_ids=np.array([1, 2, 3, 4]),
        fit_ids=np.array([1, 2]),
        val_ids=np.array([3, 4]),
        forbidden_ids=np.array([5, 6]),
        forbidden_xy=np.array([[0.0, 0.0]]),
        exclude_xy=np.array([[0.0, 0.0], [1.0, 1.0]]),
    )


@pytest.mark.parametrize("name", MODELS.list())
def test_every_registered_model_clones(name):
    model = build_model(name, {}, n_classes=3, seed=7)
    twin = clone(model)
    assert type(twin) is type(model)
    assert twin.get_params() == model.get_params()


@pytest.mark.parametrize("name", [n for n in MODELS.list() if MODELS.get(n).kind == "tabular"])
def test_fitted_tabular_models_set_classes(name, xgb_inputs):
    inputs, _ = xgb_inputs
    model = build_model(name, {"n_estimators": 5} if name != "majority" else {}, 7, 0)
    X = inputs.X.reindex(columns=model_columns(name, inputs)).fillna(0)
    model.fit(X.iloc[:100], inputs.y[:100])
    np.testing.assert_array_equal(model.classes_, np.arange(7))
    assert model.predict_proba(X.iloc[100:110]).shape == (10, 7)


def model_columns(name, inputs):
    from miso_bench.data.features import resolve_feature_columns

    features = MODELS.get(name).features or ("s2",)
    return resolve_feature_columns(inputs.manifest, list(features))


def test_unlabelled_chips_over_a_test_pedon_are_refused_after_the_fit(tiny_dir, home, monkeypatch):
    """A model that ignores its exclusion area is caught by what it trained on."""
    from miso_bench.models.miso.estimator import MisoModel

    c = cfg(tiny_dir, **{"model.name": "miso", "task": "tax_order"})
    inputs = build_inputs(c, load_manifest(tiny_dir))
    train, test = halves(len(inputs.table))
    spec = plan_fold("f", inputs, train, test[:30], c["cv"], seed=0)
    test_xy = inputs.table[["x", "y"]].to_numpy()[spec.test]

    def leaky(self, x, y, n, rng):  # a defect: unlabelled chips centred on test pedons
        return test_xy[: max(n, 1)]

    monkeypatch.setattr(MisoModel, "_unlabeled_centres", leaky)
    params = {"epochs": 1, "batch_size": 16, "chip_size_px": 32, "preset": "cpu", "device": "cpu"}
    with pytest.raises(HygieneError, match="unlabelled training chip covered"):
        fit_predict_fold(inputs, spec, params, seed=0)


def test_a_dataset_without_a_models_default_groups_says_which_inputs_it_uses(tmp_path):
    """rf's default inputs are s2, terrain and climate; a delivery with other modalities uses
    all of them (a prior map included), so the run says so rather than switching silently."""
    from miso_bench.engine import _selection
    from miso_bench.errors import MisoBenchWarning
    from tests.helpers import write_point_dataset

    mods = {"dem": {"folder": "dem", "bands": ["elev"]}, "prior": {"folder": "p", "bands": ["p"]}}
    write_point_dataset(tmp_path, mods, np.zeros(2), np.zeros(2))
    c = resolve_config(None, None, [f"data.path={tmp_path}", "model.name=rf"])
    with pytest.warns(MisoBenchWarning, match="lacks s2, terrain, climate of rf.* dem, prior"):
        assert _selection(c, load_manifest(tmp_path)) == ["dem", "prior"]
    chosen = resolve_config(None, None, [f"data.path={tmp_path}", "model.features=[dem]"])
    assert _selection(chosen, load_manifest(tmp_path)) == ["dem"]
