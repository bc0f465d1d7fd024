"""One benchmark run: data -> folds -> fit/predict per fold -> evaluate -> track.

The runner owns the fold loop and its hygiene: a model's ``fit`` receives only rows of the
outer training fold; models that need validation get an inner spatial split carved from that
training fold; every fold is checked before fitting (:class:`HygieneError`). Results are
pooled out-of-fold predictions, evaluated overall and by region with blocked-bootstrap CIs,
and on synthetic data also against the dense truth sample (the true map accuracy).

An interrupted run (Ctrl-C, crash) ends KILLED/FAILED in MLflow; rerunning the same command
(same resolved config) resumes it: finished folds are read back from their runs, the others
are computed, and the parent run is completed once.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils._param_validation import InvalidParameterError

from . import __version__
from .config import config_hash, default_dataset_dir, home_dir
from .cv import SplitContext, build_splits, fold_diagnostics, inner_validation_split
from .data.domain import sample_prediction_domain
from .data.features import feature_groups, feature_table, resolve_feature_columns
from .data.info import dataset_fingerprint
from .data.manifest import DatasetManifest, load_manifest
from .data.pedons import PedonDataset
from .data.regions import load_regions
from .errors import MisoBenchError
from .evaluation import plots
from .evaluation.metrics import classification_metrics
from .evaluation.regional import RegionalResult, confusion_of, evaluate_by_region
from .evaluation.tasks import Task, resolve_task
from .models import MODELS, build_model
from .registry import slugify
from .tracking import Tracker

__all__ = ["HygieneError", "RunResult", "format_result", "prepare_dataset", "run_benchmark"]


class HygieneError(RuntimeError):
    """A test-fold pedon was about to reach ``fit`` (training or validation data)."""


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


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
            check=False,
        )
        commit = out.stdout.strip()
        if out.returncode == 0 and commit:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
            return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def prepare_dataset(
    config: dict[str, Any], announce: Callable[[str], None] = print
) -> DatasetManifest:
    """The run's dataset: ``data.path``, or the synthetic default (generated when absent)."""
    data = config["data"]
    if data.get("path"):
        return load_manifest(data["path"])
    target = default_dataset_dir(data["preset"], int(data["seed"]))
    if not (target / "dataset.yaml").is_file():
        from .data.synthetic import generate_synthetic_alaska

        announce(f"Generating the synthetic Alaska ({data['preset']}) in {target} ...")
        generate_synthetic_alaska(target, preset=data["preset"], seed=int(data["seed"]))
    return load_manifest(target)


@dataclass
class _Inputs:
    manifest: DatasetManifest
    task: Task
    table: pd.DataFrame  # pedons kept: id, x, y, target, region columns
    X: pd.DataFrame  # model features, index = pedon id
    regions: dict[str, np.ndarray]
    truth: pd.DataFrame | None
    truth_features: pd.DataFrame | None
    truth_regions: dict[str, np.ndarray]
    n_dropped: int
    feature_columns: list[str]


