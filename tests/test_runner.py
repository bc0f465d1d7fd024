"""The runner: hygiene, MLflow round trip, saved models, resume after every kind of
interruption, warnings made visible, and datasets in other CRSs."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import miso_bench.runner as runner_module
from miso_bench import load_model
from miso_bench.config import resolve_config
from miso_bench.models import MODELS, register_model
from miso_bench.models.trees import MajorityModel
from miso_bench.runner import RunProgress, run_benchmark
from miso_bench.tracking import RunInProgressError

REPO = Path(__file__).resolve().parents[1]
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


def config(data_dir, home, **sets):
    overrides = [f"data.path={data_dir}", "eval.n_boot=50", f"tracking.uri=sqlite:///{home}/t.db"]
    overrides += [f"{k}={v}" for k, v in sets.items()]
    return resolve_config(None, None, overrides)


def quiet(cfg):
    return run_benchmark(cfg, announce=lambda m: None)


def oof_of(result) -> pd.DataFrame:
    client = MlflowClient(result.tracking_uri)
    path = client.download_artifacts(result.run_id, "oof_predictions.parquet")
    return pd.read_parquet(path).set_index("id")


def test_test_fold_never_reaches_fit_or_early_stopping(tiny_dir, home, spy):
    cfg = config(tiny_dir, home, **{"model.name": "spy", "cv.name": "spatial", "refit": False})
    result = quiet(cfg)
    oof = oof_of(result).reset_index()
    assert len(SEEN["fit"]) == int(result.metrics["cv/n_folds"])
    for f, (fit_ids, val_ids) in enumerate(zip(SEEN["fit"], SEEN["val"], strict=True)):
        test_ids = set(oof.loc[oof["fold"] == f, "id"])
        assert test_ids and not fit_ids & test_ids and not val_ids & test_ids
        assert val_ids and not fit_ids & val_ids  # an inner validation split was carved out


def test_mlflow_round_trip_with_saved_models(tiny_dir, home):
    cfg = config(
        tiny_dir,
        home,
        **{"model.name": "rf", "model.params.n_estimators": 30, "task": "pf1m"},
    )
    result = quiet(cfg)
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
        "code_version",
        "config_hash",
        "version",
        "distance_crs",
        "final_model_run",
    ):
        assert key in run.data.tags, key
    assert "torch=" in run.data.tags["code_version"]
    assert run.data.params["cv.name"] == "spatial"
    m = run.data.metrics
    for key in (
        "test/overall/f1_pos",
        "test/overall/f1_pos_ci_low",
        "test/overall/roc_auc",
        "truth/overall/f1_pos",
        "cv/w_statistic_m",
        "test/pf_zone/worst/f1_pos",
    ):
        assert key in m, key
    # The run table's headline columns copy the primary metric, its CI, truth and worst region.
    for headline, key in (
        ("f1_pos", "test/overall/f1_pos"),
        ("f1_pos_ci_low", "test/overall/f1_pos_ci_low"),
        ("truth_f1_pos", "truth/overall/f1_pos"),
        ("worst_pf_zone_f1_pos", "test/pf_zone/worst/f1_pos"),
    ):
        assert m[f"headline/{headline}"] == round(m[key], 4)
    # The pedons are the run's MLflow dataset input (the run table's Dataset column).
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name.endswith("/pf1m")
    assert dataset.dataset.digest == run.data.tags["dataset_fingerprint"][:16]
    assert json.loads(dataset.dataset.profile)["num_rows"] == m["data/n_pedons"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {
        "config.yaml",
        "oof_predictions.parquet",
        "metrics_by_region.csv",
        "folds.gpkg",
        "figures",
    } <= artifacts
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    levels = sorted(c.data.tags["run_level"] for c in children)
    assert levels == ["final"] + ["fold"] * int(m["cv/n_folds"])
    for child in children:
        assert "model" in {a.path for a in client.list_artifacts(child.info.run_id)}
    # Every fold's saved model reproduces that fold's out-of-fold probabilities exactly.
    oof = oof_of(result)
    columns = [c for c in oof.columns if c.startswith("p/")]
    for fold in range(int(m["cv/n_folds"])):
        rows = oof[oof["fold"] == fold]
        predictor = load_model(result.run_id, fold=fold, tracking_uri=result.tracking_uri)
        proba = predictor.predict_points(tiny_dir, rows["x"], rows["y"])
        np.testing.assert_array_equal(proba, rows[columns].to_numpy())
    final = load_model(result.run_id, tracking_uri=result.tracking_uri)
    assert final.record["fold"] == "final" and final.class_names == ["0", "1"]
    assert final.predict_points(tiny_dir, oof["x"][:5], oof["y"][:5]).shape == (5, 2)


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
            "refit": False,
        },
    )
    a = quiet(cfg)
    cfg["tracking"]["experiment"] = "b"
    b = quiet(cfg)
    assert a.metrics["test/overall/macro_f1"] == b.metrics["test/overall/macro_f1"]
    assert np.array_equal(a.folds, b.folds)
    pd.testing.assert_frame_equal(oof_of(a), oof_of(b))


def _interrupt_on_fit(monkeypatch, call: int) -> None:
    calls = {"n": 0}
    real_fit = MajorityModel.fit

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(MajorityModel, "fit", flaky)


def _parents(home, experiment="synthetic-alaska-tiny/tax_order"):
    client = MlflowClient(f"sqlite:///{home}/t.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], "tags.run_level = 'parent'")


def test_interrupted_run_resumes_without_redoing_folds(tiny_dir, home, monkeypatch):
    cfg = config(tiny_dir, home, **{"model.name": "majority", "cv.name": "random"})
    _interrupt_on_fit(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg)
    client, parents = _parents(home)
    assert [p.info.status for p in parents] == ["KILLED"]
    monkeypatch.undo()
    result = quiet(cfg)
    assert result.resumed_folds == [0, 1]
    assert result.run_id == parents[0].info.run_id  # the same parent run, completed
    _, parents = _parents(home)
    assert [p.info.status for p in parents] == ["FINISHED"]
    finished = client.search_runs(
        [parents[0].info.experiment_id],
        f"tags.mlflow.parentRunId = '{result.run_id}' and attributes.status = 'FINISHED'",
    )
    assert sorted(c.data.tags["fold"] for c in finished) == ["0", "1", "2", "3", "4", "final"]


def test_a_resumed_fit_has_the_threads_and_records_the_cpu_of_an_uninterrupted_one(
    tiny_dir, home, monkeypatch
):
    """A fit's numbers depend on its threads: the fit left when a run resumes gets the threads
    its run gives every fit (it had all of them when it was the only fit left), and every fit
    records its CPU and threads."""
    from miso_bench import parallel
    from miso_bench.provenance import hardware_tags

    cfg = config(tiny_dir, home, **{"model.name": "majority", "cv.name": "random"})
    _interrupt_on_fit(monkeypatch, 6)  # five folds finish, the final refit is interrupted
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg)
    monkeypatch.undo()
    asked = []
    real = parallel.fit_jobs

    def spy_jobs(jobs, kind, params, n_fits, left=None):
        asked.append((n_fits, left))
        return real(jobs, kind, params, n_fits, left)

    monkeypatch.setattr(parallel, "fit_jobs", spy_jobs)
    result = quiet(cfg)
    assert result.resumed_folds == [0, 1, 2, 3, 4]
    assert asked == [(6, 1)]  # threads from the run's six fits, workers from the one left
    client, parents = _parents(home)
    children = client.search_runs(
        [parents[0].info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    here = hardware_tags()
    for child in children:
        tags = child.data.tags
        assert tags["cpu"] == here["cpu"] and tags["cpu_capability"] == here["cpu_capability"]
        assert tags["fit_threads"] == parents[0].data.tags["fit_threads"]
    assert parents[0].data.tags["cpu"] == here["cpu"]


def test_resuming_folds_another_cpu_computed_is_a_warning(tiny_dir, home, monkeypatch):
    cfg = config(tiny_dir, home, **{"model.name": "majority", "cv.name": "random"})
    _interrupt_on_fit(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg)
    monkeypatch.undo()
    client, parents = _parents(home)
    client.set_tag(parents[0].info.run_id, "cpu", "Another CPU (cpu family 6, model 85)")
    result = quiet(cfg)
    assert result.resumed_folds == [0, 1]
    assert "another CPU (cpu Another CPU" in result.warnings["resumed_on_another_cpu"]
    tags = client.get_run(result.run_id).data.tags
    assert "warning.resumed_on_another_cpu" in tags
    # Not a reason to start over: the finished folds are still valid estimates.
    assert result.run_id == parents[0].info.run_id


def test_resumed_predictions_are_matched_by_pedon_id(tiny_dir, home, monkeypatch):
    """A finished fold's predictions stored in another row order still land on their pedons."""
    cfg = config(
        tiny_dir,
        home,
        **{"model.name": "rf", "model.params.n_estimators": 10, "refit": False},
    )
    reference = oof_of(quiet({**cfg, "tracking": {**cfg["tracking"], "experiment": "ref"}}))
    calls = {"n": 0}
    real = runner_module.fit_predict_fold

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "fit_predict_fold", flaky)
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg)
    monkeypatch.undo()
    client, parents = _parents(home)
    fold0 = client.search_runs(
        [parents[0].info.experiment_id],
        f"tags.mlflow.parentRunId = '{parents[0].info.run_id}' and tags.fold = '0'",
    )[0]
    path = Path(fold0.info.artifact_uri.removeprefix("file://")) / "predictions.parquet"
    stored = pd.read_parquet(path)
    stored.iloc[::-1].to_parquet(path, index=False)  # same rows, reversed order
    result = quiet(cfg)
    assert result.resumed_folds == [0, 1]
    pd.testing.assert_frame_equal(oof_of(result), reference)


