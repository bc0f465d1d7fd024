"""Per-trial overhead of the sweep machinery over the bare objective it wraps.

A sweep trial does the bare work (plan each inner fold under the hygiene guard, fit, predict,
score) plus the machinery: an Optuna ask/tell in SQLite storage under the claim lock, the
dead-trial check, a nested MLflow trial run with its parameters, inner scores, heartbeat and
end state, and the pruner's report after each inner fold. This script runs one study of
``--trials`` Random Forest trials through that machinery (``--pruner none``, so every trial
does the same work), then replays exactly the same parameter sets through the bare fold
engine on the same inner folds, and prints both per-trial times and their ratio. Two trial
sizes are measured (``--trees``; the default pair gives a trial of well under a second and
one of about ten seconds on the default dataset, 2 cores). Prints figures measured in the
same run; no assertions::

    python benchmarks/bench_search.py [--preset default] [--task tax_order] [--trials 6]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=["tiny", "default", "paper"])
    parser.add_argument("--task", default="tax_order")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--inner-splits", type=int, default=3)
    parser.add_argument("--trees", type=int, nargs="+", default=[25, 800])
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # fold-building notices; the figures are what matter

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        # The dataset is generated once under the usual home; tracking and studies go to tmp.
        from miso_bench.config import resolve_config
        from miso_bench.engine import build_inputs, fit_predict_fold, plan_fold, prepare_dataset
        from miso_bench.models import MODELS
        from miso_bench.search import SweepSettings, load_search_space
        from miso_bench.search import sweep as sw
        from miso_bench.tracking import Tracker

        space_file = home / "space.yaml"
        space_file.write_text(
            "model.params.max_depth: [8, 16, 24]\n"
            "model.params.min_samples_leaf: {low: 1, high: 5}\n"
            "model.params.max_features: [sqrt, 0.3]\n"
        )
        valid = set(MODELS.get("rf").cls().get_params())
        space = load_search_space(space_file, valid)
        base = resolve_config(None, None, [f"data.preset={args.preset}", f"task={args.task}"])
        manifest = prepare_dataset(base, lambda _m: None)
        print(
            f"dataset {manifest.name}, task {args.task}, {args.trials} trials per size, "
            f"{args.inner_splits} inner folds, {os.cpu_count()} cores"
        )
        print(f"{'trees':>6} {'bare s/trial':>13} {'sweep s/trial':>14} {'overhead':>9}")
        for trees in args.trees:
            cfg = resolve_config(
                None,
                None,
                [
                    f"data.path={manifest.root}",
                    f"task={args.task}",
                    "model.name=rf",
                    f"model.params.n_estimators={trees}",
                    f"tracking.uri=sqlite:///{home}/mlflow-{trees}.db",
                ],
            )
            inputs = build_inputs(cfg, manifest)
            settings = SweepSettings(
                space=space,
                n_trials=args.trials,
                storage=f"sqlite:///{home}/optuna-{trees}.db",
                pruner="none",
                inner_splits=args.inner_splits,
            )
            outer = sw.outer_folds(cfg, inputs, args.inner_splits, f"bench-{trees}")[0]
            tracker = Tracker(f"bench-{trees}", cfg["tracking"]["uri"])
            study = sw._study(outer.name, settings, 0)
            seed = int(cfg["seed"])
            # Warm-up: imports, the first fit's allocations, MLflow's schema.
            warm = plan_fold("warm", inputs, *outer.inner[0], cfg["cv"], seed)
            fit_predict_fold(inputs, warm, cfg["model"]["params"], seed)
            with tracker.run(f"study-{trees}") as study_run:
                objective = sw._Objective(cfg, inputs, space, outer, tracker, study_run)
                t0 = time.perf_counter()
                sw._work_on(study, objective, settings, None)
                swept = (time.perf_counter() - t0) / args.trials

            # The same parameter sets, through the bare fold engine on the same inner folds.
            t0 = time.perf_counter()
            values = []
            for trial in study.get_trials(deepcopy=False):
                trial_cfg = sw._trial_config(cfg, dict(trial.params))
                scores = []
                for j, (train, test) in enumerate(outer.inner):
                    spec = plan_fold(
                        f"bare/{trial.number}/{j}",
                        inputs,
                        train,
                        test,
                        trial_cfg["cv"],
                        seed + j,
                        held_out=outer.test,
                    )
                    result = fit_predict_fold(inputs, spec, trial_cfg["model"]["params"], seed)
                    scores.append(result.metrics[f"test/overall/{inputs.task.primary_metric}"])
                values.append(float(np.mean(scores)))
            bare = (time.perf_counter() - t0) / args.trials
            same = np.allclose(values, [t.value for t in study.get_trials(deepcopy=False)])
            print(
                f"{trees:>6} {bare:>13.2f} {swept:>14.2f} {swept / bare - 1:>+9.1%}"
                + ("" if same else "   (scores differ: not the same work!)")
            )


if __name__ == "__main__":
    main()
