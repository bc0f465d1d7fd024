"""Optuna sweeps scored by nested spatial cross-validation.

The outer folds are the run's folds (the same scheme and seed as ``miso-bench run``). For
each outer fold an Optuna study tunes the model on inner folds built inside the outer
training fold alone (the same scheme, ``sweep.inner_splits`` folds); the best parameters are
then refit on the whole outer training fold and predict the outer test fold. The pooled
outer-test predictions are the honest estimate of the *tuned pipeline*. A last study on every
labelled pedon gives the parameters to use (``miso-bench run --params best:STUDY``). No outer
test pedon ever reaches a trial: the fold engine's hygiene guard checks every inner fit
against the outer test fold (``held_out``).

Trials report intermediate values (the running mean over inner folds for trees; the inner
validation score per epoch for MISO) to a pruner (median by default, Hyperband selectable).

Studies live in Optuna storage (SQLite beside the MLflow store by default, or any RDB URL
such as PostgreSQL shared by several machines). Trials send heartbeats: a trial whose process
died (SIGKILL, a lost machine) is marked failed and retried with the same parameters, and a
rerun of the same command continues the same studies until each holds the requested number
of finished (completed or pruned) trials. Several workers (``--workers N`` on one machine, or
``--join`` on other machines sharing the storage and the MLflow server) run trials of the
same studies; on one machine a lock file makes the count exact.

MLflow: a parent run per sweep, a child run per study (its best parameters, refit and plots)
and a grandchild run per trial (parameters, per-fold values, state).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from ..config import config_hash, home_dir, validate_config
from ..cv import SplitContext, build_splits
from ..data.domain import sample_prediction_domain
from ..engine import (
    RunInputs,
    build_inputs,
    fit_predict_fold,
    identity_tags,
    plan_fold,
    pooled_evaluation,
    prepare_dataset,
)
from ..engine import truth_metrics as score_truth
from ..errors import MisoBenchError, warn
from ..evaluation.regional import hard_labels
from ..models import MODELS, deep_merge
from ..provenance import code_version, process_alive, process_identity
from ..tracking import (
    Heartbeat,
    RunInProgressError,
    Tracker,
    WarningLog,
    flatten,
    headline_metrics,
)
from .space import SearchSpace, nested

__all__ = [
    "SweepResult",
    "SweepSettings",
    "best_params",
    "default_storage",
    "join_sweep",
    "outer_folds",
    "run_sweep",
    "study_name",
    "usable_space",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: The states that count as finished trials (the requested number is of these).
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def default_storage() -> str:
    """SQLite next to the MLflow store: ``$MISO_BENCH_HOME/optuna.db``."""
    home = home_dir()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'optuna.db'}"


@dataclass
class SweepSettings:
    """How a sweep runs.

    Attributes:
        space: the search space.
        n_trials: finished trials per study.
        timeout_s: wall-clock budget of the whole sweep (split evenly between its studies);
            None for no limit.
        storage: Optuna storage URL (default: :func:`default_storage`).
        study: the study name (default: derived from the model, task, cv and seed).
        workers: processes running trials on this machine.
        pruner: ``median``, ``hyperband`` or ``none``.
        inner_splits: inner folds per outer training fold.
        heartbeat_s: how often a running trial tells (in its MLflow run) that it is alive.
        grace_s: how long a trial that has not started its MLflow run yet counts as alive.
    """

    space: SearchSpace
    n_trials: int = 30
    timeout_s: float | None = None
    storage: str | None = None
    study: str | None = None
    workers: int = 1
    pruner: str = "median"
    inner_splits: int = 3
    heartbeat_s: int = 10
    grace_s: int = 30

    def key(self) -> dict[str, Any]:
        """What identifies a sweep's results (for resuming)."""
        return {
            "space": [d.__dict__ for d in self.space.dimensions],
            "n_trials": self.n_trials,
            "pruner": self.pruner,
            "inner_splits": self.inner_splits,
        }


