"""Sweeps: nested CV never shows an outer test pedon to a trial, pruning happens, a SIGKILLed
sweep continues to exactly the requested trials, two workers share one study, tuned
parameters run."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

import miso_bench.search.sweep as sweep_module
from miso_bench.config import resolve_config
from miso_bench.engine import build_inputs, prepare_dataset
from miso_bench.errors import MisoBenchError
from miso_bench.models import MODELS
from miso_bench.search import (
    SweepSettings,
    best_params,
    load_search_space,
    outer_folds,
    run_sweep,
    study_name,
)
from miso_bench.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]
SMALL_RF = (
    "model.params.n_estimators: {low: 5, high: 20}\n"
    "model.params.max_depth: [1, 2, 8, null]\n"
    "model.params.min_samples_leaf: {low: 1, high: 30}\n"
)


def space(tmp_path, text=SMALL_RF, model="rf"):
    f = tmp_path / "space.yaml"
    f.write_text(text)
    return load_search_space(f, set(MODELS.get(model).cls().get_params()))


def config(tiny_dir, home, model="rf", *sets):
    return resolve_config(
        None,
        None,
        [
            f"data.path={tiny_dir}",
            f"model.name={model}",
            "task=tax_order",
            "eval.n_boot=20",
            f"tracking.uri=sqlite:///{home}/t.db",
            *(["model.params.n_jobs=1"] if model != "miso" else []),
            *sets,
        ],
    )


def count_complete(db: Path, name: str) -> int:
    """Completed trials of a study, read without creating anything (a read-only SQLite
    connection: opening Optuna's storage while another process creates it would race)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            (n,) = con.execute(
                "SELECT COUNT(*) FROM trials t JOIN studies s ON t.study_id = s.study_id "
                "WHERE s.study_name = ? AND t.state = 'COMPLETE'",
                (name,),
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return 0
    return int(n)


def cli_script(folder: Path) -> Path:
    """``miso-bench`` as a script that also registers the slow test models (subprocesses)."""
    script = folder / "sweep.py"
    script.write_text(
        "import sys\nimport tests.slow_model\n"
        "from miso_bench.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return script


def finished(storage: Any, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.get_trials() if t.state in states]


def test_nested_cv_never_shows_an_outer_test_pedon_to_a_trial(
    tiny_dir, home, tmp_path, monkeypatch
):
    cfg = config(tiny_dir, home)
    seen: list[tuple[str, set]] = []
    real = sweep_module.fit_predict_fold

    def spy(inputs, spec, *args, **kwargs):
        used = set(inputs.ids[np.concatenate([spec.fit, spec.val])].tolist())
        seen.append((spec.name, used))
        return real(inputs, spec, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "fit_predict_fold", spy)
    settings = SweepSettings(space=space(tmp_path), n_trials=3, inner_splits=2, pruner="none")
    planned, told = [], []
    result = run_sweep(
        cfg,
        settings,
        on_plan=planned.extend,
        on_trial=lambda study, counts: told.append((study, counts["complete"])),
    )
    inputs = build_inputs(cfg, prepare_dataset(cfg, lambda m: None))
    name = study_name(cfg, settings, inputs.manifest.name)
    outers = {o.name: o for o in outer_folds(cfg, inputs, 2, name)}
    # The progress bar's plan: every study in order; each told at its start and per trial.
    assert planned == list(outers)
    assert [t for t in told if t[1] == 3] == [(name, 3) for name in outers]
    assert len(told) == len(outers) * 4
    trial_fits = [(n, ids) for n, ids in seen if "/trial_" in n]
    assert len(trial_fits) == 6 * 3 * 2  # six studies, three trials, two inner folds
    for name, ids in seen:
        study = name.split("/trial_")[0] if "/trial_" in name else name
        outer = outers[study]
        test_ids = set(inputs.ids[outer.test].tolist())
        assert not ids & test_ids, name  # never an outer test pedon
        assert ids <= set(inputs.ids[outer.train].tolist())
    assert set(result.best_params) == {
        "model.params.n_estimators",
        "model.params.max_depth",
        "model.params.min_samples_leaf",
    }
    # The outer estimate covers every pedon once, from the outer refits.
    assert result.metrics["test/overall/n"] == len(inputs.table)
    client = MlflowClient(f"sqlite:///{home}/t.db")
    run = client.get_run(result.run_id)
    assert run.data.tags["run_level"] == "sweep"
    assert run.data.metrics["headline/macro_f1"] == round(
        result.metrics["test/overall/macro_f1"], 4
    )
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == [
        f"{inputs.manifest.name}/{cfg['task']}"
    ]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"best_params.yaml", "oof_predictions.parquet", "search_space.yaml"} <= artifacts
    assert "figures" in artifacts
    figures = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(result.run_id, "figures")}
    assert {"optimization_history.png", "intermediate_values.png"} <= figures
    trials = client.search_runs([run.info.experiment_id], "tags.run_level = 'trial'")
    assert len(trials) == 18 and all("inner_0/macro_f1" in t.data.metrics for t in trials)