def test_code_version_is_part_of_what_resumes(tiny_dir, home, monkeypatch):
    cfg = config(tiny_dir, home, **{"model.name": "majority", "cv.name": "random"})
    _interrupt_on_fit(monkeypatch, 3)
    monkeypatch.setattr(runner_module, "code_version", lambda: "an older commit")
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg)
    monkeypatch.undo()
    result = quiet(cfg)  # other code: a new run, nothing mixed in
    assert result.resumed_folds == []
    _, parents = _parents(home)
    assert len(parents) == 2 and result.run_id != parents[-1].info.run_id


def test_a_run_alive_in_another_process_is_not_taken_over(tiny_dir, home, monkeypatch):
    cfg = config(tiny_dir, home, **{"model.name": "majority", "cv.name": "random"})
    _interrupt_on_fit(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg)
    monkeypatch.undo()
    client, parents = _parents(home)
    run_id = parents[0].info.run_id
    client.update_run(run_id, status="RUNNING")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stat = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        client.set_tag(run_id, "pid", str(sleeper.pid))
        client.set_tag(run_id, "pid_start", stat)
        with pytest.raises(RunInProgressError, match=str(sleeper.pid)):
            quiet(cfg)
    finally:
        sleeper.kill()
        sleeper.wait()
    result = quiet(cfg)  # its process is gone: the run is taken over and completed
    assert result.run_id == run_id and result.resumed_folds == [0, 1]