@dataclass
class SweepResult:
    """What a sweep produced.

    Attributes:
        run_id: the MLflow parent run.
        study: the study name prefix (``<study>/outer_k``, ``<study>/final``).
        best_params: dotted path -> value of the final study's best trial.
        best_value: its inner-CV score.
        metrics: the tuned pipeline's outer-CV metrics (with CIs), truth means, trial counts.
        regional: the outer-CV evaluation by region.
        counts: study -> {complete, pruned, failed}.
        outer_params: outer fold -> the parameters its study chose.
        seconds: wall time.
    """

    run_id: str
    study: str
    best_params: dict[str, Any]
    best_value: float
    metrics: dict[str, float]
    regional: Any
    counts: dict[str, dict[str, int]]
    outer_params: dict[int, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    experiment: str = ""
    tracking_uri: str = ""


# --- storage and studies ------------------------------------------------------------------
_STORAGES: dict[str, optuna.storages.BaseStorage] = {}


def _storage(settings: SweepSettings) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``settings.storage`` (one object per URL and process: each
    holds a database engine)."""
    url = settings.storage or default_storage()
    if url not in _STORAGES:
        _STORAGES[url] = _open_storage(url)
    return _STORAGES[url]


def _open_storage(url: str) -> optuna.storages.BaseStorage:
    if url.startswith(("sqlite", "postgresql", "mysql")):
        engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    raise MisoBenchError(
        f"--storage {url!r}: use sqlite:///PATH, postgresql://USER@HOST/DB or journal:PATH"
    )


def _pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        # Steps are inner folds for trees and epochs (over every inner fold) for MISO: the
        # largest step is taken from the first finished trial rather than assumed.
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    if name == "none":
        return optuna.pruners.NopPruner()
    raise MisoBenchError(f"--pruner {name!r}: use median, hyperband or none")


def _study(name: str, settings: SweepSettings, seed: int) -> optuna.Study:
    return optuna.create_study(
        study_name=name,
        storage=_storage(settings),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=_pruner(settings.pruner),
        load_if_exists=True,
    )


def _check_identity(study: optuna.Study, key: str, fingerprint: str, task: str) -> None:
    """A study holds trials of one objective: the same config, data, code, search space and
    inner folds. Reopening it under another (a changed ``--set``, ``--data``, ``--space``,
    ``--inner-splits``, or code) would mix trials scored on other folds into its best
    parameters, so it is refused; a study without trials takes the key. The study also
    records the dataset and task it is tuned on (``run --params best:STUDY`` warns when it
    cross-validates on those same pedons)."""
    found = study.user_attrs.get("sweep_key")
    if found is None:
        study.set_user_attr("sweep_key", key)
    elif found != key:
        raise MisoBenchError(
            f"Optuna study {study.study_name!r} holds trials of another configuration, "
            "dataset, code version, search space or --inner-splits (fix: --study NEW_NAME, "
            "or delete the old study, e.g. optuna delete-study)"
        )
    if study.user_attrs.get("dataset_fingerprint") is None:
        study.set_user_attr("dataset_fingerprint", fingerprint)
        study.set_user_attr("task", task)


def _study_key(config: dict[str, Any], fingerprint: str, settings: SweepSettings) -> str:
    """What a study's trials depend on (not how many there are, nor the budget)."""
    return config_hash(
        {
            "config": config,
            "dataset": fingerprint,
            "code": code_version(),
            "space": [d.__dict__ for d in settings.space.dimensions],
            "inner_splits": settings.inner_splits,
        }
    )


def _counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
    }


@contextlib.contextmanager
def _claim_lock(settings: SweepSettings) -> Iterator[None]:
    """One worker at a time counts the trials and asks for a new one, so the number of
    finished trials is exact: a lock file beside a SQLite database (one machine) or a
    journal file (machines sharing its file system). PostgreSQL has no such lock here: each
    concurrent worker may add one trial beyond ``n_trials`` to a study."""
    url = settings.storage or default_storage()
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///") + ".lock")
    elif url.startswith("journal:"):  # not ``.lock``: Optuna's own journal lock is that
        path = Path(url.removeprefix("journal:") + ".claim")
    else:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- the rows of each study ---------------------------------------------------------------
@dataclass
class _Outer:
    """A study's rows: where it tunes (``train``), what it must never see (``test``)."""

    name: str
    index: int  # outer fold number, -1 for the final study
    train: np.ndarray
    test: np.ndarray
    inner: list[tuple[np.ndarray, np.ndarray]]


def _context(config: dict[str, Any], inputs: RunInputs, rows: np.ndarray, seed: int) -> Any:
    domain = sample_prediction_domain(inputs.manifest, int(config["eval"]["domain_points"]), seed)
    domain_m = inputs.frame.to_metric(domain[:, 0], domain[:, 1]) if len(domain) else domain
    return SplitContext(
        inputs.xy_m[rows],
        inputs.y[rows],
        inputs.ids[rows],
        {k: v[rows] for k, v in inputs.regions.items()},
        domain_m,
        seed,
    )


