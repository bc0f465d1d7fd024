"""A run's MISO fits side by side in worker processes against one after another.

Fits ``--fits`` outer folds of the synthetic default (CPU preset, ``--epochs`` epochs each,
with the truth-sample scoring a run does after each fold) twice in this run: one after
another in this process with all of torch's threads, as ``--jobs 1`` does, and in worker
processes with a share of the threads each (:func:`miso_bench.parallel.fit_in_workers`, as
``--jobs auto`` does). Prints the wall time of each, the ratio, and the largest difference
between the two ways' out-of-fold probabilities (not zero when the thread counts differ:
float sums are split by thread). Then one fold fit on one thread (what a worker has) with
and without the padded-chip cache (``chip_cache_mb``: the labelled chips read and normalised
once per fit, each epoch slicing them), interleaved: training seconds of each, the ratio, and
the largest difference between their probabilities (zero: the same numbers). No MLflow, no
assertions. Usage::

    python benchmarks/bench_fits.py [--task tax_order] [--fits 4] [--epochs 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miso_bench.config import resolve_config
from miso_bench.engine import (
    build_inputs,
    fit_predict_fold,
    plan_fold,
    prepare_dataset,
    truth_metrics,
)
from miso_bench.parallel import fit_in_workers
from miso_bench.runner import RunProgress, _splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="tax_order")
    parser.add_argument("--fits", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    cfg = resolve_config(
        None,
        {"model": {"name": "miso"}, "task": args.task},
        [f"model.params.epochs={args.epochs}"],
    )
    inputs = build_inputs(cfg, prepare_dataset(cfg, print), lambda s: None)
    _, splits, _ = _splits(cfg, inputs, 0)
    params = cfg["model"]["params"]
    specs = [
        plan_fold(f"fold_{f}", inputs, *splits[f], cfg["cv"], f)
        for f in range(min(args.fits, len(splits)))
    ]
    inputs.normalizer()  # both ways start with the statistics computed
    inputs.chip_source()
    share = max(1, threads // args.workers)
    print(
        f"MISO CPU preset, {args.task}, {len(specs)} folds x {args.epochs} epochs (+ truth "
        f"sample), {threads} threads; side by side: {args.workers} workers x {share} thread(s)"
    )

    start = time.perf_counter()
    one: dict[str, np.ndarray] = {}
    for spec in specs:
        result = fit_predict_fold(inputs, spec, params, 0)
        truth_metrics(result.model, inputs)
        one[spec.name] = result.proba
    t_one = time.perf_counter() - start
    print(f"  one after another ({threads} threads)  {t_one:7.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        two = {
            name: result.proba
            for name, result, _truth, _caught in fit_in_workers(
                inputs,
                [(s.name, s, params, 0, Path(tmp) / s.name) for s in specs],
                args.workers,
                share,
                RunProgress(),
            )
        }
        t_two = time.perf_counter() - start
    diff = max(float(np.abs(one[k] - two[k]).max()) for k in one)
    print(
        f"  side by side ({args.workers} x {share})         {t_two:7.1f} s   ratio "
        f"{t_one / t_two:.2f}x   (largest probability difference {diff:.2e})"
    )
    chip_cache(inputs, specs[0], params)


def chip_cache(inputs: Any, spec: Any, params: dict, rounds: int = 2) -> None:
    """One fold fit on one thread with and without the padded-chip cache, interleaved: the
    fastest round of each, training alone and the whole fit (the cache's build and the
    test pedons' prediction included)."""
    torch.set_num_threads(1)
    train = {"cache": float("inf"), "no cache": float("inf")}
    whole = dict(train)
    proba = {}
    size = 0.0
    for _ in range(rounds):
        for name, mb in (("no cache", 0.0), ("cache", 1024.0)):
            result = fit_predict_fold(inputs, spec, {**params, "chip_cache_mb": mb}, 0)
            train[name] = min(train[name], result.model.train_seconds_)
            whole[name] = min(whole[name], result.seconds)
            proba[name] = result.proba
            if mb:
                size = result.model.fit_report()["chip_cache_mb"]
    diff = float(np.abs(proba["cache"] - proba["no cache"]).max())
    t, w = train, whole
    print(
        f"  one fold, 1 thread, with the chip cache ({size:.0f} MB) / without: training "
        f"{t['cache']:.1f} / {t['no cache']:.1f} s ({t['no cache'] / t['cache']:.2f}x), whole "
        f"fit {w['cache']:.1f} / {w['no cache']:.1f} s ({w['no cache'] / w['cache']:.2f}x)"
        f"   (largest probability difference {diff:.1e})"
    )


if __name__ == "__main__":
    main()
