"""A run's fits (outer folds and the final refit) in worker processes, side by side.

A chip model's fit on a CPU uses its torch threads poorly: small matrices, and Python work
between them (reading chips, module calls) that only one thread does. Two fits with one thread
each finish sooner than the same two fits one after the other with two threads each. The
folds of a run are independent, so :func:`fit_in_workers` fits them in ``spawn`` worker
processes, each with its share of the threads; the calling process logs every result to MLflow
(tracking never runs in more than one process), as each fit finishes.

A fit's numbers depend on the threads it had (float reductions are split by thread), not on
how many fits ran beside it: a run with ``jobs=2`` and one thread per fit gives exactly the
numbers of ``jobs=1`` run with one thread (tests check it).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from .errors import MisoBenchError, MisoBenchWarning

__all__ = ["JOBS_ENV", "cpu_budget", "fit_in_workers", "fit_jobs", "parse_jobs"]

#: Environment variable read when ``jobs`` is not given (a number or ``auto``).
JOBS_ENV = "MISO_BENCH_JOBS"
#: Memory assumed for one chip-model fit when ``auto`` sizes the pool (GiB).
_FIT_GIB = 3.0


def cpu_budget() -> int:
    """The threads a run may use: torch's intra-op thread count (``OMP_NUM_THREADS`` or the
    cores torch found)."""
    import torch

    return max(1, torch.get_num_threads())


def _available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def parse_jobs(jobs: int | float | str) -> int | None:
    """``jobs`` as a number of workers, or None for ``auto``.

    Raises:
        MisoBenchError: neither a whole number of at least 1 nor ``auto``.
    """
    if isinstance(jobs, str) and jobs.strip().lower() == "auto":
        return None
    try:
        count = int(jobs)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or (isinstance(jobs, float) and not jobs.is_integer()):
        raise MisoBenchError(
            f"jobs={jobs!r}: expected a whole number of at least 1, or auto "
            f"(fix: --jobs 2, or {JOBS_ENV}=auto)"
        )
    return count


def fit_jobs(
    jobs: int | str | None,
    kind: str,
    params: Mapping[str, Any],
    n_fits: int,
    left: int | None = None,
) -> tuple[int, int]:
    """How many fits run at once, and the torch threads of each: ``(workers, threads)``.

    Args:
        jobs: a number of worker processes, ``auto``, or None (``$MISO_BENCH_JOBS``, else
            ``auto``). ``auto`` runs chip models' fits side by side on a CPU (one per thread
            of the budget, as many as the fits and about 3 GiB of available memory each
            allow) and everything else one at a time: tree models parallelise inside a fit, a
            GPU or several devices (``model.params.devices``) serve one fit.
        kind: the model's kind (``chips`` or ``tabular``).
        params: the model's parameters.
        n_fits: the run's fits (its folds and the final refit). They decide the threads of
            each fit, which its numbers depend on: a run resumed with one fit left gives that
            fit the threads it would have had uninterrupted, not all of them.
        left: the fits still to run (default ``n_fits``); never more workers than these.

    Raises:
        MisoBenchError: ``jobs`` is neither a positive whole number nor ``auto``.
    """
    if jobs is None:
        jobs = os.environ.get(JOBS_ENV, "auto").strip() or "auto"
    budget = cpu_budget()
    count = parse_jobs(jobs)
    if count is not None:
        workers = max(1, min(count, n_fits))
    else:
        workers = 1
        devices = params.get("devices", 1)
        if kind == "chips" and devices in (1, None, "1") and not _cuda():
            memory = _available_gib()
            by_memory = budget if memory is None else max(1, int(memory // _FIT_GIB))
            workers = max(1, min(budget, n_fits, by_memory))
    threads = max(1, budget // workers)
    return min(workers, max(1, n_fits if left is None else left)), threads


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# --- worker side ---------------------------------------------------------------------------

_EVENTS: Any = None
#: The chip sources this worker opened, by dataset: the next fit of the run reuses the
#: source and its warm block cache (every fit of a run reads the same rasters).
_SOURCES: dict[tuple[str, str, float], Any] = {}


def _init_worker(threads: int, events: Any) -> None:
    """Worker start: its threads; Ctrl-C is the parent's to handle (it stops the workers);
    a worker whose parent died without a word (SIGKILL) exits instead of fitting on for
    nobody, so a rerun's workers do not share the checkpoints with it."""
    global _EVENTS
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _EVENTS = events
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _epoch(name: str, epoch: int, record: dict[str, float]) -> None:
    _EVENTS.put((name, epoch, dict(record)))