def _slow_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "slow.py"
    script.write_text("import sys\nimport tests.slow_model\n" + textwrap.dedent(body))
    return script


def _wait_for_finished_fold(home: Path, timeout_s: float = 120) -> None:
    """Poll the store read-only (an MLflow client would create the database while the run's
    process creates it too)."""
    import sqlite3

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            con = sqlite3.connect(f"file:{home}/t.db?mode=ro", uri=True, timeout=1)
            try:
                (n,) = con.execute(
                    "SELECT COUNT(*) FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
                    "WHERE t.key = 'run_level' AND t.value = 'fold' AND r.status = 'FINISHED'"
                ).fetchone()
            finally:
                con.close()
            if n:
                return
        except sqlite3.Error:
            pass
        time.sleep(0.5)
    raise AssertionError("no fold finished in time")


@pytest.mark.slow
def test_a_killed_process_leaves_a_run_that_the_next_command_resumes(tiny_dir, home, tmp_path):
    """SIGKILL (no handler runs): the run stays RUNNING; its process is dead, so a rerun of
    the same command takes it over and finishes it without redoing finished folds."""
    script = _slow_script(
        tmp_path,
        """
        from miso_bench.config import resolve_config
        from miso_bench.runner import run_benchmark
        cfg = resolve_config(None, None, sys.argv[1:])
        run_benchmark(cfg, announce=lambda m: None)
        """,
    )
    sets = [
        f"data.path={tiny_dir}",
        "eval.n_boot=20",
        f"tracking.uri=sqlite:///{home}/t.db",
        "model.name=slow_majority",
        "cv.name=random",
    ]
    env = {
        **os.environ,
        "MISO_BENCH_HOME": str(home),
        "PYTHONPATH": str(REPO),
        "MISO_TEST_FIT_SLEEP": "1.5",
    }
    proc = subprocess.Popen([sys.executable, str(script), *sets], env=env)
    try:
        _wait_for_finished_fold(home)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    _, parents = _parents(home)
    assert [p.info.status for p in parents] == ["RUNNING"]
    import tests.slow_model  # noqa: F401  (registers slow_majority here too; no sleep)

    result = quiet(resolve_config(None, None, sets))
    assert result.run_id == parents[0].info.run_id and result.resumed_folds
    _, parents = _parents(home)
    assert [p.info.status for p in parents] == ["FINISHED"]


