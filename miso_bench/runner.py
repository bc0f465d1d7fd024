"""One benchmark run: data -> folds -> fit/predict per fold -> evaluate -> track -> refit.

A short composition of the engine's parts (:mod:`miso_bench.engine`): the run's inputs are
built once, each outer fold goes through :func:`~miso_bench.engine.fit_predict_fold` (with its
hygiene guard), out-of-fold predictions are pooled and evaluated overall and by region with
blocked-bootstrap CIs (and against the dense truth sample on synthetic data), and everything
is logged to MLflow: a parent run, a nested run per fold holding that fold's model, and (with
``refit``, the default) a nested ``final`` run holding a model refit on every labelled pedon.

An interrupted run (Ctrl-C, SIGTERM, a crash, a killed process) resumes when the same command
runs again with the same config, data and code: finished folds are read back (their
predictions matched by pedon id), the rest computed, and the same parent run completed. A run
still running in a live process is never taken over.

Fallbacks and adjustments that change a result without failing (an inner split shrinking its
blocks, an autocorrelation range falling back, metrics undefined on a region) are printed once
and recorded as ``warning.<key>`` tags.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import parallel
from .config import config_hash, home_dir
from .cv import SplitContext, build_splits, fold_diagnostics
from .data.domain import sample_prediction_domain
from .engine import (
    FoldResult,
    HygieneError,
    RunInputs,
    build_inputs,
    fit_predict_fold,
    identity_tags,
    model_record,
    plan_fold,
    pooled_evaluation,
    prepare_dataset,
    truth_metrics,
)
from .evaluation import plots
from .evaluation.regional import RegionalResult, confusion_of, hard_labels
from .evaluation.tasks import Task
from .models import save_fitted
from .provenance import code_version, hardware_tags, process_identity
from .registry import slugify
from .tracking import Heartbeat, RunInProgressError, Tracker, WarningLog, headline_metrics

__all__ = [
    "HygieneError",
    "RunProgress",
    "RunResult",
    "finished_run",
    "format_result",
    "prepare_dataset",
    "run_benchmark",
]


class RunProgress:
    """Receives a run's progress; the CLI draws it, the default ignores it."""

    def step(self, message: str) -> None:
        """A setup step started (reading pedons, features, building folds...)."""

    def folds(self, total: int, done: int) -> None:
        """The number of fits the run will make (folds, plus the final refit), and how many
        are already finished (resumed)."""

    def fold_started(self, name: str) -> None:
        """A fit started."""

    def fold_finished(self, name: str, resumed: bool = False) -> None:
        """A fit finished (or was read back from an interrupted run)."""

    def epoch(self, name: str, epoch: int, record: dict[str, float]) -> None:
        """A deep model finished an epoch (record: losses, ``val/score``, ``epochs``)."""

    def warn(self, message: str) -> None:
        """A fallback or adjustment to tell the user about once."""


class _Announcing(RunProgress):
    """The default progress: silent, but warnings are told through ``announce``."""

    def __init__(self, announce: Callable[[str], None]) -> None:
        self.announce = announce

    def warn(self, message: str) -> None:
        self.announce(f"warning: {message}")