def outer_folds(
    config: dict[str, Any], inputs: RunInputs, inner_splits: int, study: str
) -> list[_Outer]:
    """The outer folds (exactly as ``miso-bench run`` builds them) and the final study on every
    pedon, each with inner folds built inside its own training rows."""
    seed = int(config["seed"])
    cv = dict(config["cv"])
    everything = np.arange(len(inputs.table))
    _, outer = build_splits(cv["name"], cv, _context(config, inputs, everything, seed))
    inner_cv = {**cv, "n_splits": inner_splits}
    inner_name = "spatial" if cv["name"] == "file" else cv["name"]  # a split file has no inner
    studies = []
    for k, (train, test) in enumerate([*outer, (everything, np.array([], dtype=np.int64))]):
        train = np.asarray(train, dtype=np.int64)
        _, inner = build_splits(inner_name, inner_cv, _context(config, inputs, train, seed + k))
        final = k == len(outer)
        studies.append(
            _Outer(
                f"{study}/final" if final else f"{study}/outer_{k}",
                -1 if final else k,
                train,
                np.asarray(test, dtype=np.int64),
                [(train[a], train[b]) for a, b in inner],
            )
        )
    return studies


# --- the objective ------------------------------------------------------------------------
def _trial_config(config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    out = deep_merge(config, nested(values))
    validate_config(out)
    return out


class _Objective:
    """Scores one trial on the inner folds of one study, in its own MLflow run."""

    def __init__(
        self,
        config: dict[str, Any],
        inputs: RunInputs,
        space: SearchSpace,
        outer: _Outer,
        tracker: Tracker,
        study_run: str,
        heartbeat_s: float = 10.0,
    ) -> None:
        self.config, self.inputs, self.space, self.outer = config, inputs, space, outer
        self.tracker, self.study_run, self.heartbeat_s = tracker, study_run, heartbeat_s
        self.primary = inputs.task.primary_metric

    def __call__(self, trial: optuna.Trial) -> float:
        values = self.space.suggest(trial)
        cfg = _trial_config(self.config, values)
        tags = {
            "run_level": "trial",
            "optuna_study": self.outer.name,
            "optuna_trial": str(trial.number),
            "fold": self.outer.name.rsplit("/", 1)[1],
            **process_identity(),
        }
        run_id = self.tracker.start_run(
            f"trial_{trial.number}", tags=tags, parent_id=self.study_run
        )
        self.tracker.log_params(run_id, values)
        with Heartbeat(self.tracker, run_id, every_s=self.heartbeat_s):
            try:
                value = self._score(trial, cfg, run_id)
            except optuna.TrialPruned:
                self._end(run_id, "PRUNED", "FINISHED")
                raise
            except KeyboardInterrupt:
                self._end(run_id, "INTERRUPTED", "KILLED")
                raise
            except BaseException:
                self._end(run_id, "FAIL", "FAILED")
                raise
        self.tracker.log_metrics(run_id, {f"inner_mean/{self.primary}": value})
        self._end(run_id, "COMPLETE", "FINISHED")
        return value

    def _end(self, run_id: str, state: str, status: str) -> None:
        self.tracker.set_tags(run_id, {"state": state})
        self.tracker.client.set_terminated(run_id, status=status)

    def _score(self, trial: optuna.Trial, cfg: dict[str, Any], run_id: str) -> float:
        seed = int(cfg["seed"])
        chips = self.inputs.kind == "chips"
        scores: list[float] = []

        def on_epoch(j: int, epoch: int, record: dict[str, float]) -> None:
            """Deep models report their inner validation score per epoch: pruning."""
            if "val/score" not in record:
                return
            trial.report(float(record["val/score"]), step=j * int(record["epochs"]) + epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch} of inner fold {j}")

        for j, (train, test) in enumerate(self.outer.inner):
            spec = plan_fold(
                f"{self.outer.name}/trial_{trial.number}/inner_{j}",
                self.inputs,
                train,
                test,
                cfg["cv"],
                seed + j,
                held_out=self.outer.test,  # the hygiene guard checks it never reaches a fit
            )
            result = fit_predict_fold(
                self.inputs,
                spec,
                cfg["model"]["params"],
                seed,
                on_epoch=partial(on_epoch, j) if chips else None,
            )
            score = float(result.metrics.get(f"test/overall/{self.primary}", np.nan))
            if not np.isfinite(score):
                # Undefined by the fold's truth alone (e.g. f1_pos without a positive pedon),
                # so for every trial alike: scored on the other inner folds, not as a 0.
                warn(
                    "inner_metric_undefined",
                    f"{self.primary} is undefined on inner fold {j} of {self.outer.name} "
                    "(e.g. it holds no positive pedon): trials are scored on its other inner "
                    "folds",
                )
                continue
            scores.append(score)
            self.tracker.log_metrics(run_id, {f"inner_{j}/{self.primary}": score})
            if not chips:  # trees report the running mean after each inner fold
                trial.report(float(np.mean(scores)), step=j)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"after inner fold {j}")
        if not scores:
            raise MisoBenchError(
                f"{self.primary} is undefined on every inner fold of {self.outer.name} (e.g. "
                "none holds a positive pedon) (fix: fewer --inner-splits or a smaller "
                "cv.block_size_m)"
            )
        return float(np.mean(scores))