@pytest.mark.slow
def test_sigterm_ends_a_run_like_ctrl_c(tiny_dir, home, tmp_path):
    script = _slow_script(
        tmp_path,
        """
        from miso_bench.cli import main
        sys.exit(main(["run", "--model", "slow_majority", "--cv", "random", *sys.argv[1:]]))
        """,
    )
    env = {
        **os.environ,
        "MISO_BENCH_HOME": str(home),
        "PYTHONPATH": str(REPO),
        "MISO_TEST_FIT_SLEEP": "1.5",
    }
    args = ["--data", str(tiny_dir), "--tracking-uri", f"sqlite:///{home}/t.db"]
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_finished_fold(home)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    client, parents = _parents(home)
    assert [p.info.status for p in parents] == ["KILLED"]
    children = client.search_runs(
        [parents[0].info.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'"
    )
    assert "RUNNING" not in {c.info.status for c in children}


class Recorder(RunProgress):
    def __init__(self):
        self.warnings: list[str] = []
        self.steps: list[str] = []
        self.totals: list[tuple[int, int]] = []

    def warn(self, message):
        self.warnings.append(message)

    def step(self, message):
        self.steps.append(message)

    def folds(self, total, done):
        self.totals.append((total, done))


def test_fallbacks_are_tagged_on_the_run_and_told_once(tiny_dir, home):
    cfg = config(
        tiny_dir,
        home,
        **{
            "model.name": "xgboost",
            "model.params.n_estimators": 20,
            "cv.inner_block_size_m": 1e7,  # one block per site: the inner split must shrink
        },
    )
    progress = Recorder()
    result = run_benchmark(cfg, progress=progress, announce=lambda m: None)
    assert "inner_split_blocks_shrunk" in result.warnings
    tags = MlflowClient(result.tracking_uri).get_run(result.run_id).data.tags
    assert "warning.inner_split_blocks_shrunk" in tags
    shrunk = [w for w in progress.warnings if "inner validation split" in w]
    assert len(shrunk) == 1  # six fits, told once
    assert progress.totals == [(6, 0)]  # five folds and the final refit, known up front
    assert any("point features" in s for s in progress.steps)


def test_a_dataset_in_longitude_latitude_runs_with_distances_in_metres(tiny_geographic_dir, home):
    """EPSG:4326: 1,000 m blocks stay 1,000 m (they were read as 1,000 degrees, which left
    "only 1 spatial groups"); the run records the metric CRS it chose."""
    cfg = config(
        tiny_geographic_dir,
        home,
        **{
            "model.name": "rf",
            "model.params.n_estimators": 20,
            "cv.block_size_m": 1000,
            "task": "tax_order",
        },
    )
    result = quiet(cfg)
    assert result.metric_crs.startswith("+proj=laea")  # four sites across Alaska
    tags = MlflowClient(result.tracking_uri).get_run(result.run_id).data.tags
    assert tags["dataset_crs"] == "EPSG:4326" and tags["cv_block_size_m"] == "1000"
    oof = oof_of(result)
    rows = oof[oof["fold"] == 2]
    predictor = load_model(result.run_id, fold=2, tracking_uri=result.tracking_uri)
    columns = [c for c in oof.columns if c.startswith("p/")]
    np.testing.assert_array_equal(
        predictor.predict_points(tiny_geographic_dir, rows["x"], rows["y"]),
        rows[columns].to_numpy(),
    )
    assert load_model(result.run_id, tracking_uri=result.tracking_uri).crs == "EPSG:4326"


@pytest.mark.realdata
def test_eberg_runs_refits_and_loads_back(home):
    from tests.conftest import eberg_dir

    data = eberg_dir()
    cfg = config(
        data,
        home,
        **{"model.name": "rf", "model.params.n_estimators": 30, "task": "soiltype"},
    )
    result = quiet(cfg)
    assert result.metric_crs == "EPSG:31467"  # projected in metres: used as is
    oof = oof_of(result)
    final = load_model(result.run_id, tracking_uri=result.tracking_uri)
    proba = final.predict_points(data, oof["x"][:20], oof["y"][:20])
    assert proba.shape == (20, len(final.class_names))
    np.testing.assert_allclose(proba.sum(1), 1.0)


def test_load_model_errors_are_clear(tiny_dir, home):
    from miso_bench.errors import MisoBenchError

    cfg = config(tiny_dir, home, **{"model.name": "majority", "refit": False, "cv.name": "random"})
    result = quiet(cfg)
    with pytest.raises(MisoBenchError, match="refit"):
        load_model(result.run_id, tracking_uri=result.tracking_uri)
    with pytest.raises(MisoBenchError, match="no MLflow run"):
        load_model("0" * 32, tracking_uri=result.tracking_uri)


def test_one_process_at_a_time_per_run_on_this_machine(home):
    from miso_bench.runner import _run_lock

    with _run_lock("abc123"), pytest.raises(RunInProgressError), _run_lock("abc123"):
        pass
    with _run_lock("abc123"):  # released: free again
        pass


SIGNALS_SEEN: list = []


class SignalSpy(MajorityModel):
    def fit(self, X, y, X_val=None, y_val=None):
        SIGNALS_SEEN.append(signal.getsignal(signal.SIGTERM))
        return super().fit(X, y, X_val, y_val)


def test_sigterm_interrupts_a_run_used_as_a_library(tiny_dir, home):
    register_model("signal_spy", SignalSpy, features=("s2",))
    try:
        cfg = config(tiny_dir, home, **{"model.name": "signal_spy", "refit": False})
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        quiet(cfg)
    finally:
        MODELS.unregister("signal_spy")
    assert SIGNALS_SEEN and all(h is not signal.SIG_DFL for h in SIGNALS_SEEN)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the run


def test_an_undefined_centred_figure_is_left_out_fresh_or_resumed(tmp_path) -> None:
    """A fresh fold kept NaN (so cv_centred was NaN and vanished), while a resumed run read the
    logged values, where MLflow had dropped the NaN, and averaged the other folds."""
    from miso_bench.runner import _centred
    from miso_bench.tracking import Tracker

    per_fold = [0.61, float("nan"), 0.58]  # fold 1 holds no positive pedon
    tracker = Tracker("exp", f"sqlite:///{tmp_path}/m.db")
    fresh, resumed = [], []
    for value in per_fold:
        metrics = {"test/centred/f1_pos": value}
        with tracker.run("fold") as run_id:
            tracker.log_metrics(run_id, metrics)
        fresh.append(_centred(metrics, "f1_pos"))
        resumed.append(_centred(tracker.run_metrics(run_id), "f1_pos"))
    assert fresh == resumed == [0.61, None, 0.58]
