"""Overhead of the benchmark core over a bare scikit-learn cross-validation of the same forest.

Both sides fit the reference Random Forest (253 trees, depth 16, min split 5, seeded) on the
same folds of the same pedon features; the suite adds feature extraction, fold building and
diagnostics, per-fold and pooled metrics with blocked-bootstrap CIs by region, MLflow
tracking, artifacts and figures. Prints both times and the ratio (no assertions). Usage::

    python benchmarks/bench_core.py [--preset paper] [--task tax_order] [--cv spatial]

The truth-sample evaluation (a prediction of every fold's model on the dense truth pixels) is
extra work rather than overhead, so it is timed separately.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

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
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MISO_BENCH_HOME"] = tmp  # a fresh tracking store
        common = [f"data.path={root}", f"task={args.task}", f"cv.name={args.cv}", "model.name=rf"]
        t = time.perf_counter()
        run_benchmark(
            resolve_config(None, None, [*common, "eval.truth=false"]), announce=lambda m: None
        )
        t_suite = time.perf_counter() - t
        t = time.perf_counter()
        res = run_benchmark(
            resolve_config(
                None, None, [*common, "eval.truth=true", "tracking.experiment=with-truth"]
            ),
            announce=lambda m: None,
        )
        t_truth = time.perf_counter() - t
    print(f"  bare scikit-learn CV (fit + predict, {len(splits)} folds)   {t_bare:8.1f} s   1.00x")
    print(
        f"  miso-bench run (CV, metrics + CIs, MLflow, figures)  {t_suite:8.1f} s   "
        f"{t_suite / t_bare:.2f}x  (overhead {100 * (t_suite / t_bare - 1):+.1f} %)"
    )
    n_truth = int(res.metrics.get("truth/overall/n", 0))
    print(
        f"  ... plus truth-sample evaluation ({n_truth:,} pixels x {len(splits)} models)"
        f"  {t_truth:8.1f} s   {t_truth / t_bare:.2f}x"
    )


if __name__ == "__main__":
    main()