def _fail_dead_trials(
    study: optuna.Study, tracker: Tracker, study_run: str, settings: SweepSettings
) -> int:
    """Trials left RUNNING by a process that died (SIGKILL, a lost machine): marked failed,
    their MLflow runs KILLED, and the same parameters queued again. Returns how many.

    A trial is alive while its MLflow run's process is (same host: its pid; another host:
    a fresh heartbeat tag); a trial without a run yet is alive for ``grace_s``."""
    running = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    if not running:
        return 0
    # Every trial run of this study, whichever sweep run or joining worker holds it, whatever
    # its state: a run already ended (its worker about to tell Optuna) is not dead.
    runs = {
        r.data.tags.get("optuna_trial"): r
        for r in tracker.client.search_runs(
            [tracker.experiment_id],
            f"tags.optuna_study = '{study.study_name}' and tags.run_level = 'trial'",
            max_results=5000,
        )
    }
    dead = 0
    now = time.time()
    for trial in running:
        run = runs.get(str(trial.number))
        if run is not None and run.info.status != "RUNNING":
            # Ended a moment ago, its worker about to tell Optuna: alive for the grace time.
            ended = (run.info.end_time or 0) / 1000.0
            alive = (
                run.data.tags.get("state") in ("COMPLETE", "PRUNED", "FAIL")
                and now - ended < settings.grace_s
            )
        elif run is not None:
            alive = process_alive(run.data.tags, stale_s=max(6.0 * settings.heartbeat_s, 60.0))
        else:
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            alive = now - started < settings.grace_s
        if alive:
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        if run is not None:
            tracker.set_tags(run.info.run_id, {"state": "FAIL"})
            tracker.client.set_terminated(run.info.run_id, status="KILLED")
        dead += 1
    return dead


def _work_on(
    study: optuna.Study,
    objective: _Objective,
    settings: SweepSettings,
    deadline: float | None,
    on_trial: Callable[[str, dict[str, int]], None] | None = None,
) -> None:
    """Run trials of ``study`` until it holds ``n_trials`` finished ones (or the deadline)."""
    if on_trial is not None:
        on_trial(study.study_name, _counts(study))  # a resumed study starts part done
    while True:
        with _claim_lock(settings):
            _fail_dead_trials(study, objective.tracker, objective.study_run, settings)
            counts = _counts(study)
            finished = counts["complete"] + counts["pruned"]
            if finished >= settings.n_trials:
                return
            if deadline is not None and time.time() >= deadline:
                return
            # Other workers may hold the remaining trials: then wait for them.
            wait = finished + counts["running"] >= settings.n_trials
            trial = None if wait else study.ask()  # a queued retry first, else a new draw
        if trial is None:
            time.sleep(max(1.0, settings.heartbeat_s / 2))
            continue
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        else:
            study.tell(trial, value, skip_if_finished=True)
        if on_trial is not None:
            on_trial(study.study_name, _counts(study))


def _wait_for_running(study: optuna.Study, objective: _Objective, settings: SweepSettings) -> None:
    """Wait until no trial of the study runs (other workers' last trials, or dead ones)."""
    while _counts(study)["running"]:
        with _claim_lock(settings):
            _fail_dead_trials(study, objective.tracker, objective.study_run, settings)
        if _counts(study)["running"]:
            time.sleep(max(1.0, settings.heartbeat_s / 2))


# --- the sweep ----------------------------------------------------------------------------
def usable_space(space: SearchSpace, model: str) -> tuple[SearchSpace, list[str]]:
    """The space without the parameters a registry variant fixes (an ablation's defining
    switches, e.g. ``decoder`` of ``miso_no_geo``), and the paths dropped."""
    fixed = {f"model.params.{k}" for k in flatten(MODELS.get(model).defaults)}
    kept = tuple(d for d in space.dimensions if d.path not in fixed)
    dropped = [d.path for d in space.dimensions if d.path in fixed]
    if not kept:
        raise MisoBenchError(
            f"every dimension of {space.source} is fixed by model {model!r}: nothing to search"
        )
    return SearchSpace(space.name, kept, space.source), dropped


def study_name(config: dict[str, Any], settings: SweepSettings, dataset: str) -> str:
    """The study prefix: ``--study``, or dataset-model-cv-task-seed (studies of one model on
    two datasets never meet in the same storage)."""
    return settings.study or (
        f"{dataset}-{config['model']['name']}-{config['cv']['name']}-{config['task']}"
        f"-seed{config['seed']}"
    )


def _experiment(config: dict[str, Any], inputs: RunInputs) -> str:
    return config["tracking"]["experiment"] or f"{inputs.manifest.name}/{inputs.task.name}"


