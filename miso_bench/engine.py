"""The fold engine: a run's inputs built once, one pure fold step, pooled evaluation.

Everything that fits models goes through :func:`fit_predict_fold`: the benchmark runner (one
fold per outer split, then a final refit on every labelled pedon), and later sweeps (nested
CV: inner folds inside each outer training fold) and ablation studies. The fold step fits on
the given training rows, with optional inner validation rows, and predicts the given rows; it
neither tracks nor prints. Before every fit it runs the hygiene guard on what is actually
passed to ``fit``:

- no test or held-out pedon id is among the fit or validation rows;
- the fit and validation rows lie inside the (outer) training fold;
- for chip models, the exclusion area given to the model (no training chip may cover it)
  holds every test and held-out pedon.

Coordinates: ``RunInputs.table`` keeps the dataset CRS (for reading rasters); every distance
(folds, buffers, bootstrap blocks, diagnostics) uses ``RunInputs.xy_m``, the same pedons in a
metric CRS (the dataset's own when it is projected in metres; see
:func:`miso_bench.spatial.metric_coordinates`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import default_dataset_dir
from .cv import inner_validation_split
from .data.cache import cached_band_stats, cached_feature_table, dataset_fingerprint
from .data.features import feature_groups, resolve_feature_columns
from .data.manifest import DatasetManifest, load_manifest
from .data.pedons import PedonDataset, read_truth, truth_targets
from .data.regions import load_regions
from .errors import MisoBenchError, warn
from .evaluation.metrics import classification_metrics
from .evaluation.regional import RegionalResult, evaluate_by_region
from .evaluation.tasks import Task, resolve_task
from .models import MODELS, FoldContext, build_model
from .provenance import code_version, git_commit, hardware_tags
from .registry import slugify
from .spatial import OUTSIDE_REGION, MetricFrame, metric_coordinates
from .version import __version__

__all__ = [
    "FoldResult",
    "FoldSpec",
    "HygieneError",
    "RunInputs",
    "TruthSample",
    "build_inputs",
    "check_hygiene",
    "check_unlabeled_chips",
    "fit_predict_fold",
    "identity_tags",
    "model_record",
    "plan_fold",
    "pooled_evaluation",
    "prepare_dataset",
    "truth_metrics",
]


class HygieneError(RuntimeError):
    """A test-fold (or held-out) pedon was about to reach ``fit``: a defect, never a user
    mistake, so it is not a :class:`~miso_bench.errors.MisoBenchError`."""


@dataclass
class TruthSample:
    """The dense truth sample of a synthetic dataset, for the task's label.

    Attributes:
        table: ``x``, ``y`` (dataset CRS) and ``target`` (class index).
        X: the model's feature columns at those points.
        regions: region layer -> region name per point.
    """

    table: pd.DataFrame
    X: pd.DataFrame
    regions: dict[str, np.ndarray]


@dataclass
class RunInputs:
    """What every fold of a run reads, built once by :func:`build_inputs`.

    Attributes:
        manifest: the dataset.
        task: the task (with the dataset's classes).
        fingerprint: the dataset's content fingerprint.
        table: the pedons evaluated: ``id``, ``x``, ``y`` (dataset CRS), ``target``.
        X: the model's feature table (index: pedon id).
        xy_m: ``(n, 2)`` pedon coordinates in metres (``frame.metric_crs``).
        frame: the dataset CRS and the metric CRS of distances.
        regions: region layer -> region name per pedon.
        truth: the truth sample, or None.
        n_dropped: labelled pedons dropped because no raster has data under them.
        feature_columns: the model's inputs.
        window_px: point-feature window.
        model: the registry name of the model.
        cache_mb: memory of the chip source's block cache (chip models).
    """

    manifest: DatasetManifest
    task: Task
    fingerprint: str
    table: pd.DataFrame
    X: pd.DataFrame
    xy_m: np.ndarray
    frame: MetricFrame
    regions: dict[str, np.ndarray]
    truth: TruthSample | None
    n_dropped: int
    feature_columns: list[str]
    window_px: int
    model: str
    cache_mb: float = 1024.0
    _source: Any = field(default=None, repr=False)
    _normalizer: Any = field(default=None, repr=False)

    @property
    def ids(self) -> np.ndarray:
        """Pedon ids, in row order."""
        return self.table["id"].to_numpy()

    @property
    def y(self) -> np.ndarray:
        """Class index of every pedon."""
        return self.table["target"].to_numpy()

    @property
    def kind(self) -> str:
        """``tabular`` or ``chips`` (the model's registry kind)."""
        return MODELS.get(self.model).kind

    def chip_source(self) -> Any:
        """The dataset's chip source (opened once, shared by every fold)."""
        if self._source is None:
            from .data.chips import ChipSource

            self._source = ChipSource(self.manifest, cache_mb=self.cache_mb)
        return self._source

    def normalizer(self) -> Any:
        """Per-band normalisation statistics of the dataset (computed once)."""
        if self._normalizer is None:
            from .data.normalization import Normalizer

            self._normalizer = Normalizer(
                cached_band_stats(self.manifest, self.fingerprint), self.chip_source().band_names
            )
        return self._normalizer


def _selection(config: Mapping[str, Any], manifest: DatasetManifest) -> list[str]:
    entry = MODELS.get(config["model"]["name"])
    selection = config["model"]["features"]
    if selection:
        return list(selection)
    # The model's default inputs; a dataset without those groups (another band set) uses
    # all its modalities instead, and says so (set model.features to choose).
    available = set(feature_groups(manifest))
    defaults = list(entry.features)
    if not defaults or set(defaults) <= available:
        return defaults or list(manifest.modalities)
    missing = [g for g in defaults if g not in available]
    everything = list(manifest.modalities)
    warn(
        "default_features_unavailable",
        f"the dataset lacks {', '.join(missing)} of {entry.name}'s default input groups "
        f"({', '.join(defaults)}), so it uses every modality: {', '.join(everything)} (fix: "
        "set model.features, e.g. --set 'model.features=[...]', to choose)",
    )
    return everything


def build_inputs(
    config: Mapping[str, Any],
    manifest: DatasetManifest,
    progress: Callable[[str], None] | None = None,
) -> RunInputs:
    """Read a run's pedons, features, regions and truth sample once.

    Args:
        config: a resolved run config.
        manifest: the dataset.
        progress: told about each setup step (a short message).

    Raises:
        MisoBenchError: duplicate pedon ids, too few pedons on the rasters.
    """
    say = progress or (lambda _message: None)
    task = resolve_task(
        str(config["task"]), {n: s.classes for n, s in manifest.pedons.labels.items()}
    )
    say("reading pedons")
    kept, _ = PedonDataset(manifest).labelled(task.label)
    dupes = kept["id"][kept["id"].duplicated()]
    if len(dupes):
        raise MisoBenchError(
            f"{manifest.resolve(manifest.pedons.file)}: pedons.id_column: {len(dupes)} "
            f"duplicate ids among the labelled pedons (e.g. {dupes.iloc[0]!r}) (fix: give "
            "every pedon a unique id; `miso-bench data check` lists them)"
        )
    say("fingerprinting the dataset")
    fingerprint = dataset_fingerprint(manifest)
    columns = resolve_feature_columns(manifest, _selection(config, manifest))
    window = int(config["model"]["window_px"])
    say(f"reading point features of {len(kept):,} pedons")
    feats = cached_feature_table(
        manifest, fingerprint, kept["x"].to_numpy(), kept["y"].to_numpy(), window
    )
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
    say("assigning regions")
    layers = load_regions(manifest)
    x, y = kept["x"].to_numpy(), kept["y"].to_numpy()
    regions = {name: layer.assign(x, y) for name, layer in layers.items()}
    for name, names in regions.items():
        outside = int((names == OUTSIDE_REGION).sum())
        if outside:
            warn(
                f"pedons_outside_{name}",
                f"{outside:,} of {len(names):,} pedons lie in no polygon of the region layer "
                f"{name} ({layers[name].file}): they are reported as region "
                f"'{OUTSIDE_REGION}', which is never the worst region nor a fold of "
                "leave-one-region-out CV (fix: check the layer's CRS and extent; "
                "`miso-bench data check` lists the pedons)",
            )
    xy_m, frame = metric_coordinates(manifest.crs, x, y)
    X = feats[columns].copy()
    X.index = pd.Index(kept["id"].to_numpy(), name="id")
    table = pd.DataFrame({"id": kept["id"].to_numpy(), "x": x, "y": y})
    table["target"] = kept["target"].to_numpy()
    truth = None
    if config["eval"]["truth"] and manifest.truth_file:
        say("reading the truth sample")
        raw = read_truth(manifest)
        if raw is not None and task.label in raw.columns:
            raw, target = truth_targets(raw, task.label, task.classes)
            ttable = pd.DataFrame({"x": raw["x"].to_numpy(), "y": raw["y"].to_numpy()})
            ttable["target"] = target
            tx, ty = ttable["x"].to_numpy(), ttable["y"].to_numpy()
            tfeats = cached_feature_table(manifest, fingerprint, tx, ty, window)
            truth = TruthSample(
                ttable,
                tfeats[columns].reset_index(drop=True),
                {name: layer.assign(tx, ty) for name, layer in layers.items()},
            )
    return RunInputs(
        manifest=manifest,
        task=task,
        fingerprint=fingerprint,
        table=table,
        X=X,
        xy_m=xy_m,
        frame=frame,
        regions=regions,
        truth=truth,
        n_dropped=n_dropped,
        feature_columns=columns,
        window_px=window,
        model=str(config["model"]["name"]),
        cache_mb=float(config["data"]["cache_mb"]),
    )


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


# --- one fold -----------------------------------------------------------------------------
@dataclass
class FoldSpec:
    """Which rows a fit sees and which it predicts (positions into ``RunInputs.table``).

    Attributes:
        name: a label (``fold_0``, ``final``, ``outer_1/inner_2``).
        train: the training fold (what the fit may see at most).
        test: rows to predict (empty for a final refit).
        fit: rows passed to ``fit`` (within ``train``).
        val: the inner validation rows (within ``train``, disjoint from ``fit``).
        held_out: further rows the fit must never see (in nested CV: the outer test fold).
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    fit: np.ndarray
    val: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    held_out: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))


def plan_fold(
    name: str,
    inputs: RunInputs,
    train: np.ndarray,
    test: np.ndarray,
    cv_config: Mapping[str, Any],
    seed: int,
    held_out: np.ndarray | None = None,
) -> FoldSpec:
    """A fold's rows: all of ``train`` for fit, or (models that need validation) an inner
    spatial validation split carved from ``train`` alone."""
    train = np.asarray(train, dtype=np.int64)
    fit, val = train, np.array([], dtype=np.int64)
    if MODELS.get(inputs.model).cls.needs_validation:
        fit_pos, val_pos = inner_validation_split(
            inputs.xy_m[train],
            inputs.y[train],
            float(cv_config["inner_block_size_m"]),
            seed,
            float(cv_config["inner_val_fraction"]),
        )
        fit, val = train[fit_pos], train[val_pos]
    return FoldSpec(
        name,
        train,
        np.asarray(test, dtype=np.int64),
        fit,
        val,
        np.array([], dtype=np.int64) if held_out is None else np.asarray(held_out, np.int64),
    )


def check_hygiene(
    name: str,
    *,
    train_ids: np.ndarray,
    fit_ids: np.ndarray,
    val_ids: np.ndarray,
    forbidden_ids: np.ndarray,
    forbidden_xy: np.ndarray | None = None,
    exclude_xy: np.ndarray | None = None,
) -> None:
    """Refuse a fit that could see a test or held-out pedon.

    Args:
        name: the fold, for the message.
        train_ids: ids of the training fold.
        fit_ids, val_ids: ids actually passed to ``fit`` as training and validation rows.
        forbidden_ids: ids of the test fold and of every held-out pedon.
        forbidden_xy: their coordinates, and ``exclude_xy`` the exclusion area given to a
            chip model: it must hold every one of them.

    Raises:
        HygieneError: naming the violation.
    """
    forbidden = set(np.asarray(forbidden_ids).tolist())
    for label, ids in (("fit", fit_ids), ("validation (early stopping)", val_ids)):
        leaked = forbidden & set(np.asarray(ids).tolist())
        if leaked:
            raise HygieneError(
                f"{name}: {len(leaked)} test/held-out pedons would reach {label} "
                f"(e.g. id {next(iter(leaked))!r})"
            )
    train = set(np.asarray(train_ids).tolist())
    for label, ids in (("fit", fit_ids), ("validation", val_ids)):
        outside = set(np.asarray(ids).tolist()) - train
        if outside:
            raise HygieneError(
                f"{name}: {len(outside)} {label} pedons lie outside the training fold "
                f"(e.g. id {next(iter(outside))!r})"
            )
    if exclude_xy is not None and forbidden_xy is not None and len(forbidden_xy):
        excluded = {tuple(p) for p in np.asarray(exclude_xy, dtype=np.float64).tolist()}
        missing = [
            p
            for p in np.asarray(forbidden_xy, dtype=np.float64).tolist()
            if tuple(p) not in excluded
        ]
        if missing:
            raise HygieneError(
                f"{name}: the chip model's exclusion area misses {len(missing)} test/held-out "
                f"pedons (e.g. at {missing[0]}): unlabelled chips could cover them"
            )


def check_unlabeled_chips(name: str, windows: np.ndarray, forbidden_xy: np.ndarray) -> None:
    """Refuse a fit whose unlabelled chips covered a test or held-out pedon.

    Args:
        name: the fold, for the message.
        windows: ``(n, 4)`` chip bounds ``(xmin, xmax, ymin, ymax)``.
        forbidden_xy: ``(m, 2)`` coordinates of the test and held-out pedons.

    Raises:
        HygieneError: a chip covered one.
    """
    windows = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    if len(windows) == 0 or len(forbidden_xy) == 0:
        return
    from scipy.spatial import cKDTree

    centres = np.column_stack(
        [(windows[:, 0] + windows[:, 1]) / 2, (windows[:, 2] + windows[:, 3]) / 2]
    )
    half = (windows[:, 1] - windows[:, 0]).max() / 2
    tree = cKDTree(np.asarray(forbidden_xy, dtype=np.float64))
    hits = tree.query_ball_point(centres, r=half, p=np.inf)
    for w, near in zip(windows, hits, strict=True):
        for j in near:
            px, py = forbidden_xy[j]
            if w[0] <= px < w[1] and w[2] < py <= w[3]:
                raise HygieneError(
                    f"{name}: an unlabelled training chip covered a test/held-out pedon at "
                    f"({px}, {py})"
                )


@dataclass
class FoldResult:
    """What one fit produced.

    Attributes:
        spec: the rows.
        model: the fitted model.
        proba: ``(len(spec.test), n_classes)`` predicted probabilities.
        test_ids: ids of the predicted rows.
        seconds: fit and predict time.
        metrics: test metrics of the fold (``test/overall/...``) and fold sizes.
        history: per-epoch records (deep models).
    """

    spec: FoldSpec
    model: Any
    proba: np.ndarray
    test_ids: np.ndarray
    seconds: float
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def fit_predict_fold(
    inputs: RunInputs,
    spec: FoldSpec,
    params: Mapping[str, Any],
    seed: int,
    *,
    checkpoint_dir: Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    context_hook: Callable[[FoldContext], FoldContext] | None = None,
) -> FoldResult:
    """Fit the run's model on ``spec.fit`` (validating on ``spec.val``) and predict
    ``spec.test``. No tracking, no printing.

    Args:
        inputs: the run's inputs.
        spec: the rows (see :func:`plan_fold`).
        params: the model's parameters (``model.params``).
        seed: the model seed.
        checkpoint_dir: where a chip model keeps checkpoints (resumes from them).
        on_epoch: per-epoch callback of chip models (progress, pruning).
        context_hook: lets a caller adjust the chip model's context (tests).

    Raises:
        HygieneError: the fit could see a test or held-out pedon.
    """
    start = time.perf_counter()
    task = inputs.task
    model = build_model(inputs.model, params, task.n_classes, seed)
    ids = inputs.ids
    X_fit, y_fit = inputs.X.iloc[spec.fit], inputs.y[spec.fit]
    X_val = inputs.X.iloc[spec.val] if len(spec.val) else None
    y_val = inputs.y[spec.val] if len(spec.val) else None
    forbidden = np.concatenate([spec.test, spec.held_out]).astype(np.int64)
    hygiene = {
        "train_ids": ids[spec.train],
        "fit_ids": X_fit.index.to_numpy(),
        "val_ids": np.array([]) if X_val is None else X_val.index.to_numpy(),
        "forbidden_ids": ids[forbidden],
    }
    if inputs.kind == "chips":
        forbidden_xy = inputs.table[["x", "y"]].to_numpy()[forbidden]
        context = FoldContext(
            source=inputs.chip_source(),
            normalizer=inputs.normalizer(),
            exclude_xy=forbidden_xy,
            checkpoint_dir=checkpoint_dir,
            on_epoch=on_epoch,
            fold=spec.name,
            positive_index=task.positive_index if task.kind == "binary" else 1,
        )
        if context_hook is not None:
            context = context_hook(context)
        check_hygiene(
            spec.name, **hygiene, forbidden_xy=forbidden_xy, exclude_xy=context.exclude_xy
        )
        model.fit(X_fit, y_fit, X_val, y_val, context=context)
        check_unlabeled_chips(spec.name, model.unlabeled_windows(), forbidden_xy)
    else:
        check_hygiene(spec.name, **hygiene)
        try:
            model.fit(X_fit, y_fit, X_val, y_val)
        except (ValueError, TypeError) as exc:
            # scikit-learn's parameter validation names "the 'x' parameter"; other errors are
            # defects and keep their traceback.
            if "parameter" not in str(exc):
                raise
            raise MisoBenchError(
                f"model {inputs.model!r}: {exc} (fix: correct model.params)".replace("\n", " ")
            ) from exc
    X_test = inputs.X.iloc[spec.test]
    metrics: dict[str, float] = {}
    if inputs.kind == "chips":
        # One inference path: held-out pedons are scored with the map's value at their pixel
        # (blended lattice windows); the chip centred on each pedon is a secondary figure.
        proba = model.predict_points(X_test) if len(spec.test) else model.predict_proba(X_test)
        if len(spec.test):
            centred = classification_metrics(inputs.y[spec.test], model.predict_proba(X_test), task)
            metrics[f"test/centred/{task.primary_metric}"] = centred[task.primary_metric]
    else:
        proba = model.predict_proba(X_test)
    if len(spec.test):
        metrics.update(
            {
                f"test/overall/{k}": v
                for k, v in classification_metrics(inputs.y[spec.test], proba, task).items()
            }
        )
    metrics["fold/n_train"] = float(len(spec.fit))
    metrics["fold/n_val"] = float(len(spec.val))
    metrics["fold/n_test"] = float(len(spec.test))
    metrics.update({f"fold/{k}": v for k, v in model.fit_report().items()})
    return FoldResult(
        spec,
        model,
        proba,
        ids[spec.test],
        time.perf_counter() - start,
        metrics,
        list(getattr(model, "history_", [])),
    )


def truth_metrics(model: Any, inputs: RunInputs) -> dict[str, float]:
    """Metrics of a fitted model on the truth sample, overall and per region (primary)."""
    truth = inputs.truth
    if truth is None:
        return {}
    task = inputs.task
    proba = model.predict_points(truth.X)
    ty = truth.table["target"].to_numpy()
    out = {f"truth/overall/{k}": v for k, v in classification_metrics(ty, proba, task).items()}
    for layer, names in truth.regions.items():
        for region in sorted(set(names)):
            sel = names == region
            m = classification_metrics(ty[sel], proba[sel], task)
            out[f"truth/{layer}/{slugify(region)}/{task.primary_metric}"] = m[task.primary_metric]
    return out


def pooled_evaluation(
    inputs: RunInputs,
    oof: np.ndarray,
    tested: np.ndarray,
    eval_config: Mapping[str, Any],
    seed: int,
) -> RegionalResult:
    """Pooled out-of-fold metrics of the tested pedons, overall and by region, with
    blocked-bootstrap CIs (blocks in metres)."""
    xy = inputs.xy_m[tested]
    return evaluate_by_region(
        inputs.y[tested],
        oof[tested],
        inputs.task,
        xy[:, 0],
        xy[:, 1],
        {k: v[tested] for k, v in inputs.regions.items()},
        block_size_m=float(eval_config["block_size_m"]),
        n_boot=int(eval_config["n_boot"]),
        ci=float(eval_config["ci"]),
        seed=seed,
        min_n=int(eval_config["min_region_n"]),
    )


def identity_tags(config: Mapping[str, Any], inputs: RunInputs) -> dict[str, str]:
    """What a run or sweep is, as MLflow tags: model, scheme, task, seed, the data (name,
    fingerprint, CRS and the CRS distances are measured in), the positive class of a binary
    task, the code (commit, versions) and the CPU (:func:`~miso_bench.provenance.hardware_tags`:
    not part of what resumes a run, so a suite split between machines still reuses runs)."""
    tags = {
        "model": inputs.model,
        "cv": str(config["cv"]["name"]),
        "task": inputs.task.name,
        "seed": str(config["seed"]),
        "dataset": inputs.manifest.name,
        "dataset_fingerprint": inputs.fingerprint,
        "dataset_crs": inputs.manifest.crs,
        "distance_crs": inputs.frame.metric_crs,
        "git_commit": git_commit(),
        "code_version": code_version(),
        "version": __version__,
        **hardware_tags(),
    }
    if inputs.task.kind == "binary":
        task = inputs.task
        # The class's name as the prediction columns spell it (p/<name>), not str() of the
        # registered value (1 for pf1m, whose classes may read 1.0 or True).
        tags["positive_class"] = task.class_names[task.positive_index]
    return tags


def model_record(inputs: RunInputs, config: Mapping[str, Any], fold: str) -> dict[str, Any]:
    """What a saved model needs, besides its weights, to predict again."""
    from .data.grid import dataset_grid

    task = inputs.task
    return {
        "model": inputs.model,
        "fold": fold,
        "task": task.name,
        "label": task.label,
        "task_kind": task.kind,
        "classes": list(task.classes),
        "class_names": task.class_names,
        "n_classes": task.n_classes,
        "feature_columns": list(inputs.feature_columns),
        "window_px": inputs.window_px,
        "crs": inputs.manifest.crs,
        "metric_crs": inputs.frame.metric_crs,
        "grid": dataset_grid(inputs.manifest).to_dict(),
        "band_names": inputs.manifest.band_names,
        "dataset": inputs.manifest.name,
        "dataset_fingerprint": inputs.fingerprint,
        "seed": int(config["seed"]),
    }