def test_bad_trials_are_pruned(tiny_dir, home, tmp_path):
    cfg = config(tiny_dir, home)
    settings = SweepSettings(
        space=space(tmp_path), n_trials=12, inner_splits=3, pruner="median", study="pruning"
    )
    result = run_sweep(cfg, settings)
    assert sum(c["pruned"] for c in result.counts.values()) > 0
    assert all(c["complete"] + c["pruned"] == 12 for c in result.counts.values())


def test_an_undefined_inner_score_is_left_out_not_scored_zero(
    tiny_dir, home, tmp_path, monkeypatch
):
    """An inner fold whose metric is undefined by its truth (f1_pos without positives) once
    counted as 0.0, pulling every trial's value and the reported best inner score down."""
    real = sweep_module.fit_predict_fold

    def undefined_first_inner(inputs, spec, *args, **kwargs):
        result = real(inputs, spec, *args, **kwargs)
        if spec.name.endswith("/inner_0"):
            result = replace(result, metrics={**result.metrics, "test/overall/macro_f1": np.nan})
        return result

    monkeypatch.setattr(sweep_module, "fit_predict_fold", undefined_first_inner)
    settings = SweepSettings(
        space=space(tmp_path), n_trials=2, inner_splits=2, pruner="none", study="undefined"
    )
    result = run_sweep(config(tiny_dir, home), settings)
    client = MlflowClient(f"sqlite:///{home}/t.db")
    said = client.get_run(result.run_id).data.tags["warning.inner_metric_undefined"]
    assert "undefined on inner fold 0" in said
    trials = client.search_runs(
        client.get_experiment_by_name("synthetic-alaska-tiny/tax_order").experiment_id,
        "tags.run_level = 'trial' and tags.optuna_study LIKE 'undefined/%'",
    )
    storage = f"sqlite:///{home}/optuna.db"
    for run in trials:
        assert "inner_0/macro_f1" not in run.data.metrics
        study = optuna.load_study(study_name=run.data.tags["optuna_study"], storage=storage)
        trial = study.trials[int(run.data.tags["optuna_trial"])]
        assert trial.value == pytest.approx(run.data.metrics["inner_1/macro_f1"])