def _share(deadline: float | None, studies_left: int) -> float | None:
    """The deadline of the next study: an even share of the time left to the sweep (every
    process splits the budget the same way, workers and joining machines included)."""
    if deadline is None:
        return None
    return time.time() + max(0.0, deadline - time.time()) / max(studies_left, 1)


def _seed(config: dict[str, Any], outer: _Outer, worker: int) -> int:
    """The sampler's seed: one per study and per worker (two workers never draw alike)."""
    return (int(config["seed"]) + 7919 * (outer.index + 2) + 104729 * worker) % 2**32


def _worker_main(
    config: dict[str, Any],
    settings: SweepSettings,
    runs: dict[str, str],
    deadline: float | None,
    worker: int,
) -> None:
    """A worker process on this machine: trials of every study in turn."""
    inputs = build_inputs(config, prepare_dataset(config, lambda _m: None))
    tracker = Tracker(_experiment(config, inputs), config["tracking"]["uri"])
    outers = outer_folds(
        config, inputs, settings.inner_splits, study_name(config, settings, inputs.manifest.name)
    )
    for i, outer in enumerate(outers):
        study = _study(outer.name, settings, _seed(config, outer, worker))
        objective = _Objective(
            config, inputs, settings.space, outer, tracker, runs[outer.name], settings.heartbeat_s
        )
        _work_on(study, objective, settings, _share(deadline, len(outers) - i))


def _start_workers(
    config: dict[str, Any], settings: SweepSettings, runs: dict[str, str], deadline: float | None
) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for worker in range(1, settings.workers):
        proc = ctx.Process(target=_worker_main, args=(config, settings, runs, deadline, worker))
        proc.start()
        procs.append(proc)
    return procs


def run_sweep(
    config: dict[str, Any],
    settings: SweepSettings,
    progress: Callable[[str], None] | None = None,
    on_trial: Callable[[str, dict[str, int]], None] | None = None,
    on_plan: Callable[[list[str]], None] | None = None,
) -> SweepResult:
    """Tune a model by nested spatial CV and log it to MLflow (see the module docstring).

    Args:
        config: a resolved run config (model, cv, task, data...).
        settings: the sweep settings.
        progress: told about setup steps and studies.
        on_trial: called with a study's name and trial counts when work on it starts and
            after each of its trials.
        on_plan: called once with the names of the studies, in the order they run.

    Raises:
        MisoBenchError: a bad space, storage or setting; a study without a completed trial.
        RunInProgressError: the same sweep runs in a live process.
    """
    say = progress or (lambda _m: None)
    with WarningLog(lambda message: say(f"warning: {message}")) as caught:
        result = _sweep(config, settings, say, on_trial, caught, on_plan)
    return result


def _sweep(
    config: dict[str, Any],
    settings: SweepSettings,
    say: Callable[[str], None],
    on_trial: Callable[[str, dict[str, int]], None] | None,
    caught: WarningLog,
    on_plan: Callable[[list[str]], None] | None = None,
) -> SweepResult:
    start = time.perf_counter()
    if settings.n_trials < 1:
        raise MisoBenchError(f"--trials must be at least 1, got {settings.n_trials}")
    if settings.inner_splits < 2:
        raise MisoBenchError(f"sweep.inner_splits must be at least 2, got {settings.inner_splits}")
    _pruner(settings.pruner)  # a bad name fails before any work
    _storage(settings)
    space, dropped = usable_space(settings.space, str(config["model"]["name"]))
    settings = replace(settings, space=space)
    if dropped:
        say(f"not searched ({config['model']['name']} fixes them): {', '.join(dropped)}")
    say("preparing the dataset")
    inputs = build_inputs(config, prepare_dataset(config, say), say)
    name = study_name(config, settings, inputs.manifest.name)
    say(f"building {config['cv']['name']} outer folds and their inner folds")
    outers = outer_folds(config, inputs, settings.inner_splits, name)
    key = _study_key(config, inputs.fingerprint, settings)
    for outer in outers:  # before any work: a study of another objective is refused
        _check_identity(_study(outer.name, settings, 0), key, inputs.fingerprint, inputs.task.name)
    if on_plan is not None:
        on_plan([outer.name for outer in outers])
    tracker = Tracker(_experiment(config, inputs), config["tracking"]["uri"])
    chash = config_hash(
        {
            "sweep": settings.key(),
            "config": config,
            "dataset": inputs.fingerprint,
            "code": code_version(),
        }
    )
    found = _find_sweep(tracker, chash)
    tags = {
        "run_level": "sweep",
        **identity_tags(config, inputs),
        "config_hash": chash,
        "optuna_study": name,
        "optuna_storage": (settings.storage or default_storage()).split("@")[-1],
        "search_space": space.source,
        "n_trials": str(settings.n_trials),
        "inner_splits": str(settings.inner_splits),
        "pruner": settings.pruner,
        **process_identity(),
    }
    run_name = (
        f"sweep-{inputs.model}-{config['cv']['name']}-{inputs.task.name}-seed{config['seed']}"
    )
    deadline = None if settings.timeout_s is None else time.time() + settings.timeout_s
    with tracker.run(run_name, tags=tags, run_id=found) as run_id, Heartbeat(tracker, run_id):
        if not found:
            tracker.log_params(run_id, config)
            tracker.log_yaml(run_id, config, "config.yaml")
            tracker.log_yaml(run_id, _space_record(space), "search_space.yaml")
            tracker.log_pedons(run_id, inputs)
        runs = _study_runs(tracker, run_id, outers)
        workers = _start_workers(config, settings, runs, deadline)
        try:
            outcome = _tune_and_refit(
                config, inputs, settings, outers, tracker, runs, deadline, say, on_trial
            )
        except BaseException:  # Ctrl-C, SIGTERM, an error: the workers stop too
            for proc in workers:
                proc.terminate()  # their running trials are failed and retried on resume
            raise
        finally:
            for proc in workers:
                proc.join()
        regional, metrics = _evaluate(config, inputs, outcome)
        tracker.log_metrics(run_id, metrics)
        tracker.log_yaml(run_id, outcome.best, "best_params.yaml")
        tracker.set_tags(run_id, {"best_params": yaml.safe_dump(outcome.best).strip()})
        _log_outer_predictions(tracker, run_id, inputs, outcome.oof, outcome.fold_of)
        _log_plots(tracker, run_id, _study(outers[-1].name, settings, 0))
        caught.tag(tracker, run_id)
    return SweepResult(
        run_id,
        name,
        outcome.best,
        outcome.best_value,
        metrics,
        regional,
        outcome.counts,
        outcome.outer_params,
        time.perf_counter() - start,
        tracker.experiment,
        tracker.uri,
    )