def _inputs(config: dict[str, Any], manifest: DatasetManifest) -> _Inputs:
    task = resolve_task(
        str(config["task"]), {n: s.classes for n, s in manifest.pedons.labels.items()}
    )
    kept, _ = PedonDataset(manifest).labelled(task.label)
    entry = MODELS.get(config["model"]["name"])
    selection = config["model"]["features"]
    if not selection:
        # The model's default inputs; a dataset without those groups (another band set) uses
        # all its modalities instead (set model.features to choose).
        available = set(feature_groups(manifest))
        defaults = list(entry.features)
        selection = (
            defaults if defaults and set(defaults) <= available else list(manifest.modalities)
        )
    columns = resolve_feature_columns(manifest, selection)
    x, y = kept["x"].to_numpy(), kept["y"].to_numpy()
    window = int(config["model"]["window_px"])
    feats = feature_table(manifest, x, y, window_px=window)
    # Every model is evaluated on the same pedons: those with raster data under them.
    on_raster = feats[manifest.band_names].notna().any(axis=1).to_numpy()
    n_dropped = int((~on_raster).sum())
    kept = kept.loc[on_raster].reset_index(drop=True)
    feats = feats.loc[on_raster].reset_index(drop=True)
    if len(kept) < 10:
        raise MisoBenchError(
            f"only {len(kept)} labelled pedons lie on the rasters for task "
            f"{task.name}; check the dataset with `miso-bench data check`"
        )
    layers = load_regions(manifest)
    regions = {
        name: layer.assign(kept["x"].to_numpy(), kept["y"].to_numpy())
        for name, layer in layers.items()
    }
    X = feats[columns].copy()
    X.index = pd.Index(kept["id"].to_numpy(), name="id")
    truth = truth_X = None
    truth_regions: dict[str, np.ndarray] = {}
    if (
        config["eval"]["truth"]
        and manifest.truth_file
        and manifest.resolve(manifest.truth_file).is_file()
    ):
        truth = pd.read_parquet(manifest.resolve(manifest.truth_file))
        if task.label in truth.columns:
            lookup = {c: i for i, c in enumerate(task.classes)}
            truth = truth[truth[task.label].map(lambda v: v in lookup)].reset_index(drop=True)
            truth["target"] = truth[task.label].map(lookup).astype(np.int64)
            tx, ty = truth["x_3338"].to_numpy(), truth["y_3338"].to_numpy()
            tfeats = feature_table(manifest, tx, ty, window_px=window)
            truth_X = tfeats[columns]
            truth_regions = {name: layer.assign(tx, ty) for name, layer in layers.items()}
        else:
            truth = None
    return _Inputs(
        manifest, task, kept, X, regions, truth, truth_X, truth_regions, n_dropped, columns
    )


def check_hygiene(
    fold: int, train: np.ndarray, test: np.ndarray, fit: np.ndarray, val: np.ndarray
) -> None:
    """Refuse a fold whose fit or validation rows touch its test rows."""
    train_set = set(train.tolist())
    test_set = set(test.tolist())
    if train_set & test_set:
        raise HygieneError(
            f"fold {fold}: {len(train_set & test_set)} pedons are in both the "
            "training and the test fold"
        )
    used = set(train[fit].tolist()) | set(train[val].tolist())
    if used & test_set or not used <= train_set:
        raise HygieneError(f"fold {fold}: test pedons would reach fit or early stopping")


def _fold_tags(fold: int, n: int) -> dict[str, str]:
    return {"fold": str(fold), "run_level": "fold", "n_folds": str(n)}


