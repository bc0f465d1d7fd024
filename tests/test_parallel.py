"""A run's fits in worker processes: how many, the same numbers as one at a time, errors and
interrupts that lose nothing."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from miso_bench import parallel
from miso_bench.config import resolve_config
from miso_bench.errors import MisoBenchError
from miso_bench.models import MODELS, register_model
from miso_bench.models.trees import MajorityModel
from miso_bench.parallel import fit_jobs
from miso_bench.runner import run_benchmark

FAIL_ENV = "MISO_TEST_FAIL_ABOVE"
DIE_ENV = "MISO_TEST_DIE"


class FlakyMajority(MajorityModel):
    """The majority class; its fit fails (a user error) when it is given more than
    ``$MISO_TEST_FAIL_ABOVE`` pedons (read in the worker process)."""

    def fit(self, X, y, X_val=None, y_val=None):
        limit = os.environ.get(FAIL_ENV)
        if limit is not None and len(X) > int(limit):
            raise MisoBenchError(f"flaky: {len(X)} pedons")
        if os.environ.get(DIE_ENV):
            os._exit(3)  # the worker process dies without a word
        return super().fit(X, y, X_val, y_val)


@pytest.fixture
def flaky():
    register_model("flaky", FlakyMajority, features=("s2",))
    yield
    MODELS.unregister("flaky")


@pytest.fixture
def machine(monkeypatch):
    """A 2-thread CPU machine with plenty of memory and no GPU."""
    monkeypatch.setattr(parallel, "cpu_budget", lambda: 2)
    monkeypatch.setattr(parallel, "_available_gib", lambda: 20.0)
    monkeypatch.setattr(parallel, "_cuda", lambda: False)


def test_auto_runs_chip_models_side_by_side_on_a_cpu(machine, monkeypatch):
    monkeypatch.setenv("MISO_BENCH_JOBS", "auto")
    assert fit_jobs(None, "chips", {}, 6) == (2, 1)
    assert fit_jobs("auto", "chips", {}, 1) == (1, 2)  # a run of one fit: all threads
    # A run resumed with one of its six fits left: that fit keeps the thread it would have had
    # uninterrupted (its numbers depend on its threads), not both.
    assert fit_jobs("auto", "chips", {}, 6, left=1) == (1, 1)
    assert fit_jobs("auto", "chips", {}, 6, left=3) == (2, 1)
    assert fit_jobs("auto", "tabular", {}, 6) == (1, 2)  # trees parallelise inside a fit
    assert fit_jobs("auto", "chips", {"devices": 2}, 6) == (1, 2)  # data-parallel fits
    monkeypatch.setattr(parallel, "_available_gib", lambda: 4.0)
    assert fit_jobs("auto", "chips", {}, 6) == (1, 2)  # not enough memory for two
    monkeypatch.setattr(parallel, "_available_gib", lambda: 20.0)
    monkeypatch.setattr(parallel, "_cuda", lambda: True)
    assert fit_jobs("auto", "chips", {}, 6) == (1, 2)  # one GPU serves one fit


def test_explicit_jobs_and_the_environment(machine, monkeypatch):
    assert fit_jobs(3, "tabular", {}, 6) == (3, 1)
    assert fit_jobs("2", "chips", {}, 6) == (2, 1)
    assert fit_jobs(4, "chips", {}, 2) == (2, 1)  # never more workers than fits
    monkeypatch.setenv("MISO_BENCH_JOBS", "1")
    assert fit_jobs(None, "chips", {}, 6) == (1, 2)
    for bad in ("0", "two", -1, 1.5):
        with pytest.raises(MisoBenchError, match=f"jobs={bad!r}: expected a whole number"):
            fit_jobs(bad, "chips", {}, 6)


def _cfg(tiny_dir, home, *sets):
    return resolve_config(
        None,
        None,
        [
            f"data.path={tiny_dir}",
            "eval.n_boot=20",
            f"tracking.uri=sqlite:///{home}/p.db",
            *sets,
        ],
    )


def _children(result):
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    return client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
    )


def _oof(result) -> pd.DataFrame:
    client = MlflowClient(result.tracking_uri)
    frames = []
    for child in _children(result):
        if child.data.tags["fold"] == "final":
            continue
        path = client.download_artifacts(child.info.run_id, "predictions.parquet")
        frames.append(pd.read_parquet(path))
    return pd.concat(frames).sort_values("id").reset_index(drop=True)


@pytest.mark.slow
def test_miso_fits_in_workers_equal_one_at_a_time_with_the_same_threads(tiny_dir, home):
    """jobs=2 (two workers of one thread) reproduces jobs=1 run with one thread: every metric,
    every out-of-fold probability, the truth scores, and the final model's weights."""
    import torch

    sets = [
        "model.name=miso",
        "task=pf1m",
        "cv.n_splits=2",
        "model.params.epochs=2",
        "model.params.batch_size=16",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run_benchmark(_cfg(tiny_dir, home / "one", *sets), announce=lambda m: None, jobs=1)
    finally:
        torch.set_num_threads(threads)
    two = run_benchmark(_cfg(tiny_dir, home / "two", *sets), announce=lambda m: None, jobs=2)
    client = MlflowClient(two.tracking_uri)
    tags = client.get_run(two.run_id).data.tags
    assert (tags["fit_jobs"], tags["fit_threads"]) == ("2", str(max(1, threads // 2)))
    if threads // 2 != 1:
        pytest.skip("the workers had more than one thread each: not comparable to one thread")
    keys = [k for k in one.metrics if k.startswith(("test/", "truth/", "cv_centred/"))]
    pairs = {k: (one.metrics[k], two.metrics[k]) for k in keys}
    differ = {k: v for k, v in pairs.items() if not (v[0] == v[1] or np.isnan(v).all())}
    assert keys and not differ
    pd.testing.assert_frame_equal(_oof(one), _oof(two))
    assert sorted(c.data.tags["fold"] for c in _children(two)) == ["0", "1", "final"]
    from miso_bench import load_model

    a = load_model(one.run_id, tracking_uri=one.tracking_uri).model
    b = load_model(two.run_id, tracking_uri=two.tracking_uri).model
    for (name, p), (_, q) in zip(
        a.net_.state_dict().items(), b.net_.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name


def test_an_error_in_a_worker_is_raised_and_the_rerun_completes_without_duplicates(
    tiny_dir, home, flaky, monkeypatch
):
    cfg = _cfg(tiny_dir, home, "model.name=flaky", "cv.name=random")
    clean = run_benchmark(
        _cfg(tiny_dir, home / "clean", "model.name=flaky", "cv.name=random"),
        announce=lambda m: None,
    )
    n = int(clean.n_pedons)
    monkeypatch.setenv(FAIL_ENV, str(n - 1))  # the final refit (every pedon) fails
    with pytest.raises(MisoBenchError, match=f"flaky: {n} pedons"):
        run_benchmark(cfg, announce=lambda m: None, jobs=2)
    monkeypatch.delenv(FAIL_ENV)
    result = run_benchmark(cfg, announce=lambda m: None, jobs=2)
    folds = sorted(c.data.tags["fold"] for c in _children(result))
    assert folds == ["0", "1", "2", "3", "4", "final"]  # each fit logged once
    assert all(c.info.status == "FINISHED" for c in _children(result))
    keys = [k for k in clean.metrics if k.startswith("test/")]
    assert all(np.isclose(clean.metrics[k], result.metrics[k], equal_nan=True) for k in keys)
    pd.testing.assert_frame_equal(_oof(clean), _oof(result))


def test_a_worker_that_dies_is_a_clear_error_and_the_rerun_completes(
    tiny_dir, home, flaky, monkeypatch
):
    cfg = _cfg(tiny_dir, home, "model.name=flaky", "cv.name=random")
    monkeypatch.setenv(DIE_ENV, "1")
    with pytest.raises(MisoBenchError, match=r"worker process died.*--jobs 1"):
        run_benchmark(cfg, announce=lambda m: None, jobs=2)
    monkeypatch.delenv(DIE_ENV)
    result = run_benchmark(cfg, announce=lambda m: None, jobs=2)
    assert sorted(c.data.tags["fold"] for c in _children(result)) == [
        "0",
        "1",
        "2",
        "3",
        "4",
        "final",
    ]