@dataclass
class _Outcome:
    oof: np.ndarray
    fold_of: np.ndarray
    truths: list[dict[str, float]] = field(default_factory=list)
    outer_params: dict[int, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    best_value: float = float("nan")


def _tune_and_refit(
    config: dict[str, Any],
    inputs: RunInputs,
    settings: SweepSettings,
    outers: list[_Outer],
    tracker: Tracker,
    runs: dict[str, str],
    deadline: float | None,
    say: Callable[[str], None],
    on_trial: Callable[[str, dict[str, int]], None] | None,
) -> _Outcome:
    """Each study in turn (its share of the time budget), then its refit."""
    n = len(inputs.table)
    out = _Outcome(np.full((n, inputs.task.n_classes), np.nan), np.full(n, -1))
    for i, outer in enumerate(outers):
        say(f"study {outer.name}")
        study = _study(outer.name, settings, _seed(config, outer, 0))
        study_deadline = _share(deadline, len(outers) - i)
        objective = _Objective(
            config, inputs, settings.space, outer, tracker, runs[outer.name], settings.heartbeat_s
        )
        _work_on(study, objective, settings, study_deadline, on_trial)
        _wait_for_running(study, objective, settings)
        out.counts[outer.name] = _counts(study)
        if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            raise MisoBenchError(
                f"study {outer.name}: no trial completed (fix: more --trials, a longer "
                "--timeout, or --pruner none)"
            )
        params = dict(study.best_trial.params)
        _log_study(tracker, runs[outer.name], study, params)
        if outer.index < 0:
            out.best, out.best_value = params, float(study.best_value)
            continue
        out.outer_params[outer.index] = params
        proba, truth = _refit_outer(config, inputs, outer, params, tracker, runs[outer.name])
        out.oof[outer.test] = proba
        out.fold_of[outer.test] = outer.index
        out.truths.append(truth)
    return out


def _evaluate(
    config: dict[str, Any], inputs: RunInputs, outcome: _Outcome
) -> tuple[Any, dict[str, float]]:
    """The tuned pipeline's outer-CV metrics (with CIs by region), truth means, counts."""
    tested = outcome.fold_of >= 0
    regional = pooled_evaluation(inputs, outcome.oof, tested, config["eval"], int(config["seed"]))
    metrics = regional.flat("test")
    keys = sorted(set().union(*outcome.truths)) if outcome.truths else []
    for key in keys:
        vals = [t[key] for t in outcome.truths if key in t and np.isfinite(t[key])]
        if vals:
            metrics[key] = float(np.mean(vals))
    metrics.update(headline_metrics(metrics, inputs.task.primary_metric))
    metrics["sweep/best_inner_value"] = outcome.best_value
    for state in ("complete", "pruned", "failed"):
        metrics[f"sweep/trials_{state}"] = float(sum(c[state] for c in outcome.counts.values()))
    return regional, metrics


def _space_record(space: SearchSpace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in space.dimensions:
        if d.kind == "categorical":
            out[d.path] = list(d.choices)
        else:
            out[d.path] = {"low": d.low, "high": d.high, "log": d.log, "step": d.step}
    return out


def join_sweep(config: dict[str, Any], settings: SweepSettings) -> int:
    """Run trials of a sweep started elsewhere (another machine sharing the Optuna storage and
    the MLflow server); returns the number of studies worked on."""
    inputs = build_inputs(config, prepare_dataset(config, lambda _m: None))
    name = study_name(config, settings, inputs.manifest.name)
    space, _ = usable_space(settings.space, str(config["model"]["name"]))
    settings = replace(settings, space=space)
    tracker = Tracker(_experiment(config, inputs), config["tracking"]["uri"])
    outers = outer_folds(config, inputs, settings.inner_splits, name)
    key = _study_key(config, inputs.fingerprint, settings)
    for outer in outers:
        _check_identity(_study(outer.name, settings, 0), key, inputs.fingerprint, inputs.task.name)
    runs: dict[str, str] = {}
    for outer in outers:
        found = tracker.client.search_runs(
            [tracker.experiment_id],
            f"tags.optuna_study = '{outer.name}' and tags.run_level = 'study'",
            max_results=1,
        )
        if not found:
            raise MisoBenchError(
                f"no sweep has a study {outer.name!r} in this MLflow store (fix: start the "
                "sweep without --join first, with the same --storage and --tracking-uri)"
            )
        runs[outer.name] = found[0].info.run_id
    deadline = None if settings.timeout_s is None else time.time() + settings.timeout_s
    worker = 1 + int(time.time() * 1000) % 100_000  # another seed than the local workers'
    for i, outer in enumerate(outers):
        study = _study(outer.name, settings, _seed(config, outer, worker))
        objective = _Objective(
            config, inputs, space, outer, tracker, runs[outer.name], settings.heartbeat_s
        )
        _work_on(study, objective, settings, _share(deadline, len(outers) - i))
    return len(outers)


def _find_sweep(tracker: Tracker, chash: str) -> str | None:
    """An earlier run of the same sweep to continue (refused while its process lives)."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.config_hash = '{chash}' and tags.run_level = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    if run.info.status == "RUNNING" and process_alive(run.data.tags):
        raise RunInProgressError(
            f"the same sweep is in progress (MLflow run {run.info.run_id}, process "
            f"{run.data.tags.get('pid', '?')} on {run.data.tags.get('host', '?')}) (fix: add "
            "workers with --join, or wait for it)"
        )
    return str(run.info.run_id)


def _study_runs(tracker: Tracker, parent: str, outers: list[_Outer]) -> dict[str, str]:
    """The child run of every study (created once, found again on a rerun)."""
    existing = {
        r.data.tags.get("optuna_study"): r.info.run_id
        for r in tracker.client.search_runs(
            [tracker.experiment_id],
            f"tags.mlflow.parentRunId = '{parent}' and tags.run_level = 'study'",
        )
    }
    runs = {}
    for outer in outers:
        run = existing.get(outer.name)
        if run is None:
            run = tracker.start_run(
                outer.name.rsplit("/", 1)[1],
                tags={
                    "run_level": "study",
                    "optuna_study": outer.name,
                    "fold": "final" if outer.index < 0 else str(outer.index),
                },
                parent_id=parent,
            )
        runs[outer.name] = run
    return runs


def _refit_outer(
    config: dict[str, Any],
    inputs: RunInputs,
    outer: _Outer,
    params: dict[str, Any],
    tracker: Tracker,
    study_run: str,
) -> tuple[np.ndarray, dict[str, float]]:
    """The tuned model refit on the outer training fold, predicting the outer test fold;
    read back (matched by pedon id) when an earlier run of the sweep logged it."""
    task = inputs.task
    columns = [f"p/{c}" for c in task.class_names]
    key = yaml.safe_dump(params, sort_keys=True)
    tags = tracker.run_tags(study_run)
    if tags.get("refit") == "done" and tags.get("refit_params") == key:
        pred = pd.read_parquet(tracker.download(study_run, "predictions.parquet")).set_index("id")
        ids = inputs.ids[outer.test]
        if set(pred.index.tolist()) == set(ids.tolist()):
            metrics = tracker.run_metrics(study_run)
            return (
                pred.loc[ids, columns].to_numpy(),
                {k: v for k, v in metrics.items() if k.startswith("truth/")},
            )
    cfg = _trial_config(config, params)
    seed = int(cfg["seed"])
    spec = plan_fold(outer.name, inputs, outer.train, outer.test, cfg["cv"], seed + outer.index)
    result = fit_predict_fold(inputs, spec, cfg["model"]["params"], seed)
    truth = score_truth(result.model, inputs)
    tracker.log_metrics(study_run, {**result.metrics, **truth})
    with tempfile.TemporaryDirectory() as tmp:
        pred = pd.DataFrame(result.proba, columns=columns)
        pred.insert(0, "id", result.test_ids)
        pred.to_parquet(Path(tmp) / "predictions.parquet", index=False)
        tracker.log_artifact(study_run, Path(tmp) / "predictions.parquet")
    tracker.set_tags(study_run, {"refit": "done", "refit_params": key})
    return result.proba, truth


def _log_study(tracker: Tracker, run: str, study: optuna.Study, params: dict[str, Any]) -> None:
    counts = _counts(study)
    tracker.log_metrics(
        run,
        {
            "study/best_inner_value": float(study.best_value),
            "study/trials_complete": float(counts["complete"]),
            "study/trials_pruned": float(counts["pruned"]),
            "study/trials_failed": float(counts["failed"]),
        },
    )
    tracker.log_yaml(run, params, "best_params.yaml")
    _log_plots(tracker, run, study)
    tracker.client.set_terminated(run, status="FINISHED")


def _log_plots(tracker: Tracker, run: str, study: optuna.Study) -> None:
    """Optuna's optimisation history, parameter importances and the intermediate values the
    pruner judged (per inner fold or epoch), as figures of the run."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots: list[tuple[str, Callable[[optuna.Study], Any]]] = [
        ("optimization_history.png", vis.plot_optimization_history)
    ]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) >= 2:
        plots.append(("param_importances.png", vis.plot_param_importances))
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots.append(("intermediate_values.png", vis.plot_intermediate_values))
    for name, plot in plots:
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
        except (ValueError, RuntimeError):  # importances need trials that differ
            continue
        fig = ax.get_figure()
        tracker.log_figure(run, fig, name)
        plt.close("all")