def _fit_one(
    inputs: Any,
    entry: Any,
    name: str,
    spec: Any,
    params: Mapping[str, Any],
    seed: int,
    checkpoints: Path,
) -> tuple[str, Any, dict[str, float], list[tuple[str, str]]]:
    """One fit, its test predictions and truth scores; the run's warnings it raised."""
    from .engine import fit_predict_fold, truth_metrics
    from .models import MODELS

    if entry.name not in MODELS:  # registered by the caller's script, not on import
        MODELS.register(entry.name)(entry)
    if inputs._source is not None:
        source = inputs._source
        key = (str(inputs.manifest.root), inputs.fingerprint, float(source.cache_mb))
        inputs = replace(inputs, _source=_SOURCES.setdefault(key, source))
    _EVENTS.put((name, -1, {}))  # started
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", MisoBenchWarning)
        result = fit_predict_fold(
            inputs, spec, params, seed, checkpoint_dir=checkpoints, on_epoch=partial(_epoch, name)
        )
        truth = truth_metrics(result.model, inputs) if len(spec.test) else {}
    caught = []
    for record in records:
        if isinstance(record.message, MisoBenchWarning):
            caught.append((record.message.key, record.message.message))
        else:  # not the run's to record: shown as the worker saw it
            warnings.showwarning(record.message, record.category, record.filename, record.lineno)
    return name, result, truth, caught


# --- parent side ---------------------------------------------------------------------------


def _relay(events: Any, reporter: Any) -> None:
    """Workers' progress to the run's reporter, until the ``None`` sentinel."""
    while (item := events.get()) is not None:
        name, epoch, record = item
        if epoch < 0:
            reporter.fold_started(name)
        else:
            reporter.epoch(name, epoch, record)


def fit_in_workers(
    inputs: Any,
    fits: Sequence[tuple[str, Any, Mapping[str, Any], int, Path]],
    workers: int,
    threads: int,
    reporter: Any,
) -> Iterator[tuple[str, Any, dict[str, float], list[tuple[str, str]]]]:
    """Run ``fits`` (``(name, spec, params, seed, checkpoint folder)``, started in this order)
    in ``workers`` processes of ``threads`` torch threads; yield ``(name, FoldResult, truth
    metrics, caught warnings)`` as each finishes.

    An error in a fit stops the others and is raised here; so is an interrupt (the workers
    are stopped, and their checkpoints let the rerun resume them).
    """
    if inputs.kind == "chips":
        # Statistics computed once here; each worker's block cache gets a share of the budget.
        inputs.normalizer()
        source = inputs.chip_source()
        inputs = replace(inputs, _source=source.resized(source.cache_mb / workers))
    from .models import MODELS

    entry = MODELS.get(inputs.model)
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    listener = threading.Thread(target=_relay, args=(events, reporter), daemon=True)
    listener.start()
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(threads, events)
    )
    try:
        pending: set[Future] = {
            pool.submit(_fit_one, inputs, entry, name, spec, params, seed, ckpt)
            for name, spec, params, seed, ckpt in fits
        }
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    outcome = future.result()
                except BrokenProcessPool as exc:
                    raise MisoBenchError(
                        "a worker process died (killed, or out of memory?) (fix: rerun the "
                        f"command with fewer jobs, e.g. --jobs 1 or {JOBS_ENV}=1: it resumes "
                        "from the fits already logged and the others' checkpoints)"
                    ) from exc
                yield outcome
    except BaseException:
        # An error, Ctrl-C, or the caller closing early: stop every worker now.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        events.put(None)
        listener.join(timeout=10)