def test_tuned_parameters_run(tiny_dir, home, tmp_path, capsys):
    from miso_bench.cli import main

    cfg = config(tiny_dir, home)
    settings = SweepSettings(space=space(tmp_path), n_trials=2, inner_splits=2, study="tuned")
    run_sweep(cfg, settings)
    best = best_params("tuned", f"sqlite:///{home}/optuna.db")
    args = ["run", "--model", "rf", "--data", str(tiny_dir), "--params", "best:tuned"]
    args += ["--tracking-uri", f"sqlite:///{home}/t.db", "--no-refit"]
    assert main(args) == 0
    client = MlflowClient(f"sqlite:///{home}/t.db")
    exp = client.get_experiment_by_name("synthetic-alaska-tiny/tax_order")
    runs = client.search_runs([exp.experiment_id], "tags.run_level = 'parent'")
    params = runs[0].data.params
    for path, value in best.items():
        assert params[path] == str(value)
    # Its CV ran on the pedons the parameters were tuned on: said, and tagged, not silent.
    tags = runs[0].data.tags
    assert tags["params_source"] == "best:tuned"
    assert tags["params_tuned_on.task"] == "tax_order"
    assert "optimistic" in tags["warning.tuned_on_these_pedons"]
    assert "tuned_on_these_pedons" in capsys.readouterr().out
    from miso_bench.analysis.report import build_report

    report = build_report(tmp_path / "report", [exp.name], f"sqlite:///{home}/t.db", log=False)
    assert "(tuned on its own pedons: optimistic)" in report.markdown.read_text()
    # Another task's pedons were not its tuning data: no warning.
    assert main([*args, "--task", "pf1m"]) == 0
    exp = client.get_experiment_by_name("synthetic-alaska-tiny/pf1m")
    other = client.search_runs([exp.experiment_id], "tags.run_level = 'parent'")[0].data.tags
    assert other["params_source"] == "best:tuned"
    assert "warning.tuned_on_these_pedons" not in other
    assert main(["run", "--model", "rf", "--params", "best:nothing", "--data", str(tiny_dir)]) == 2
    assert "no sweep 'nothing'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_sweep_continues_to_exactly_the_requested_trials(tiny_dir, home, tmp_path):
    storage = f"sqlite:///{home}/optuna.db"
    sp = tmp_path / "space.yaml"
    sp.write_text("model.params.n_estimators: {low: 5, high: 40}\n")
    script = cli_script(tmp_path)
    args = [
        "sweep",
        "--model",
        "slow_forest",
        "--task",
        "tax_order",
        "--data",
        str(tiny_dir),
        "--trials",
        "3",
        "--inner-splits",
        "2",
        "--pruner",
        "none",
        "--space",
        str(sp),
        "--study",
        "killed",
        "--tracking-uri",
        f"sqlite:///{home}/t.db",
    ]
    env = {**os.environ, "MISO_BENCH_HOME": str(home), "PYTHONPATH": str(REPO)}
    env["MISO_TEST_FIT_SLEEP"] = "1.0"
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not count_complete(home / "optuna.db", "killed/outer_0"):
            time.sleep(0.5)
        time.sleep(1.0)  # into the next trial
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    study = optuna.load_study(study_name="killed/outer_0", storage=storage)
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in study.get_trials())
    import tests.slow_model  # noqa: F401  (the model, here without the sleep)

    env_before = os.environ.pop("MISO_TEST_FIT_SLEEP", None)
    try:
        from miso_bench.cli import main

        assert main(args) == 0
    finally:
        if env_before is not None:
            os.environ["MISO_TEST_FIT_SLEEP"] = env_before
    for name in [f"killed/outer_{k}" for k in range(5)] + ["killed/final"]:
        done = finished(storage, name)
        assert len(done) == 3, name  # exactly the requested trials
        assert len({t.number for t in done}) == 3
    study = optuna.load_study(study_name="killed/outer_0", storage=storage)
    failed = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    retried = [t for t in study.get_trials() if "retry_of" in t.user_attrs]
    assert failed and retried and retried[0].params == failed[0].params
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.get_trials())
    client = MlflowClient(f"sqlite:///{home}/t.db")
    exp = client.get_experiment_by_name("synthetic-alaska-tiny/tax_order")
    sweeps = client.search_runs([exp.experiment_id], "tags.run_level = 'sweep'")
    assert [s.info.status for s in sweeps] == ["FINISHED"]  # the same sweep run, completed
    stale = client.search_runs(
        [exp.experiment_id], "tags.run_level = 'trial' and attributes.status = 'RUNNING'"
    )
    assert not stale


@pytest.mark.slow
def test_two_workers_share_one_study(tiny_dir, home, tmp_path, monkeypatch):
    import tests.slow_model  # noqa: F401  (slow_forest: trials long enough to share)

    monkeypatch.setenv("MISO_BENCH_PLUGINS", "tests.slow_model")  # the worker's registry too
    monkeypatch.setenv("MISO_TEST_FIT_SLEEP", "0.3")
    cfg = config(tiny_dir, home, "slow_forest")
    settings = SweepSettings(
        space=space(tmp_path), n_trials=4, inner_splits=2, workers=2, pruner="none", study="two"
    )
    result = run_sweep(cfg, settings)
    storage = f"sqlite:///{home}/optuna.db"
    for name in result.counts:
        assert len(finished(storage, name)) == 4, name  # exact, with two workers claiming
    client = MlflowClient(f"sqlite:///{home}/t.db")
    trials = client.search_runs(
        [client.get_run(result.run_id).info.experiment_id], "tags.run_level = 'trial'"
    )
    assert len(trials) == 24
    assert len({t.data.tags["pid"] for t in trials}) == 2  # both processes ran trials


