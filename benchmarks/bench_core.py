"""Overhead of the benchmark core over a bare scikit-learn cross-validation of the same forest.

Both sides fit the reference Random Forest (253 trees, depth 16, min split 5, seeded) on the
same folds of the same pedon features; the suite adds fold building and diagnostics, the
hygiene guard, per-fold and pooled metrics with blocked-bootstrap CIs by region, MLflow
tracking (runs, metrics, artifacts, figures) and every fold's saved model. Prints times and
ratios measured in the same run (no assertions). Usage::

    python benchmarks/bench_core.py [--preset paper] [--task tax_order] [--cv spatial]

The suite runs twice: first with empty caches (the dataset fingerprint hashes every file and
point features are read from the rasters), then again as a repeated run reads them from the
cache (``$MISO_BENCH_HOME/cache``); the second is the overhead figure. The truth-sample
evaluation and the final refit are extra work rather than overhead: timed separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from miso_bench.config import resolve_config
from miso_bench.cv import SplitContext, build_splits
from miso_bench.data.domain import sample_prediction_domain
from miso_bench.data.features import feature_table, resolve_feature_columns
from miso_bench.data.pedons import PedonDataset
from miso_bench.runner import prepare_dataset, run_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=["tiny", "default", "paper"])
    parser.add_argument("--task", default="tax_order")
    parser.add_argument("--cv", default="spatial")
    args = parser.parse_args()

    # The same "generate the synthetic dataset when absent" step as `miso-bench run`.
    manifest = prepare_dataset(resolve_config(None, None, [f"data.preset={args.preset}"]))
    root = manifest.root

    # --- bare scikit-learn: the same features, the same folds, the same forest -------------
    kept, _ = PedonDataset(manifest).labelled(args.task)
    feats = feature_table(manifest, kept["x"].to_numpy(), kept["y"].to_numpy())
    on_raster = feats[manifest.band_names].notna().any(axis=1).to_numpy()
    kept, feats = kept[on_raster], feats[on_raster]
    X = feats[resolve_feature_columns(manifest, ["s2", "terrain", "climate"])].to_numpy(np.float32)
    y = kept["target"].to_numpy()
    coords = kept[["x", "y"]].to_numpy()
    cfg = resolve_config(
        None, None, [f"data.path={root}", f"task={args.task}", f"cv.name={args.cv}"]
    )
    domain = sample_prediction_domain(manifest, int(cfg["eval"]["domain_points"]), 0)
    ctx = SplitContext(coords, y, kept["id"].to_numpy(), {}, domain, 0)
    _, splits = build_splits(args.cv, cfg["cv"], ctx)
    t = time.perf_counter()
    for train, test in splits:
        forest = RandomForestClassifier(
            n_estimators=253, max_depth=16, min_samples_split=5, n_jobs=-1, random_state=0
        ).fit(X[train], y[train])
        forest.predict_proba(X[test])
    t_bare = time.perf_counter() - t
    print(f"{args.preset}: {len(y):,} pedons, task {args.task}, {len(splits)} {args.cv} folds")

    # --- the suite ------------------------------------------------------------------------
    tmp = tempfile.mkdtemp(prefix="bench-core-")
    try:
        os.environ["MISO_BENCH_HOME"] = tmp  # a fresh tracking store and empty caches
        common = [f"data.path={root}", f"task={args.task}", f"cv.name={args.cv}", "model.name=rf"]

        def suite(*extra: str) -> tuple[float, dict]:
            t = time.perf_counter()
            res = run_benchmark(resolve_config(None, None, [*common, *extra]), announce=print)
            return time.perf_counter() - t, res.metrics

        bare_like = ("eval.truth=false", "refit=false")
        t_cold, _ = suite(*bare_like, "tracking.experiment=cold")
        t_warm, _ = suite(*bare_like, "tracking.experiment=warm")
        t_nomodels, _ = suite(
            *bare_like, "tracking.experiment=nomodels", "tracking.log_models=false"
        )
        t_refit, _ = suite("eval.truth=false", "refit=true", "tracking.experiment=refit")
        t_truth, metrics = suite("eval.truth=true", "refit=false", "tracking.experiment=truth")
        store_mb = sum(f.stat().st_size for f in Path(tmp).rglob("*")) / 1e6
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def line(label: str, seconds: float) -> None:
        print(
            f"  {label:<58}{seconds:8.1f} s   {seconds / t_bare:5.2f}x"
            f"  ({100 * (seconds / t_bare - 1):+.1f} %)"
        )

    print(f"  {'bare scikit-learn CV (fit + predict)':<58}{t_bare:8.1f} s   1.00x")
    line("miso-bench run, first run (fingerprint, features read)", t_cold)
    line("miso-bench run, repeated run (cached): the overhead", t_warm)
    line("  ... the same without saving fold models", t_nomodels)
    line("  ... plus the final refit on every pedon", t_refit)
    n_truth = int(metrics.get("truth/overall/n", 0))
    line(f"  ... plus truth-sample scoring ({n_truth:,} pixels x {len(splits)} models)", t_truth)
    print(f"  MLflow store and caches written by the five runs: {store_mb:,.0f} MB")


if __name__ == "__main__":
    main()