@dataclass
class RunResult:
    """What a run produced (also logged to MLflow).

    Attributes:
        run_id: MLflow parent run id.
        experiment: MLflow experiment name.
        tracking_uri: where it was logged.
        task: the task.
        config: the resolved config.
        metrics: every metric logged on the parent run.
        regional: pooled out-of-fold evaluation (overall and by region, with CIs).
        truth: truth-sample metrics averaged over fold models (empty without truth).
        folds: fold of each evaluated pedon.
        n_pedons: pedons evaluated; n_dropped: labelled pedons dropped (outside the rasters).
        seconds: wall time.
        resumed_folds: folds read back from an interrupted earlier run.
        final_run_id: the nested run holding the model refit on every pedon (or None).
        fold_run_ids: fold -> nested run id (each holds that fold's model).
        warnings: ``key -> message`` of every fallback recorded on the run.
        metric_crs: the CRS distances were measured in.
    """

    run_id: str
    experiment: str
    tracking_uri: str
    task: Task
    config: dict[str, Any]
    metrics: dict[str, float]
    regional: RegionalResult
    truth: dict[str, float]
    folds: np.ndarray
    n_pedons: int
    n_dropped: int
    seconds: float
    resumed_folds: list[int] = field(default_factory=list)
    final_run_id: str | None = None
    fold_run_ids: dict[int, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)
    metric_crs: str = ""
    dataset_crs: str = ""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, batch schedulers) interrupts a run like Ctrl-C, also when the suite
    is used as a library; a handler the caller installed is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _run_lock(config_hash: str) -> Iterator[None]:
    """One process at a time per run on this machine (two identical jobs started together
    would otherwise both create, or both resume, the same run)."""
    import fcntl

    folder = home_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{config_hash}.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunInProgressError(
                "the same run is in progress in another process on this machine (fix: wait "
                "for it to finish or stop it; a rerun then resumes its finished folds)"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _splits(
    config: dict[str, Any], inputs: RunInputs, seed: int
) -> tuple[Any, list[tuple[np.ndarray, np.ndarray]], Any]:
    manifest = inputs.manifest
    domain = sample_prediction_domain(manifest, int(config["eval"]["domain_points"]), seed)
    domain_m = inputs.frame.to_metric(domain[:, 0], domain[:, 1]) if len(domain) else domain
    ctx = SplitContext(inputs.xy_m, inputs.y, inputs.ids, inputs.regions, domain_m, seed)
    splitter, splits = build_splits(config["cv"]["name"], config["cv"], ctx)
    diag = fold_diagnostics(inputs.xy_m, inputs.y, splits, domain_m, inputs.task.class_names)
    return splitter, splits, diag


def _read_back(
    tracker: Tracker, run_id: str, test_ids: np.ndarray, task: Task
) -> np.ndarray | None:
    """A finished fold's predictions, matched to ``test_ids`` by pedon id (None when its
    pedons are not exactly those)."""
    pred = pd.read_parquet(tracker.download(run_id, "predictions.parquet"))
    if len(pred) != len(test_ids) or set(pred["id"].tolist()) != set(test_ids.tolist()):
        return None
    columns = [f"p/{c}" for c in task.class_names]
    return pred.set_index("id").loc[test_ids, columns].to_numpy()


def _log_fold(
    tracker: Tracker,
    fold_id: str,
    result: FoldResult,
    inputs: RunInputs,
    config: dict[str, Any],
    truth: dict[str, float],
) -> list[str]:
    """Metrics, history, predictions and the model of one fold; the NaN metrics left out."""
    task = inputs.task
    for record in result.history:
        tracker.log_metrics(
            fold_id,
            {f"train/{k}": v for k, v in record.items() if k not in ("epoch", "epochs")},
            step=int(record["epoch"]),
        )
    dropped = tracker.log_metrics(fold_id, {**result.metrics, **truth})
    with tempfile.TemporaryDirectory() as tmp:
        if len(result.spec.test):
            pred = pd.DataFrame(result.proba, columns=[f"p/{c}" for c in task.class_names])
            pred.insert(0, "id", result.test_ids)
            pred.to_parquet(Path(tmp) / "predictions.parquet", index=False)
            tracker.log_artifact(fold_id, Path(tmp) / "predictions.parquet")
        if config["tracking"]["log_models"]:
            saved = model_record(inputs, config, result.spec.name)
            # The pedons the model was fitted on (the area of applicability's reference).
            saved["fit_ids"] = [str(i) for i in inputs.ids[result.spec.fit]]
            in_place = tracker.local_artifact_dir(fold_id, "model")
            if in_place is not None:  # a local store: write the model there, no copy
                save_fitted(result.model, in_place, saved)
            else:
                tracker.log_folder(
                    fold_id, save_fitted(result.model, Path(tmp) / "model", saved), "model"
                )
    return dropped


def run_benchmark(
    config: dict[str, Any],
    progress: RunProgress | None = None,
    announce: Callable[[str], None] = print,
    jobs: int | str | None = None,
) -> RunResult:
    """Run one benchmark as configured and log it to MLflow.

    Args:
        config: a resolved config (see :func:`miso_bench.config.resolve_config`).
        progress: receives setup steps, fold and epoch progress and warnings.
        announce: where to print one-off notices.
        jobs: fits (folds and the final refit) run at once in worker processes: a number, or
            ``auto`` (see :func:`miso_bench.parallel.fit_jobs`); None = ``$MISO_BENCH_JOBS``
            or ``auto``. A fit's numbers depend on the torch threads it had, not on ``jobs``.

    Raises:
        RunInProgressError: the same run is running in a live process.
        HygieneError: a test pedon would reach a fit (a defect).
    """
    with _terminate_as_interrupt():
        return _run(config, progress or _Announcing(announce), announce, jobs)


def _run(
    config: dict[str, Any],
    reporter: RunProgress,
    announce: Callable[[str], None],
    jobs: int | str | None,
) -> RunResult:
    start = time.perf_counter()
    seed = int(config["seed"])
    with WarningLog(reporter.warn) as caught:
        reporter.step("preparing the dataset")
        inputs = build_inputs(config, prepare_dataset(config, announce), reporter.step)
        reporter.step(f"building {config['cv']['name']} folds")
        splitter, splits, diag = _splits(config, inputs, seed)
        _check_tuned_on(config, inputs, caught)
        caught.collect()
        chash, tags = _identity(config, inputs, splitter, len(splits))
        experiment = (
            config["tracking"]["experiment"] or f"{inputs.manifest.name}/{inputs.task.name}"
        )
        tracker = Tracker(experiment, config["tracking"]["uri"])
        with _claim(tracker, chash) as (parent_id, done):
            if parent_id and done:
                _check_same_cpu(tracker.run_tags(parent_id), caught)
            refit = bool(config["refit"])
            reporter.folds(len(splits) + int(refit), sum(k != "final" or refit for k in done))
            label = (config["tracking"].get("tags") or {}).get("variant", inputs.model)
            name = f"{label}-{config['cv']['name']}-{inputs.task.name}-seed{seed}"
            with (
                tracker.run(name, tags=tags, run_id=parent_id) as run_id,
                Heartbeat(tracker, run_id),
            ):
                if not parent_id:  # a resumed run already holds its params and config
                    tracker.log_params(run_id, config)
                    tracker.log_yaml(run_id, config, "config.yaml")
                    tracker.log_pedons(run_id, inputs)
                caught.tag(tracker, run_id)
                left = len(splits) - sum(str(f) in done for f in range(len(splits)))
                left += int(refit and "final" not in done)
                params = config["model"]["params"]
                workers, threads = parallel.fit_jobs(
                    jobs, inputs.kind, params, len(splits) + int(refit), left
                )
                tracker.set_tags(run_id, {"fit_jobs": str(workers), "fit_threads": str(threads)})
                step = _Step(
                    config, inputs, tracker, run_id, reporter, caught, chash, workers, threads
                )
                folds, final_id = step.cross_validate(splits, done, refit)
                reporter.step("evaluating")
                regional, metrics = step.evaluate(folds, diag, name)
                if final_id:
                    tracker.set_tags(run_id, {"final_model_run": final_id})
                metrics["time/seconds"] = time.perf_counter() - start
                metrics.update(headline_metrics(metrics, inputs.task.primary_metric))
                step.finish(metrics)
            shutil.rmtree(step.checkpoints, ignore_errors=True)
    return RunResult(
        run_id,
        experiment,
        tracker.uri,
        inputs.task,
        config,
        metrics,
        regional,
        folds.truth_mean,
        folds.fold_of,
        len(inputs.table),
        inputs.n_dropped,
        time.perf_counter() - start,
        folds.resumed,
        final_id,
        folds.run_ids,
        caught.messages(),
        inputs.frame.metric_crs,
        inputs.manifest.crs,
    )


def finished_run(config: dict[str, Any]) -> str | None:
    """The id of a FINISHED run of exactly this config, data and code, if there is one (an
    ablation suite skips what it already has)."""
    manifest = prepare_dataset(config, lambda _m: None)
    from .data.cache import dataset_fingerprint
    from .evaluation.tasks import resolve_task

    fingerprint = dataset_fingerprint(manifest)
    chash = config_hash({"config": config, "dataset": fingerprint, "code": code_version()})
    task = resolve_task(
        str(config["task"]), {n: s.classes for n, s in manifest.pedons.labels.items()}
    )
    experiment = config["tracking"]["experiment"] or f"{manifest.name}/{task.name}"
    return Tracker(experiment, config["tracking"]["uri"]).find_finished(chash)


def _identity(
    config: dict[str, Any], inputs: RunInputs, splitter: Any, n_folds: int
) -> tuple[str, dict[str, str]]:
    """The run's resume key (config, data and code) and its tags."""
    code = code_version()
    chash = config_hash({"config": config, "dataset": inputs.fingerprint, "code": code})
    tags = {
        **identity_tags(config, inputs),
        "config_hash": chash,
        "run_level": "parent",
        "n_folds": str(n_folds),
        "features": ",".join(inputs.feature_columns),
        **{str(k): str(v) for k, v in (config["tracking"].get("tags") or {}).items()},
        **process_identity(),  # at creation: another process sees this run is alive
    }
    block = getattr(splitter, "block_size_m", None)
    if block is None and hasattr(splitter, "base"):  # buffered: the base scheme's blocks
        block = getattr(splitter.base, "block_size_m", None)
    if block is not None:
        tags["cv_block_size_m"] = f"{float(block):.10g}"  # exact: reruns give the same folds
    return chash, tags


def _check_same_cpu(earlier: dict[str, str], caught: WarningLog) -> None:
    """Warn when a run resumes folds that another CPU computed: float training is not
    bit-stable across CPUs, so its folds come from two machines (each fold run says which)."""
    here = hardware_tags()
    keys = [k for k in here if earlier.get(k) and earlier[k] != here[k]]
    if keys:
        was = ", ".join(f"{k} {earlier[k]}" for k in keys)
        now = ", ".join(f"{k} {here[k]}" for k in keys)
        caught.add(
            "resumed_on_another_cpu",
            f"this run resumes folds computed on another CPU ({was}; here {now}): a chip "
            "model's numbers differ between CPUs, so its folds mix two machines' numbers "
            "(each fold run records its CPU; fix: to reproduce one machine's figures, rerun "
            "with a new --tracking-uri or after deleting the run)",
        )


def _check_tuned_on(config: dict[str, Any], inputs: RunInputs, caught: WarningLog) -> None:
    """Warn when a run's parameters were tuned on its own pedons (``--params best:STUDY`` of
    a sweep on this dataset and task): every test fold helped choose them, so its CV figures
    are optimistic. Studies that do not record what they were tuned on get the warning too:
    the honest estimate is the sweep's, whichever it is."""
    tags = config["tracking"].get("tags") or {}
    source = str(tags.get("params_source", ""))
    if not source.startswith("best:"):
        return
    fingerprint = tags.get("params_tuned_on.dataset_fingerprint")
    task = tags.get("params_tuned_on.task")
    if fingerprint not in (None, inputs.fingerprint) or task not in (None, inputs.task.name):
        return  # tuned on another dataset or task: these folds are not its tuning data
    caught.add(
        "tuned_on_these_pedons",
        f"the parameters come from {source}, tuned on every pedon of this dataset and task: "
        "each test fold helped choose them, so this run's CV figures are optimistic (the "
        "sweep's pooled outer estimate is the honest one for the tuned model; use this run "
        "for its refit model and maps)",
    )


@contextmanager
def _claim(tracker: Tracker, chash: str) -> Iterator[tuple[str | None, dict[str, str]]]:
    """Hold the run's lock and yield the interrupted run to resume (its id and finished
    folds), or ``(None, {})`` for a new run."""
    with _run_lock(chash):
        found = tracker.find_resumable(chash)
        yield (found[0], found[1]) if found else (None, {})


@dataclass
class _Folds:
    """What the cross-validation produced (fresh or read back)."""

    oof: np.ndarray
    fold_of: np.ndarray
    truth: list[dict[str, float]] = field(default_factory=list)
    centred: list[float] = field(default_factory=list)
    resumed: list[int] = field(default_factory=list)
    run_ids: dict[int, str] = field(default_factory=dict)

    @property
    def truth_mean(self) -> dict[str, float]:
        return _mean_truth(self.truth)


@dataclass
class _Job:
    """One fit of a run: an outer fold (``fold`` its index) or the final refit (None)."""

    name: str
    tags: dict[str, str]
    spec: Any
    fold: int | None


@dataclass
class _Step:
    """The steps of one run that log to its MLflow parent run."""

    config: dict[str, Any]
    inputs: RunInputs
    tracker: Tracker
    run_id: str
    reporter: RunProgress
    caught: WarningLog
    chash: str
    workers: int = 1
    threads: int = 0
    model_tags: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    @property
    def checkpoints(self) -> Path:
        return home_dir() / "checkpoints" / self.chash

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def fit_tags(self) -> dict[str, str]:
        """What computed a fit (its numbers depend on them): the CPU and the fit's threads."""
        return {**hardware_tags(), "fit_threads": str(self.threads or parallel.cpu_budget())}

    def _fit(self, name: str, tags: dict[str, str], spec: Any) -> tuple[str, FoldResult, dict]:
        """One fit in this process, in a nested run: model, predictions, metrics and the truth
        scores."""
        with self.tracker.run(name, tags=tags, parent_id=self.run_id) as child:
            result = fit_predict_fold(
                self.inputs,
                spec,
                self.config["model"]["params"],
                self.seed,
                checkpoint_dir=self.checkpoints / name,
                on_epoch=partial(self.reporter.epoch, name),
            )
            truth = truth_metrics(result.model, self.inputs) if len(spec.test) else {}
            self._log(child, result, truth)
        shutil.rmtree(self.checkpoints / name, ignore_errors=True)  # the fit is logged
        return child, result, truth

    def _log(self, child: str, result: FoldResult, truth: dict[str, float]) -> None:
        model_tags = result.model.run_tags()
        if model_tags:
            self.model_tags = model_tags
            self.tracker.set_tags(child, model_tags)
        self.dropped += _log_fold(self.tracker, child, result, self.inputs, self.config, truth)

    def _fit_all(self, jobs: list[_Job]) -> Iterator[tuple[_Job, str, FoldResult, dict]]:
        """Every job's fit, logged as it finishes: one after another here, or in worker
        processes (``workers`` > 1)."""
        if self.workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                self.reporter.fold_started(job.name)
                child, result, truth = self._fit(job.name, job.tags, job.spec)
                self.reporter.fold_finished(job.name)
                yield job, child, result, truth
            return
        # The longest fit (the final refit: every pedon, no early stopping) starts first.
        ordered = sorted(jobs, key=lambda j: j.fold is not None)
        params = self.config["model"]["params"]
        fits = parallel.fit_in_workers(
            self.inputs,
            [(j.name, j.spec, params, self.seed, self.checkpoints / j.name) for j in ordered],
            min(self.workers, len(jobs)),
            self.threads,
            self.reporter,
        )
        by_name = {j.name: j for j in ordered}
        for name, result, truth, caught in fits:
            job = by_name[name]
            for key, message in caught:
                self.caught.add(key, message)
            with self.tracker.run(name, tags=job.tags, parent_id=self.run_id) as child:
                self._log(child, result, truth)
            shutil.rmtree(self.checkpoints / name, ignore_errors=True)  # the fit is logged
            self.reporter.fold_finished(name)
            yield job, child, result, truth

    def cross_validate(
        self, splits: list[tuple[np.ndarray, np.ndarray]], done: dict[str, str], refit: bool
    ) -> tuple[_Folds, str | None]:
        """Every outer fold (read back when an interrupted run finished it, fitted otherwise)
        and, with ``refit``, the final model refit on every labelled pedon in a nested
        ``final`` run (its id returned)."""
        inputs, task = self.inputs, self.inputs.task
        n = len(inputs.table)
        folds = _Folds(np.full((n, task.n_classes), np.nan), np.full(n, -1))
        pending: list[_Job] = []
        truth_of: dict[int, dict[str, float]] = {}
        centred_of: dict[int, float] = {}
        for f, (train, test) in enumerate(splits):
            folds.fold_of[test] = f
            name = f"fold_{f}"
            earlier = done.get(str(f))
            back = _read_back(self.tracker, earlier, inputs.ids[test], task) if earlier else None
            if back is not None and earlier is not None:
                folds.oof[test] = back
                metrics = self.tracker.run_metrics(earlier)
                truth_of[f] = {k: v for k, v in metrics.items() if k.startswith("truth/")}
                centred = _centred(metrics, task.primary_metric)
                if centred is not None:
                    centred_of[f] = centred
                folds.resumed.append(f)
                folds.run_ids[f] = earlier
                self.reporter.fold_finished(name, resumed=True)
                continue
            spec = plan_fold(name, inputs, train, test, self.config["cv"], self.seed + f)
            tags = {
                "fold": str(f),
                "run_level": "fold",
                "n_folds": str(len(splits)),
                **self.fit_tags,
            }
            pending.append(_Job(name, tags, spec, f))
        final_id = done.get("final") if refit else None
        if refit and final_id is not None:
            self.reporter.fold_finished("final", resumed=True)
        elif refit:
            everything = np.arange(n)
            spec = plan_fold(
                "final", inputs, everything, np.array([], int), self.config["cv"], self.seed
            )
            final_tags = {"fold": "final", "run_level": "final", **self.fit_tags}
            pending.append(_Job("final", final_tags, spec, None))
        for job, child, result, truth in self._fit_all(pending):
            if job.fold is None:
                final_id = child
                continue
            folds.oof[job.spec.test] = result.proba
            truth_of[job.fold] = truth
            centred = _centred(result.metrics, task.primary_metric)
            if centred is not None:
                centred_of[job.fold] = centred
            folds.run_ids[job.fold] = child
            self.caught.tag(self.tracker, self.run_id)
        folds.truth = [truth_of[f] for f in sorted(truth_of)]  # in fold order
        folds.centred = [centred_of[f] for f in sorted(centred_of)]
        if self.model_tags:  # e.g. the MISO preset and pretrained weights, on the parent too
            self.tracker.set_tags(self.run_id, self.model_tags)
        return folds, final_id

    def evaluate(
        self, folds: _Folds, diag: Any, title: str
    ) -> tuple[RegionalResult, dict[str, float]]:
        """Pooled out-of-fold metrics by region, truth means, diagnostics and artifacts."""
        inputs, primary = self.inputs, self.inputs.task.primary_metric
        tested = folds.fold_of >= 0
        regional = pooled_evaluation(inputs, folds.oof, tested, self.config["eval"], self.seed)
        metrics = regional.flat("test")
        truth_mean = folds.truth_mean
        if f"truth/overall/{primary}" in truth_mean:
            metrics[f"optimism/{primary}"] = (
                metrics[f"test/overall/{primary}"] - truth_mean[f"truth/overall/{primary}"]
            )
        metrics.update(truth_mean)
        if folds.centred:  # chip models: a chip centred on each pedon (not the map path)
            metrics[f"cv_centred/{primary}"] = float(np.mean(folds.centred))
            metrics["cv_centred/n_folds"] = float(len(folds.centred))  # folds where defined
        metrics.update(diag.summary())
        metrics["data/n_pedons"] = float(len(inputs.table))
        metrics["data/n_dropped_off_raster"] = float(inputs.n_dropped)
        _log_artifacts(
            self.tracker,
            self.run_id,
            inputs,
            regional,
            folds.oof,
            folds.fold_of,
            diag,
            truth_mean,
            title,
        )
        return regional, metrics

    def finish(self, metrics: dict[str, float]) -> None:
        """Log the parent's metrics; record undefined ones and every warning as tags."""
        self.dropped += self.tracker.log_metrics(self.run_id, metrics)
        if self.dropped:
            undefined = sorted(set(self.dropped))
            self.caught.add(
                "nan_metrics",
                f"{len(undefined)} metrics are undefined (NaN: e.g. {undefined[0]}, a "
                "positive-class metric where a region has no positives) and were not "
                "logged to MLflow; metrics_by_region.csv keeps them",
            )
        self.caught.tag(self.tracker, self.run_id)


def _centred(metrics: Mapping[str, float], primary: str) -> float | None:
    """A fold's centred-chip figure, None where it is absent or undefined (NaN, e.g. f1_pos of
    a fold without positives): MLflow never stores NaN, so a fresh fold and one read back on
    resume must both leave it out of the mean, or a resumed run reports another number."""
    value = metrics.get(f"test/centred/{primary}")
    return None if value is None or not np.isfinite(value) else float(value)


def _mean_truth(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """Truth metrics averaged over the fold models (keys where every value is finite)."""
    out: dict[str, float] = {}
    if not per_fold or not any(per_fold):
        return out
    for k in sorted(set().union(*per_fold)):
        vals = [d[k] for d in per_fold if k in d and np.isfinite(d[k])]
        if vals:
            out[k] = float(np.mean(vals))
    return out


def _log_artifacts(
    tracker: Tracker,
    run_id: str,
    inputs: RunInputs,
    regional: RegionalResult,
    oof: np.ndarray,
    folds: np.ndarray,
    diag: Any,
    truth: dict[str, float],
    title: str,
) -> None:
    import geopandas as gpd
    import matplotlib.pyplot as plt

    task, table = inputs.task, inputs.table
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        pred = pd.DataFrame(oof, columns=[f"p/{c}" for c in task.class_names])
        pred.insert(0, "fold", folds)
        pred.insert(0, "observed", [task.class_names[t] for t in table["target"]])
        pred.insert(0, "y", table["y"].to_numpy())
        pred.insert(0, "x", table["x"].to_numpy())
        pred.insert(0, "id", table["id"].to_numpy())
        tested = np.isfinite(oof).all(axis=1)  # pedons no test fold held have no prediction
        labels = hard_labels(np.nan_to_num(oof, nan=0), task)
        predicted = [task.class_names[i] for i in labels]
        pred["predicted"] = [n if t else None for n, t in zip(predicted, tested, strict=True)]
        for layer, names in inputs.regions.items():
            pred[layer] = names
        pred.to_parquet(tmp / "oof_predictions.parquet", index=False)
        regional.table.to_csv(tmp / "metrics_by_region.csv", index=False)
        diag.table.to_csv(tmp / "fold_diagnostics.csv", index=False)
        gdf = gpd.GeoDataFrame(
            {"id": table["id"].astype(str), "fold": folds, "target": pred["observed"]},
            geometry=gpd.points_from_xy(table["x"], table["y"]),
            crs=inputs.manifest.crs,
        )
        gdf.to_file(tmp / "folds.gpkg", driver="GPKG")
        for name in (
            "oof_predictions.parquet",
            "metrics_by_region.csv",
            "fold_diagnostics.csv",
            "folds.gpkg",
        ):
            tracker.log_artifact(run_id, tmp / name)
    tested = folds >= 0
    xy_m = inputs.xy_m
    figs = {
        "confusion_matrix.png": plots.confusion_figure(
            confusion_of(table["target"].to_numpy()[tested], oof[tested], task),
            task.class_names,
            f"{title}: pooled out-of-fold",
        ),
        "fold_map.png": plots.fold_map_figure(
            xy_m[:, 0], xy_m[:, 1], folds, f"{title}: folds", inputs.frame.metric_crs
        ),
        "nn_distance_ecdf.png": plots.ecdf_figure(diag.gij, diag.gj_star, diag.gj, diag.w, title),
    }
    for layer in inputs.regions:
        figs[f"by_{layer}.png"] = plots.region_bars_figure(
            regional.table, task.primary_metric, layer, f"{title}: {task.primary_metric} by {layer}"
        )
    if truth:
        primary = task.primary_metric
        cv_vals = {
            "overall": float(
                regional.table.query("layer == 'overall' and metric == @primary")["value"].iloc[0]
            )
        }
        truth_vals = {"overall": truth.get(f"truth/overall/{primary}", float("nan"))}
        for row in regional.table.query("layer == 'pf_zone' and metric == @primary").itertuples():
            key = f"truth/pf_zone/{slugify(row.region)}/{primary}"
            if key in truth:
                cv_vals[str(row.region)] = float(row.value)
                truth_vals[str(row.region)] = truth[key]
        figs["cv_vs_truth.png"] = plots.cv_vs_truth_figure(
            cv_vals, truth_vals, primary, f"{title}: CV estimate vs truth"
        )
    for name, fig in figs.items():
        tracker.log_figure(run_id, fig, name)
        plt.close(fig)


_SHOWN = {
    "binary": (
        "f1_pos",
        "precision_pos",
        "recall_pos",
        "roc_auc",
        "pr_auc",
        "accuracy",
        "balanced_accuracy",
        "kappa",
    ),
    "multiclass": (
        "macro_f1",
        "accuracy",
        "balanced_accuracy",
        "weighted_f1",
        "kappa",
        "log_loss",
        "ece",
    ),
}


def _num(value: float) -> str:
    return f"{value:8.3f}" if np.isfinite(value) else f"{'n/a':>8}"


def _ci(row: Any) -> str:
    if np.isnan(row.ci_low):
        return ""
    return f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"


def format_result(result: RunResult) -> str:
    """The terminal report of a run: overall metrics and metrics by region, with CIs."""
    task, table = result.task, result.regional.table
    primary = task.primary_metric
    cfg = result.config
    lines = [
        f"{cfg['model']['name']} | cv={cfg['cv']['name']} | task={task.name} | "
        f"{result.n_pedons:,} pedons in {int(result.metrics.get('cv/n_folds', 0))} folds"
        + (f" ({result.n_dropped} off the rasters dropped)" if result.n_dropped else "")
        + f" | {result.seconds:.0f} s",
        "",
        f"{'overall':<34}{'value':>8}  {'95% CI':<18}" + (f"{'truth':>8}" if result.truth else ""),
    ]
    overall = table[table["layer"] == "overall"].set_index("metric")
    for metric in _SHOWN[task.kind]:
        if metric not in overall.index:
            continue
        row = overall.loc[metric]
        truth = result.truth.get(f"truth/overall/{metric}")
        lines.append(
            f"  {metric:<32}{_num(row.value)}  {_ci(row):<18}"
            + (_num(truth) if truth is not None else "")
        )
    for layer in [lay for lay in table["layer"].unique() if lay != "overall"]:
        lines += [
            "",
            f"by {layer:<31}{'n':>6}  {primary:>8}  {'95% CI':<18}"
            + (f"{'truth':>8}" if result.truth else ""),
        ]
        sub = table[(table["layer"] == layer) & (table["metric"] == primary)]
        for row in sub.sort_values("region").itertuples():
            truth = result.truth.get(f"truth/{layer}/{slugify(row.region)}/{primary}")
            lines.append(
                f"  {row.region!s:<32}{row.n:>6}  {_num(row.value)}  {_ci(row):<18}"
                + (_num(truth) if truth is not None else "")
            )
        if layer in result.regional.worst:
            region, value = result.regional.worst[layer]
            lines.append(f"  worst {layer}: {region} ({primary} {value:.3f})")
    lines += [
        "",
        f"MLflow: experiment '{result.experiment}', run {result.run_id} ({result.tracking_uri})",
    ]
    if result.final_run_id:
        lines.append(
            f"final model (refit on all {result.n_pedons:,} pedons): "
            f"miso_bench.load_model('{result.run_id}')"
        )
    if result.metric_crs and result.metric_crs != result.dataset_crs:
        lines.append(
            f"the dataset is in {result.dataset_crs}; distances (folds, buffers, CI blocks) "
            f"were measured in {result.metric_crs}"
        )
    if result.resumed_folds:
        lines.append(f"resumed folds {result.resumed_folds} from the interrupted run")
    if result.warnings:
        lines.append(f"warnings recorded on the run (tags warning.*): {', '.join(result.warnings)}")
    return "\n".join(lines)