@pytest.mark.slow
def test_a_worker_joins_a_sweep_through_a_journal_file(tiny_dir, home, tmp_path):
    """What a second machine does: ``--join`` with the same journal storage and MLflow store
    (here another process on this machine), while the first runs the sweep."""
    journal = tmp_path / "shared" / "optuna.log"
    journal.parent.mkdir()
    sp = tmp_path / "space.yaml"
    sp.write_text("model.params.n_estimators: {low: 5, high: 40}\n")
    script = cli_script(tmp_path)
    common = [
        "--model", "slow_forest", "--task", "tax_order", "--data", str(tiny_dir),
        "--trials", "4", "--inner-splits", "2", "--pruner", "none", "--space", str(sp),
        "--study", "shared", "--storage", f"journal:{journal}",
        "--tracking-uri", f"sqlite:///{home}/t.db",
    ]  # fmt: skip
    env = {**os.environ, "MISO_BENCH_HOME": str(home), "PYTHONPATH": str(REPO)}
    env["MISO_TEST_FIT_SLEEP"] = "0.5"
    first = subprocess.Popen([sys.executable, str(script), "sweep", *common], env=env)
    try:
        client = MlflowClient(f"sqlite:///{home}/t.db")
        deadline = time.time() + 180
        while time.time() < deadline:  # the joining worker needs the sweep's study runs
            exp = client.get_experiment_by_name("synthetic-alaska-tiny/tax_order")
            if (
                exp
                and len(client.search_runs([exp.experiment_id], "tags.run_level = 'study'")) == 6
            ):
                break
            time.sleep(0.5)
        joined = subprocess.run(
            [sys.executable, str(script), "sweep", *common, "--join"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert joined.returncode == 0, joined.stderr
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    for name in [f"shared/outer_{k}" for k in range(5)] + ["shared/final"]:
        assert len(finished(storage, name)) == 4, name  # exact, with two processes claiming
    trials = client.search_runs([exp.experiment_id], "tags.run_level = 'trial'")
    assert len(trials) == 24
    assert len({t.data.tags["pid"] for t in trials}) == 2  # the joining process ran trials


@pytest.mark.slow
def test_a_miso_sweep_prunes_by_epoch_and_finishes(tiny_dir, home, tmp_path):
    text = "model.params.lr: {low: 0.0001, high: 0.003, log: true}\n"
    cfg = config(
        tiny_dir,
        home,
        "miso",
        "model.params.epochs=2",
        "model.params.batch_size=16",
        "model.params.device=cpu",
    )
    settings = SweepSettings(
        space=space(tmp_path, text, "miso"), n_trials=2, inner_splits=2, pruner="hyperband"
    )
    result = run_sweep(cfg, settings)
    assert "model.params.lr" in result.best_params
    study = optuna.load_study(
        study_name=f"{result.study}/final", storage=f"sqlite:///{home}/optuna.db"
    )
    reported = [t.intermediate_values for t in study.get_trials() if t.intermediate_values]
    assert reported and max(len(v) for v in reported) >= 2  # epochs reported to the pruner


def test_sampler_seeds_fit_numpy_for_every_worker_number():
    # A joining worker numbers itself from the clock (up to 100,000); the seed once overflowed.
    outer = sweep_module._Outer("s/final", -1, np.arange(3), np.arange(0), [])
    for worker in (0, 1, 41_000, 99_999):
        seed = sweep_module._seed({"seed": 2**31}, outer, worker)
        optuna.samplers.TPESampler(seed=seed)  # raises beyond 2**32 - 1


def test_a_study_of_another_configuration_is_refused(tiny_dir, home, tmp_path):
    settings = SweepSettings(
        space=space(tmp_path), n_trials=1, inner_splits=2, pruner="none", study="same"
    )
    run_sweep(config(tiny_dir, home, "rf", "cv.n_splits=2"), settings)
    # Other outer folds: the old studies' trials were tuned on rows now in a test fold.
    with pytest.raises(MisoBenchError, match="holds trials of another configuration"):
        run_sweep(config(tiny_dir, home, "rf", "cv.n_splits=3"), settings)


def test_an_outer_refit_is_reused_only_with_the_same_parameters(tiny_dir, home, monkeypatch):
    cfg = config(tiny_dir, home, "rf", "cv.n_splits=2")
    inputs = build_inputs(cfg, prepare_dataset(cfg, lambda m: None))
    outer = outer_folds(cfg, inputs, 2, "reuse")[0]
    tracker = Tracker("reuse", cfg["tracking"]["uri"])
    fits = []
    real = sweep_module.fit_predict_fold
    monkeypatch.setattr(
        sweep_module, "fit_predict_fold", lambda *a, **k: fits.append(1) or real(*a, **k)
    )
    with tracker.run("study") as run:
        a = {"model.params.n_estimators": 5}
        first, _ = sweep_module._refit_outer(cfg, inputs, outer, a, tracker, run)
        again, _ = sweep_module._refit_outer(cfg, inputs, outer, a, tracker, run)
        assert len(fits) == 1  # read back
        np.testing.assert_array_equal(first, again)
        b = {"model.params.n_estimators": 7}  # the study found a better trial meanwhile
        sweep_module._refit_outer(cfg, inputs, outer, b, tracker, run)
        assert len(fits) == 2


def test_a_trial_whose_run_just_ended_is_not_taken_for_dead(tmp_path):
    settings = SweepSettings(space=space(tmp_path), storage=f"sqlite:///{tmp_path}/o.db", grace_s=2)
    study = optuna.create_study(study_name="s/outer_0", storage=settings.storage)
    trial = study.ask()  # RUNNING in Optuna
    time.sleep(2.5)  # a trial older than the grace time...
    tracker = Tracker("dead", f"sqlite:///{tmp_path}/t.db")
    with tracker.run("study") as parent:
        tags = {"run_level": "trial", "optuna_study": "s/outer_0", "state": "COMPLETE"}
        run = tracker.start_run(
            "t", tags={**tags, "optuna_trial": str(trial.number)}, parent_id=parent
        )
        tracker.client.set_terminated(run, status="FINISHED")  # ...whose worker is telling
        assert sweep_module._fail_dead_trials(study, tracker, parent, settings) == 0
        stale = replace(settings, grace_s=0)  # ...but never told: its worker died
        assert sweep_module._fail_dead_trials(study, tracker, parent, stale) == 1
    assert study.get_trials()[0].state == optuna.trial.TrialState.FAIL


def test_a_time_budget_is_shared_evenly_by_the_studies_left():
    now = time.time()
    assert sweep_module._share(None, 3) is None
    assert sweep_module._share(now + 60.0, 3) == pytest.approx(now + 20.0, abs=1.0)
    assert sweep_module._share(now - 5.0, 2) == pytest.approx(now, abs=1.0)  # spent: now


def test_the_printed_run_command_runs_the_tuned_configuration(tiny_dir, home, tmp_path, capsys):
    import shlex

    from miso_bench.cli import main

    (tmp_path / "space.yaml").write_text(SMALL_RF)
    storage = f"sqlite:///{tmp_path}/elsewhere.db"  # not the default: the hint must carry it
    args = ["sweep", "--model", "rf", "--task", "pf1m", "--data", str(tiny_dir), "--trials", "1"]
    args += ["--inner-splits", "2", "--set", "cv.n_splits=2", "--set", "model.params.n_jobs=1"]
    args += ["--space", str(tmp_path / "space.yaml"), "--storage", storage]
    args += ["--tracking-uri", f"sqlite:///{home}/t.db"]
    assert main(args) == 0
    hint = [line for line in capsys.readouterr().out.splitlines() if line.startswith("run it:")]
    command = shlex.split(hint[0].removeprefix("run it:"))
    assert command[0] == "miso-bench" and "--storage" in command and "--data" in command
    assert main([*command[1:], "--no-refit"]) == 0