def run_benchmark(
    config: dict[str, Any],
    progress: Callable[[str, int], None] | None = None,
    announce: Callable[[str], None] = print,
) -> RunResult:
    """Run one benchmark as configured and log it to MLflow.

    Args:
        config: a resolved config (see :func:`miso_bench.config.resolve_config`).
        progress: called with a short message and the number of folds as each fold
            finishes.
        announce: where to print one-off notices.
    """
    start = time.perf_counter()
    manifest = prepare_dataset(config, announce)
    inputs = _inputs(config, manifest)
    task, table, X = inputs.task, inputs.table, inputs.X
    seed = int(config["seed"])
    model_name = config["model"]["name"]
    entry = MODELS.get(model_name)
    coords = table[["x", "y"]].to_numpy()
    y = table["target"].to_numpy()
    domain = sample_prediction_domain(manifest, int(config["eval"]["domain_points"]), seed)
    ctx = SplitContext(coords, y, table["id"].to_numpy(), inputs.regions, domain, seed)
    splitter, splits = build_splits(config["cv"]["name"], config["cv"], ctx)
    diag = fold_diagnostics(coords, y, splits, domain, task.class_names)
    folds = np.full(len(y), -1)
    for f, (_, test) in enumerate(splits):
        folds[test] = f

    fingerprint = dataset_fingerprint(manifest)
    chash = config_hash({"config": config, "dataset": fingerprint})
    experiment = config["tracking"]["experiment"] or f"{manifest.name}/{task.name}"
    tracker = Tracker(experiment, config["tracking"]["uri"])
    resumable = tracker.find_resumable(chash)
    tags = {
        "model": model_name,
        "cv": config["cv"]["name"],
        "task": task.name,
        "seed": str(seed),
        "dataset": manifest.name,
        "dataset_fingerprint": fingerprint,
        "git_commit": _git_commit(),
        "config_hash": chash,
        "version": __version__,
        "run_level": "parent",
        "n_folds": str(len(splits)),
        "features": ",".join(inputs.feature_columns),
    }
    block = getattr(splitter, "block_size_m", None)
    if block is None and hasattr(splitter, "base"):
        block = getattr(splitter.base, "block_size_m", None)
    if block is not None:
        tags["cv_block_size_m"] = f"{float(block):.0f}"

    shared: dict[str, Any] = {}  # data caches reused by chip models across folds
    model_tags: dict[str, str] = {}
    ckpt_root = home_dir() / "checkpoints" / chash
    oof = np.full((len(y), task.n_classes), np.nan)
    truth_per_fold: list[dict[str, float]] = []
    resumed: list[int] = []
    parent_id = resumable[0] if resumable else None
    done = resumable[1] if resumable else {}
    run_name = f"{model_name}-{config['cv']['name']}-{task.name}"
    with tracker.run(run_name, tags=tags, run_id=parent_id) as run_id:
        if not parent_id:  # a resumed run already holds its params and config
            tracker.log_params(config)
            tracker.log_yaml(config, "config.yaml")
        for f, (train, test) in enumerate(splits):
            if f in done:
                pred = pd.read_parquet(tracker.download(done[f], "predictions.parquet"))
                oof[test] = pred.loc[:, [f"p/{c}" for c in task.class_names]].to_numpy()
                truth_per_fold.append(
                    {
                        k: v
                        for k, v in tracker.run_metrics(done[f]).items()
                        if k.startswith("truth/")
                    }
                )
                resumed.append(f)
                if progress:
                    progress(f"fold {f + 1}/{len(splits)} (resumed)", len(splits))
                continue
            with tracker.run(f"fold_{f}", tags=_fold_tags(f, len(splits)), nested=True):
                fit_pos, val_pos = np.arange(len(train)), np.array([], dtype=np.int64)
                if getattr(entry.cls, "needs_validation", False):
                    fit_pos, val_pos = inner_validation_split(
                        coords[train],
                        y[train],
                        float(config["cv"]["inner_block_size_m"]),
                        seed + f,
                        float(config["cv"]["inner_val_fraction"]),
                    )
                check_hygiene(f, train, test, fit_pos, val_pos)
                model = build_model(model_name, config["model"]["params"], task.n_classes, seed)
                if hasattr(model, "bind"):  # chip models read their own inputs
                    # Test coordinates only keep unlabelled chips away from the test area.
                    model.bind(
                        manifest,
                        exclude_xy=coords[test],
                        checkpoint_dir=ckpt_root / f"fold_{f}",
                        shared=shared,
                    )
                X_fit, y_fit = X.iloc[train[fit_pos]], y[train[fit_pos]]
                try:
                    if len(val_pos):
                        model.fit(X_fit, y_fit, X.iloc[train[val_pos]], y[train[val_pos]])
                    else:
                        model.fit(X_fit, y_fit)
                except InvalidParameterError as exc:  # a bad value in model.params
                    raise MisoBenchError(
                        f"model {model_name!r}: {exc} (fix: correct model.params)"
                    ) from exc
                if hasattr(model, "run_tags"):
                    model_tags = model.run_tags()
                    tracker.set_tags(model_tags)
                for record in getattr(model, "history_", []):
                    tracker.log_metrics(
                        {f"train/{k}": v for k, v in record.items() if k != "epoch"},
                        step=int(record["epoch"]),
                    )
                proba = model.predict_proba(X.iloc[test])
                oof[test] = proba
                fold_metrics = {
                    f"test/overall/{k}": v
                    for k, v in classification_metrics(y[test], proba, task).items()
                }
                fold_metrics["fold/n_train"] = float(len(fit_pos))
                fold_metrics["fold/n_val"] = float(len(val_pos))
                fold_metrics["fold/n_test"] = float(len(test))
                if hasattr(model, "best_iteration_"):
                    fold_metrics["fold/best_iteration"] = float(model.best_iteration_)
                truth_metrics: dict[str, float] = {}
                if inputs.truth is not None and inputs.truth_features is not None:
                    predict_many = getattr(model, "predict_points", model.predict_proba)
                    tproba = predict_many(inputs.truth_features)
                    ty = inputs.truth["target"].to_numpy()
                    truth_metrics = {
                        f"truth/overall/{k}": v
                        for k, v in classification_metrics(ty, tproba, task).items()
                    }
                    for layer, names in inputs.truth_regions.items():
                        for region in sorted(set(names)):
                            sel = names == region
                            m = classification_metrics(ty[sel], tproba[sel], task)
                            truth_metrics[
                                f"truth/{layer}/{slugify(region)}/{task.primary_metric}"
                            ] = m[task.primary_metric]
                tracker.log_metrics({**fold_metrics, **truth_metrics})
                truth_per_fold.append(truth_metrics)
                with tempfile.TemporaryDirectory() as tmp:
                    pred = pd.DataFrame(proba, columns=[f"p/{c}" for c in task.class_names])
                    pred.insert(0, "id", table["id"].to_numpy()[test])
                    pred.to_parquet(Path(tmp) / "predictions.parquet", index=False)
                    tracker.log_artifact(Path(tmp) / "predictions.parquet")
            shutil.rmtree(ckpt_root / f"fold_{f}", ignore_errors=True)  # the fold is logged
            if progress:
                progress(f"fold {f + 1}/{len(splits)}", len(splits))

        if model_tags:  # e.g. the MISO preset and pretrained weights, on the parent run too
            tracker.set_tags(model_tags)

        # --- pooled evaluation ---------------------------------------------------------
        ev = config["eval"]
        tested = folds >= 0
        regional = evaluate_by_region(
            y[tested],
            oof[tested],
            task,
            coords[tested, 0],
            coords[tested, 1],
            {k: v[tested] for k, v in inputs.regions.items()},
            block_size_m=float(ev["block_size_m"]),
            n_boot=int(ev["n_boot"]),
            ci=float(ev["ci"]),
            seed=seed,
            min_n=int(ev["min_region_n"]),
        )
        metrics = regional.flat("test")
        truth_mean: dict[str, float] = {}
        if truth_per_fold and any(truth_per_fold):
            keys = sorted(set().union(*truth_per_fold))
            for k in keys:
                vals = [d[k] for d in truth_per_fold if k in d and np.isfinite(d[k])]
                if vals:
                    truth_mean[k] = float(np.mean(vals))
            primary = task.primary_metric
            if f"truth/overall/{primary}" in truth_mean:
                metrics[f"optimism/{primary}"] = (
                    metrics[f"test/overall/{primary}"] - truth_mean[f"truth/overall/{primary}"]
                )
        metrics.update(truth_mean)
        metrics.update(diag.summary())
        metrics["data/n_pedons"] = float(len(y))
        metrics["data/n_dropped_off_raster"] = float(inputs.n_dropped)
        metrics["time/seconds"] = time.perf_counter() - start
        tracker.log_metrics(metrics)
        _log_artifacts(tracker, inputs, regional, oof, folds, diag, truth_mean, run_name)
    if progress:
        progress("done", len(splits))
    return RunResult(
        run_id,
        experiment,
        tracker.uri,
        task,
        config,
        metrics,
        regional,
        truth_mean,
        folds,
        len(y),
        inputs.n_dropped,
        time.perf_counter() - start,
        resumed,
    )


def _log_artifacts(
    tracker: Tracker,
    inputs: _Inputs,
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
        pred["predicted"] = [task.class_names[i] for i in np.nan_to_num(oof, nan=0).argmax(1)]
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
            tracker.log_artifact(tmp / name)
    tested = folds >= 0
    figs = {
        "confusion_matrix.png": plots.confusion_figure(
            confusion_of(table["target"].to_numpy()[tested], oof[tested], task),
            task.class_names,
            f"{title}: pooled out-of-fold",
        ),
        "fold_map.png": plots.fold_map_figure(table["x"], table["y"], folds, f"{title}: folds"),
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
        tracker.log_figure(fig, name)
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
    if result.resumed_folds:
        lines.append(f"resumed folds {result.resumed_folds} from the interrupted run")
    return "\n".join(lines)
