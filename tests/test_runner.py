"""The runner: hygiene guard, MLflow round trip, resume after interruption."""

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from miso_bench.config import resolve_config
from miso_bench.models import MODELS, register_model
from miso_bench.models.trees import MajorityModel
from miso_bench.runner import HygieneError, check_hygiene, run_benchmark

SEEN: dict[str, list] = {"fit": [], "val": []}


class SpyModel(MajorityModel):
    """Records which pedons reach fit and early stopping."""

    needs_validation = True

    def fit(self, X, y, X_val=None, y_val=None):
        SEEN["fit"].append(set(X.index))
        SEEN["val"].append(set(X_val.index) if X_val is not None else set())
        return super().fit(X, y, X_val, y_val)


@pytest.fixture
def spy():
    register_model("spy", SpyModel, features=("s2",))
    SEEN["fit"].clear()
    SEEN["val"].clear()
    yield
    MODELS.unregister("spy")


def config(tiny_dir, home, **sets):
    overrides = [f"data.path={tiny_dir}", "eval.n_boot=50", f"tracking.uri=sqlite:///{home}/t.db"]
    overrides += [f"{k}={v}" for k, v in sets.items()]
    return resolve_config(None, None, overrides)


def test_test_fold_never_reaches_fit_or_early_stopping(tiny_dir, home, spy):
    cfg = config(tiny_dir, home, **{"model.name": "spy", "cv.name": "spatial"})
    result = run_benchmark(cfg, announce=lambda m: None)
    oof = pd.read_parquet(
        MlflowClient(result.tracking_uri).download_artifacts(
            result.run_id, "oof_predictions.parquet"
        )
    )
    assert len(SEEN["fit"]) == int(result.metrics["cv/n_folds"])
    for f, (fit_ids, val_ids) in enumerate(zip(SEEN["fit"], SEEN["val"], strict=True)):
        test_ids = set(oof.loc[oof["fold"] == f, "id"])
        assert test_ids and not fit_ids & test_ids and not val_ids & test_ids
        assert val_ids and not fit_ids & val_ids  # an inner validation split was carved out


def test_hygiene_check_refuses_overlaps():
    train, test = np.array([0, 1, 2, 3]), np.array([4, 5])
    check_hygiene(0, train, test, np.array([0, 1]), np.array([2, 3]))
    with pytest.raises(HygieneError):
        check_hygiene(0, np.array([0, 1, 4]), test, np.array([0, 1, 2]), np.array([]))


def test_mlflow_round_trip(tiny_dir, home):
    cfg = config(
        tiny_dir,
        home,
        **{
            "model.name": "rf",
            "model.params.n_estimators": 30,
            "cv.name": "spatial",
            "task": "pf1m",
        },
    )
    result = run_benchmark(cfg, announce=lambda m: None)
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    for key in (
        "model",
        "cv",
        "task",
        "seed",
        "dataset_fingerprint",
        "git_commit",
        "config_hash",
        "version",
    ):
        assert key in run.data.tags
    assert run.data.params["cv.name"] == "spatial"
    m = run.data.metrics
    for key in (
        "test/overall/f1_pos",
        "test/overall/f1_pos_ci_low",
        "test/overall/roc_auc",
        "test/overall/recall_pos",
        "truth/overall/f1_pos",
        "cv/w_statistic_m",
        "test/pf_zone/worst/f1_pos",
    ):
        assert key in m, key
    assert any(k.startswith("test/mlra/") and k.endswith("/f1_pos") for k in m)
    assert any(k.startswith("test/pf_zone/") and k.endswith("/recall_pos") for k in m)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {
        "config.yaml",
        "oof_predictions.parquet",
        "metrics_by_region.csv",
        "folds.gpkg",
        "figures",
    } <= artifacts
    figures = {a.path for a in client.list_artifacts(result.run_id, "figures")}
    assert "figures/confusion_matrix.png" in figures and "figures/by_mlra.png" in figures
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert len(children) == int(m["cv/n_folds"])
    assert all("test/overall/f1_pos" in c.data.metrics for c in children)


def test_same_seed_same_numbers(tiny_dir, home):
    cfg = config(
        tiny_dir,
        home,
        **{
            "model.name": "rf",
            "model.params.n_estimators": 20,
            "cv.name": "cluster",
            "cv.n_splits": 3,
            "tracking.experiment": "a",
        },
    )
    a = run_benchmark(cfg, announce=lambda m: None)
    cfg["tracking"]["experiment"] = "b"
    b = run_benchmark(cfg, announce=lambda m: None)
    assert a.metrics["test/overall/macro_f1"] == b.metrics["test/overall/macro_f1"]
    assert np.array_equal(a.folds, b.folds)


def test_interrupted_run_resumes_without_redoing_folds(tiny_dir, home, monkeypatch):
    cfg = config(tiny_dir, home, **{"model.name": "majority", "cv.name": "random"})
    calls = {"n": 0}
    real_fit = MajorityModel.fit

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(MajorityModel, "fit", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg, announce=lambda m: None)
    client = MlflowClient(f"sqlite:///{home}/t.db")
    exp = client.get_experiment_by_name("synthetic-alaska-tiny/tax_order")
    parents = client.search_runs([exp.experiment_id], "tags.run_level = 'parent'")
    assert [p.info.status for p in parents] == ["KILLED"]
    monkeypatch.setattr(MajorityModel, "fit", real_fit)
    result = run_benchmark(cfg, announce=lambda m: None)
    assert result.resumed_folds == [0, 1]
    assert result.run_id == parents[0].info.run_id  # the same parent run, completed
    parents = client.search_runs([exp.experiment_id], "tags.run_level = 'parent'")
    assert [p.info.status for p in parents] == ["FINISHED"]
    finished = client.search_runs(
        [exp.experiment_id],
        f"tags.mlflow.parentRunId = '{result.run_id}' and attributes.status = 'FINISHED'",
    )
    assert sorted(int(c.data.tags["fold"]) for c in finished) == [0, 1, 2, 3, 4]