def _log_outer_predictions(
    tracker: Tracker, run: str, inputs: RunInputs, oof: np.ndarray, fold_of: np.ndarray
) -> None:
    task = inputs.task
    with tempfile.TemporaryDirectory() as tmp:
        pred = pd.DataFrame(oof, columns=[f"p/{c}" for c in task.class_names])
        pred.insert(0, "fold", fold_of)
        pred.insert(0, "observed", [task.class_names[t] for t in inputs.y])
        pred.insert(0, "y", inputs.table["y"].to_numpy())
        pred.insert(0, "x", inputs.table["x"].to_numpy())
        pred.insert(0, "id", inputs.ids)
        tested = np.isfinite(oof).all(axis=1)  # pedons no test fold held have no prediction
        labels = hard_labels(np.nan_to_num(oof, nan=0), task)
        predicted = [task.class_names[i] for i in labels]
        pred["predicted"] = [n if t else None for n, t in zip(predicted, tested, strict=True)]
        for layer, names in inputs.regions.items():
            pred[layer] = names
        pred.to_parquet(Path(tmp) / "oof_predictions.parquet", index=False)
        tracker.log_artifact(run, Path(tmp) / "oof_predictions.parquet")


def best_params(study: str, storage: str | None = None) -> dict[str, Any]:
    """The best parameters of a finished sweep (its final study), as dotted paths.

    Args:
        study: the sweep's study name (printed by ``miso-bench sweep``).
        storage: its Optuna storage (default: the local one).

    Raises:
        MisoBenchError: no such study, or no completed trial.
    """
    name = study if study.endswith("/final") else f"{study}/final"
    url = storage or default_storage()
    try:
        loaded = optuna.load_study(study_name=name, storage=url)
    except KeyError as exc:
        names = [s.study_name for s in optuna.get_all_study_summaries(url)]
        finals = sorted({n.rsplit("/", 1)[0] for n in names if n.endswith("/final")})
        raise MisoBenchError(
            f"no sweep {study!r} in {url} (sweeps there: {', '.join(finals) or 'none'})"
        ) from exc
    if not any(t.state == TrialState.COMPLETE for t in loaded.get_trials(deepcopy=False)):
        raise MisoBenchError(f"sweep {study!r} has no completed trial yet (fix: finish it)")
    return dict(loaded.best_trial.params)


def tuned_on(study: str, storage: str | None = None) -> dict[str, str]:
    """What a sweep's final study was tuned on: ``dataset_fingerprint`` and ``task`` (empty
    for studies written before they were recorded)."""
    name = study if study.endswith("/final") else f"{study}/final"
    loaded = optuna.load_study(study_name=name, storage=storage or default_storage())
    attrs = loaded.user_attrs
    return {k: str(attrs[k]) for k in ("dataset_fingerprint", "task") if k in attrs}
