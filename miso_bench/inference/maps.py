"""Maps: a trained run turned into tiled Cloud-Optimised GeoTIFFs of any extent.

:func:`predict_map` (``miso-bench predict``) maps one tile, a bounding box, or every tile of a
dataset with a run's final model, one fold's model or all fold models (an ensemble whose
spread is the uncertainty). Each tile is predicted block by block in bounded memory:

- trees read every band with a margin around the block (through the same chip source as
  training, so a window mean at a tile border reads the neighbouring tile) and predict from the
  per-pixel features, which equal the point features at pixel centres;
- MISO decodes the block from the overlapping windows of a global lattice, blended with weights
  that favour window centres (:meth:`~miso_bench.models.miso.MisoModel.decode_region`); the same
  windows answer cross-validation and the truth sample, so the value at a pedon *is* the map's.

A pixel is mapped where every band the model reads is valid (models that read no band map
where any band is valid); elsewhere it keeps the declared no-data value. Beside the class and
probabilities each pixel gets an uncertainty (normalised entropy, or the fold models' spread
with ``--fold all``) and the area of applicability (:mod:`~miso_bench.inference.aoa`).

``--all`` is resumable: a tile whose outputs and record (``<tile>.json``) exist for the same
request is skipped; tiles are written under hidden names and renamed when complete. With
``--workers N`` or ``--scheduler ADDRESS`` tiles are Dask tasks (a LocalCluster by default),
each writing its own COG. On a dataset with a truth sample the written maps are read back at the
truth points and scored by region; everything is logged to the model's MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.features import (
    SPECTRAL_INDICES,
    extract_point_features,
    feature_table,
    window_feature_table,
)
from ..data.manifest import DatasetManifest, load_manifest
from ..errors import MisoBenchError
from ..evaluation.metrics import classification_metrics
from ..evaluation.regional import hard_labels
from ..evaluation.tasks import Task, resolve_task
from ..models import load_fitted
from .aoa import AOAReference
from .cog import CLASS_NODATA, TileWriter, class_colours, quicklook, write_vrt
from .predictor import Predictor

__all__ = ["MapResult", "Region", "TileJob", "dataset_tiles", "predict_map", "run_tile"]

#: Output pixels per block side (trees and the CPU MISO preset; wide embeddings use less).
BLOCK_PX = 512
#: Rows a tree model predicts at once.
TREE_CHUNK = 65536


@dataclass(frozen=True)
class Region:
    """A rectangle of the dataset grid: ``h x w`` pixels from global pixel ``(r0, c0)``."""

    name: str
    r0: int
    c0: int
    h: int
    w: int


def overlap_pixels(regions: Sequence[Region]) -> int:
    """Grid pixels that lie in two or more of ``regions`` (counted once each): per-tile pixel
    counts summed over overlapping tiles count these once per tile."""
    if len(regions) < 2:
        return 0
    rows = np.unique([v for r in regions for v in (r.r0, r.r0 + r.h)])
    cols = np.unique([v for r in regions for v in (r.c0, r.c0 + r.w)])
    cover = np.zeros((len(rows) - 1, len(cols) - 1), dtype=np.int32)
    for r in regions:
        i0, i1 = np.searchsorted(rows, [r.r0, r.r0 + r.h])
        j0, j1 = np.searchsorted(cols, [r.c0, r.c0 + r.w])
        cover[i0:i1, j0:j1] += 1
    cells = np.outer(np.diff(rows), np.diff(cols))
    return int(cells[cover >= 2].sum())


def _snap(grid: Any, xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[int, ...]:
    c0 = math.floor((xmin - grid.x0) / grid.res + 1e-6)
    c1 = math.ceil((xmax - grid.x0) / grid.res - 1e-6)
    r0 = math.floor((grid.y0 - ymax) / grid.res + 1e-6)
    r1 = math.ceil((grid.y0 - ymin) / grid.res - 1e-6)
    return r0, c0, r1 - r0, c1 - c0


def dataset_tiles(source: Any) -> list[Region]:
    """The tiles of a dataset: the files of its first modality (named by file stem), each
    snapped outward to the dataset grid (files in another CRS by their warped footprint)."""
    out: list[Region] = []
    seen: dict[str, int] = {}
    for f in source._files[0]:
        stem = Path(f.path).stem
        seen[stem] = seen.get(stem, 0) + 1
        name = stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"
        out.append(Region(name, *_snap(source.grid, *f.bounds)))
    return out


def bbox_region(source: Any, bbox: Sequence[float]) -> Region:
    """The grid pixels of ``xmin, ymin, xmax, ymax`` (dataset CRS)."""
    xmin, ymin, xmax, ymax = (float(v) for v in bbox)
    if not (xmax > xmin and ymax > ymin):
        raise MisoBenchError(
            f"--bbox {xmin:g},{ymin:g},{xmax:g},{ymax:g}: needs xmin < xmax and ymin < ymax "
            "(fix: give xmin,ymin,xmax,ymax in the dataset's CRS)"
        )
    ex = source.extent()
    if xmax <= ex[0] or xmin >= ex[2] or ymax <= ex[1] or ymin >= ex[3]:
        raise MisoBenchError(
            f"--bbox {xmin:g},{ymin:g},{xmax:g},{ymax:g} does not overlap the dataset "
            f"({ex[0]:g},{ex[1]:g},{ex[2]:g},{ex[3]:g} in {source.manifest.crs}) (fix: give "
            "the box in the dataset's CRS)"
        )
    r0, c0, h, w = _snap(source.grid, xmin, ymin, xmax, ymax)
    tag = hashlib.sha1(f"{r0},{c0},{h},{w}".encode()).hexdigest()[:8]
    return Region(f"bbox_{tag}", r0, c0, h, w)


# --- one model on the map path ------------------------------------------------------------
class MapModel:
    """A loaded model predicting blocks of the grid and giving its AOA predictors.

    Args:
        predictor: the loaded model.
        source: the dataset's chip source (shared by every model of a job).
    """

    def __init__(self, predictor: Predictor, source: Any) -> None:
        self.predictor = predictor
        self.source = source
        self.record = predictor.record
        self.kind = predictor.kind
        names = list(source.band_names)
        if self.kind == "chips":
            model = predictor.model.attach(source)
            read = [*model._s2_idx, *model._cov_idx, *getattr(model, "_cat_idx", [])]
            used = [model.band_names_[i] for i in sorted(set(read))]
        else:
            cols = set(self.record["feature_columns"])
            for index, (a, b) in SPECTRAL_INDICES.items():
                if index in cols:
                    cols |= {a, b}
            used = [b for b in names if b in cols]
        self.band_idx = [names.index(b) for b in used]
        self.used = used
        # Trees read the grid's windows when every file is on the grid (the fast path, equal
        # to the point features at pixel centres); otherwise they sample like the points do.
        self.all_aligned = all(f.aligned for files in source._files for f in files)
        self._sampled: tuple[tuple[int, int, int, int], pd.DataFrame] | None = None

    def _centres(self, r0: int, c0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        g = self.source.grid
        xs = g.x0 + (c0 + np.arange(w) + 0.5) * g.res
        ys = g.y0 - (r0 + np.arange(h) + 0.5) * g.res
        return xs, ys

    def _point_features(self, r0: int, c0: int, h: int, w: int) -> pd.DataFrame:
        """The point path's features at the block's pixel centres (trees with files off the
        grid), sampled once for the block's mask and its prediction."""
        key = (r0, c0, h, w)
        if self._sampled is None or self._sampled[0] != key:
            xs, ys = self._centres(r0, c0, h, w)
            gx, gy = np.meshgrid(xs, ys)
            frame = feature_table(
                self.source.manifest,
                gx.ravel(),
                gy.ravel(),
                window_px=int(self.record["window_px"]),
            )
            self._sampled = (key, frame)
        return self._sampled[1]

    def mask(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        """``(h, w)`` True where the model maps (every band it reads is valid there)."""
        if self.kind != "chips" and not self.all_aligned and self.used:
            # Validity from the samples the features come from: GDAL's warp (the chip
            # source) approximates the transform and can disagree at a file's no-data edge.
            if int(self.record["window_px"]) == 1:
                centre = self._point_features(r0, c0, h, w)[self.used]
            else:
                xs, ys = self._centres(r0, c0, h, w)
                gx, gy = np.meshgrid(xs, ys)
                centre = extract_point_features(self.source.manifest, gx.ravel(), gy.ravel())
                centre = centre[self.used]
            return centre.notna().all(axis=1).to_numpy().reshape(h, w)
        raw = self.source.raw_window(r0, c0, h, w)
        if self.band_idx:
            return bool_all(~np.isnan(raw[self.band_idx]))
        return (~np.isnan(raw)).any(axis=0)

    def predict_block(
        self, r0: int, c0: int, h: int, w: int, stride: int | None, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(K, h, w)`` and AOA predictors ``(h * w, d)`` of a block."""
        if self.kind == "chips":
            probs, emb = self.predictor.model.decode_region(
                r0, c0, h, w, stride=stride, batch_size=batch_size, embed=True
            )
            return probs, emb.reshape(emb.shape[0], -1).T
        window = int(self.record["window_px"])
        k = window // 2
        xs, ys = self._centres(r0, c0, h, w)
        if self.all_aligned:
            raw = self.source.raw_window(r0 - k, c0 - k, h + 2 * k, w + 2 * k)
            frame = window_feature_table(
                self.source.manifest, raw, list(self.source.band_names), window, xs, ys
            )[self.record["feature_columns"]]
        else:
            # Files off the grid (another CRS or resolution) are sampled at each pixel centre
            # exactly as the training features were (not warped): the point path itself.
            frame = self._point_features(r0, c0, h, w)[self.record["feature_columns"]]
        parts = [
            self.predictor.model.predict_proba(frame.iloc[s : s + TREE_CHUNK])
            for s in range(0, len(frame), TREE_CHUNK)
        ]
        probs = np.concatenate(parts).T.reshape(-1, h, w).astype(np.float32)
        return probs, frame.to_numpy(dtype=np.float64)

    def point_predictors(
        self, manifest: DatasetManifest, x: np.ndarray, y: np.ndarray, stride: int | None = None
    ) -> Any:
        """AOA predictors ``(n, d)`` at points, from the same path as the map."""
        if self.kind == "chips":
            X = pd.DataFrame({"coord_x": x, "coord_y": y})
            _, emb = self.predictor.model.predict_points(X, stride=stride, embed=True)
            return emb
        feats = feature_table(manifest, x, y, window_px=int(self.record["window_px"]))
        return feats[self.record["feature_columns"]].to_numpy(dtype=np.float64)

    def predictor_width(self) -> int:
        """Columns of the AOA predictors (MISO: its embedding width)."""
        if self.kind == "chips":
            return int(self.predictor.model.net_.cfg.dim)
        return len(self.record["feature_columns"])

    def importance(self) -> np.ndarray | None:
        """Predictor weights for the AOA: the trees' feature importances (None: equal)."""
        model = self.predictor.model
        inner = getattr(model, "forest_", None) or getattr(model, "booster_", None)
        values = getattr(inner, "feature_importances_", None)
        if values is None:
            return None
        values = np.asarray(values, dtype=np.float64)
        if len(values) != len(self.record["feature_columns"]) or not values.sum() > 0:
            return None
        return values


def bool_all(a: np.ndarray) -> np.ndarray:
    """``a.all(axis=0)`` (kept apart for typing)."""
    return np.asarray(a.all(axis=0))


# --- one tile -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TileJob:
    """Everything a worker needs to map one tile (plain data: Dask ships it)."""

    region: Region
    out_dir: str
    data: str
    model_folders: tuple[str, ...]
    aoa_files: tuple[str, ...]
    task: dict[str, Any]
    key: str
    stride: int | None
    batch_size: int
    probabilities: bool
    cache_mb: float
    quicklooks: bool = True
    tags: dict[str, str] = field(default_factory=dict)


_LOADED: dict[tuple[str, ...], tuple[Any, list[MapModel], list[AOAReference]]] = {}


def _models_for(job: TileJob) -> tuple[Any, list[MapModel], list[AOAReference]]:
    """Models, chip source and AOA references of a job (kept for the next tile)."""
    key = (job.data, *job.model_folders, *job.aoa_files, str(job.cache_mb))
    if key not in _LOADED:
        from ..data.chips import ChipSource

        _LOADED.clear()
        manifest = load_manifest(job.data)
        source = ChipSource(manifest, cache_mb=job.cache_mb)
        models = []
        for folder in job.model_folders:
            model, record = load_fitted(folder)
            models.append(MapModel(Predictor(model, record, folder=Path(folder)), source))
        refs = [AOAReference.load(p) for p in job.aoa_files]
        _LOADED[key] = (source, models, refs)
    return _LOADED[key]


def _task_of(job_task: dict[str, Any]) -> Task:
    return Task(**{**job_task, "classes": tuple(job_task["classes"])})


def stat_band_names(task: Task, probabilities: bool) -> list[str]:
    """Descriptions of the float32 bands of a tile."""
    # The scored class as its ``p/<class>`` metric and probability band spell it
    # (classes [False, True] give ``p_True``, not the registered ``1``).
    positive = [f"p_{task.class_names[task.positive_index]}"]
    names = positive if task.kind == "binary" else ["p_mapped"]
    if probabilities:
        names += [f"p_{c}" for c in task.class_names]
    return [*names, "uncertainty", "di", "aoa"]


def tile_paths(out_dir: Path, name: str) -> dict[str, Path]:
    """The files of one tile."""
    return {
        "class": out_dir / f"{name}.class.tif",
        "stats": out_dir / f"{name}.stats.tif",
        "record": out_dir / f"{name}.json",
        "quicklook": out_dir / f"{name}.png",
    }


def _record_key(out_dir: Path, name: str) -> str | None:
    path = tile_paths(out_dir, name)["record"]
    if not path.is_file():
        return None
    return str(json.loads(path.read_text()).get("key"))


def tile_done(out_dir: Path, name: str, key: str) -> bool:
    """True when a tile's outputs are complete for this request.

    Raises:
        MisoBenchError: the tile was mapped for another request (run, fold, stride...).
    """
    paths = tile_paths(out_dir, name)
    if not paths["record"].is_file():
        return False
    record = json.loads(paths["record"].read_text())
    if record.get("key") != key:
        raise MisoBenchError(
            f"{out_dir}: tile {name} there was mapped by another request (run "
            f"{record.get('run_id')}, fold {record.get('fold')}; a different run, fold, "
            "dataset, --stride-px or --probabilities gives a different request) (fix: give "
            "another --out, or delete the folder to map again)"
        )
    return paths["class"].is_file() and paths["stats"].is_file()


def run_tile(job: TileJob, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Map one tile: blocks predicted, blended, written; COGs published; a record written.

    Returns the tile's record (pixel counts, class counts, seconds).
    """
    start = time.perf_counter()
    out_dir = Path(job.out_dir)
    region = job.region
    source, models, refs = _models_for(job)
    task = _task_of(job.task)
    k = task.n_classes
    paths = tile_paths(out_dir, region.name)
    bands = stat_band_names(task, job.probabilities)
    g = source.grid
    from rasterio.transform import Affine

    transform = Affine(g.res, 0.0, g.x0 + region.c0 * g.res, 0.0, -g.res, g.y0 - region.r0 * g.res)
    writer = TileWriter(
        paths["class"],
        paths["stats"],
        source.manifest.crs,
        transform,
        region.h,
        region.w,
        task.class_names,
        bands,
        job.tags,
    )
    widest = max(m.predictor_width() for m in models)
    block = BLOCK_PX if widest <= 256 else BLOCK_PX // 2  # (dim, block, block) float32
    counts = np.zeros(k, dtype=np.int64)
    n_mapped = n_inside = 0
    try:
        for br in range(0, region.h, block):
            for bc in range(0, region.w, block):
                h, w = min(block, region.h - br), min(block, region.w - bc)
                r0, c0 = region.r0 + br, region.c0 + bc
                mapped = np.zeros((h, w), dtype=bool)
                for m in models:
                    mapped |= m.mask(r0, c0, h, w)
                classes = np.full((h, w), CLASS_NODATA, dtype=np.uint8)
                stats = np.full((len(bands), h, w), np.nan, dtype=np.float32)
                if mapped.any():
                    probs, dis, inside = [], [], []
                    for m, ref in zip(models, refs, strict=True):
                        p, pred = m.predict_block(r0, c0, h, w, job.stride, job.batch_size)
                        probs.append(p)
                        sel = mapped.ravel()
                        di = np.full(h * w, np.nan)
                        di[sel] = ref.di(pred[sel])
                        dis.append(di.reshape(h, w))
                        inside.append(
                            di.reshape(h, w) <= ref.threshold
                            if np.isfinite(ref.threshold)
                            else np.full((h, w), np.nan)
                        )
                    stack = np.stack(probs)  # (M, K, h, w)
                    mean = stack.mean(axis=0)
                    flat = mean.reshape(k, -1).T
                    labels = hard_labels(flat, task).reshape(h, w)
                    if len(models) == 1:
                        with np.errstate(divide="ignore", invalid="ignore"):
                            ent = -np.nansum(np.where(mean > 0, mean * np.log(mean), 0.0), axis=0)
                        unc = ent / math.log(k)
                    else:
                        picked = np.take_along_axis(stack, labels[None, None], axis=1)[:, 0]
                        unc = picked.std(axis=0)
                    first = (
                        mean[task.classes.index(task.positive_class)]
                        if task.kind == "binary"
                        else np.take_along_axis(mean, labels[None], axis=0)[0]
                    )
                    layers = [first]
                    if job.probabilities:
                        layers += list(mean)
                    di_all = np.max(np.stack(dis), axis=0)
                    stacked = np.stack(inside).astype(np.float32)  # 1, 0 or NaN (no threshold)
                    aoa = np.where(
                        np.isnan(stacked).any(axis=0), np.nan, stacked.min(axis=0)
                    ).astype(np.float32)
                    layers += [unc, di_all, aoa]
                    values = np.stack(layers).astype(np.float32)
                    stats[:, mapped] = values[:, mapped]
                    stats[-1][mapped & ~np.isfinite(di_all)] = np.nan
                    classes[mapped] = labels[mapped].astype(np.uint8)
                    counts += np.bincount(labels[mapped], minlength=k)[:k]
                    n_mapped += int(mapped.sum())
                    n_inside += int((aoa[mapped] == 1).sum())
                writer.write(br, bc, classes, stats)
                if progress is not None:
                    progress(h * w)
        writer.publish()
    except BaseException:
        writer.close()
        raise
    if job.quicklooks:
        quicklook(
            paths["class"],
            paths["stats"],
            paths["quicklook"],
            task.class_names,
            f"{region.name}: {job.tags.get('model', '')} {task.name}",
        )
    record = {
        "key": job.key,
        "run_id": job.tags.get("run_id", ""),
        "fold": job.tags.get("fold", ""),
        "region": asdict(region),
        "pixels": region.h * region.w,
        "mapped_pixels": n_mapped,
        "aoa_inside_pixels": n_inside,
        "class_pixels": {c: int(n) for c, n in zip(task.class_names, counts, strict=True)},
        "seconds": time.perf_counter() - start,
    }
    tmp = out_dir / f".{region.name}.json.partial"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, paths["record"])
    return record


# --- the request --------------------------------------------------------------------------
@dataclass
class MapResult:
    """What :func:`predict_map` produced."""

    out_dir: Path
    tiles: list[str]
    skipped: list[str]
    records: list[dict[str, Any]]
    truth: pd.DataFrame | None
    seconds: float
    logged_to: str = ""
    overlap_pixels: int = 0

    @property
    def pixels_per_second(self) -> float:
        px = sum(r["pixels"] for r in self.records if r["region"]["name"] not in self.skipped)
        spent = sum(r["seconds"] for r in self.records if r["region"]["name"] not in self.skipped)
        return px / spent if spent > 0 else float("nan")


def _aoa_reference(
    model: MapModel,
    manifest: DatasetManifest,
    oof: pd.DataFrame,
    fold: str,
    seed: int,
    stride: int | None,
    say: Callable[[str], None],
) -> AOAReference:
    """The AOA reference of a model: the pedons it was fitted on (recorded with the model;
    for models saved without that record, all pedons for ``final`` and the other folds' for a
    fold model, said so), their predictors on the map path and their CV folds."""
    fit_ids = model.record.get("fit_ids")
    ids = oof["id"].astype(str)
    if fit_ids is not None:
        table = oof[ids.isin(set(map(str, fit_ids)))]
    else:
        table = oof if fold == "final" else oof[oof["fold"].astype(str) != str(fold)]
        say(
            "note: this model was saved without its fitted pedons; the area of applicability "
            "takes " + ("every pedon" if fold == "final" else f"the pedons outside fold {fold}")
        )
    x, y = table["x"].to_numpy(np.float64), table["y"].to_numpy(np.float64)
    X = model.point_predictors(manifest, x, y, stride)
    return AOAReference.fit(X, table["fold"].to_numpy(), model.importance(), seed=seed)


def _request_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _clean_partials(out_dir: Path) -> int:
    n = 0
    for p in out_dir.glob(".*.partial*"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def sample_tiles(files: Sequence[Path], x: np.ndarray, y: np.ndarray, crs: str) -> np.ndarray:
    """Values ``(n, bands)`` of map tiles at points (the first tile holding a valid value
    wins; NaN on no-data and off every tile), read block by block."""
    from ..data.features import _file_values
    from .cog import read_band_count

    out: np.ndarray | None = None
    for path in files:
        n_bands = read_band_count(path)
        if out is None:
            out = np.full((len(x), n_bands), np.nan)
        todo = np.flatnonzero(np.isnan(out).all(axis=1))
        if todo.size == 0:
            break
        idx, vals = _file_values(str(path), x[todo], y[todo], crs, 1, None, n_bands, "map")
        if idx.size:
            rows = todo[idx]
            current = out[rows]
            empty = np.isnan(current)
            current[empty] = vals[:, :, 0][empty]
            out[rows] = current
    return out if out is not None else np.full((len(x), 1), np.nan)


def score_maps(
    class_files: Sequence[Path],
    stats_files: Sequence[Path],
    manifest: DatasetManifest,
    task: Task,
) -> pd.DataFrame | None:
    """The written maps read back at the truth sample, scored overall and by region.

    Returns rows ``layer, region, metric, value, n`` (None without a truth sample); points on
    the maps' no-data or off the mapped tiles are left out and counted (``n_unmapped``).
    """
    from ..data.pedons import read_truth, truth_targets
    from ..data.regions import load_regions

    if not manifest.truth_file or not class_files:
        return None
    raw = read_truth(manifest)
    if raw is None or task.label not in raw.columns:
        return None
    raw, target = truth_targets(raw, task.label, task.classes)  # as the runs read it
    x, y = raw["x"].to_numpy(np.float64), raw["y"].to_numpy(np.float64)
    cls = sample_tiles(class_files, x, y, manifest.crs)[:, 0]
    mapped = np.isfinite(cls)
    labels = np.where(mapped, cls, 0).astype(np.int64)
    if task.kind == "binary":
        p = sample_tiles(stats_files, x, y, manifest.crs)[:, 0]
        pos = task.classes.index(task.positive_class)
        proba = np.zeros((len(x), 2))
        proba[:, pos], proba[:, 1 - pos] = p, 1 - p
        keep: set[str] | None = None
    else:
        proba = np.eye(task.n_classes)[labels]
        keep = {"macro_f1", "accuracy", "balanced_accuracy", "kappa", "weighted_f1"}
    layers: dict[str, np.ndarray] = {"overall": np.full(len(x), "overall", dtype=object)}
    for name, layer in load_regions(manifest).items():
        layers[name] = layer.assign(x, y)
    rows: list[tuple[str, str, str, float, int]] = []
    for layer_name, names in layers.items():
        for region in sorted({str(v) for v in names[mapped]}):
            sel = mapped & (names.astype(str) == region)
            m = classification_metrics(target[sel], proba[sel], task)
            for metric, value in m.items():
                if (keep is None or metric in keep) and "/" not in metric:
                    rows.append((layer_name, region, metric, float(value), int(sel.sum())))
    rows.append(("overall", "overall", "n_unmapped", float((~mapped).sum()), len(x)))
    return pd.DataFrame(rows, columns=["layer", "region", "metric", "value", "n"])


def predict_map(
    run_id: str,
    out: str | Path,
    *,
    fold: str | None = None,
    data: str | Path | None = None,
    tiles: Sequence[str] = (),
    bbox: Sequence[float] | None = None,
    all_tiles: bool = False,
    stride_px: int | None = None,
    batch_size: int = 16,
    probabilities: bool = False,
    workers: int = 1,
    scheduler: str | None = None,
    cache_mb: float = 1024.0,
    tracking_uri: str | None = None,
    log: bool = True,
    quicklooks: bool = True,
    say: Callable[[str], None] = print,
    show_progress: bool = True,
) -> MapResult:
    """Map a run (see the module docstring; ``miso-bench predict`` is this function).

    Args:
        run_id: the run (parent) id, or a fold's / the final model's run id.
        out: the output folder (created; reused to resume).
        fold: ``final`` (the default), a fold number, or ``all`` (every fold model,
            averaged); a fold's or the final model's own run id implies its fold.
        data: the dataset to map (default: the run's own).
        tiles, bbox, all_tiles: what to map: tile ids (file stems of the first modality), a
            box ``xmin, ymin, xmax, ymax`` in the dataset CRS, or every tile. Exactly one.
        stride_px: MISO's window stride (default: half a chip).
        batch_size: MISO windows encoded together.
        probabilities: also write one probability band per class.
        workers: Dask worker processes (1 = in this process).
        scheduler: a Dask scheduler address (a running cluster); overrides ``workers``.
        cache_mb: each worker's chip-source block cache.
        tracking_uri: the MLflow store.
        log: log the outputs and map-truth metrics to the model's MLflow run.
        quicklooks: write a PNG per tile.

    Raises:
        MisoBenchError: bad arguments, unknown tiles, a folder of another request.
    """
    from tqdm.auto import tqdm

    from ..data.chips import ChipSource
    from ..engine import prepare_dataset
    from ..tracking import download_run_artifact, run_tags
    from .predictor import load_model

    started = time.perf_counter()
    chosen = sum([bool(tiles), bbox is not None, bool(all_tiles)])
    if chosen != 1:
        raise MisoBenchError("give exactly one of --tile, --bbox or --all")
    if workers < 1:
        raise MisoBenchError(f"--workers must be 1 or more, got {workers}")
    tags_of_run = run_tags(run_id, tracking_uri)
    parent_id = tags_of_run.get("mlflow.parentRunId", run_id)
    if tags_of_run.get("run_level") in ("fold", "final"):
        own = str(tags_of_run.get("fold"))
        if fold is not None and str(fold) != own:
            raise MisoBenchError(
                f"--run {run_id} is the model of fold {own}, not --fold {fold} (fix: give the "
                "parent run's id with --fold, or leave --fold out)"
            )
        fold = own
    fold = "final" if fold is None else str(fold)
    parent_tags = run_tags(parent_id, tracking_uri)
    n_folds = int(parent_tags.get("n_folds", "0") or 0)
    if fold == "all":
        if n_folds < 1:
            raise MisoBenchError(f"run {parent_id} records no folds (tag n_folds)")
        folds = [str(f) for f in range(n_folds)]
    else:
        folds = [str(fold)]
    predictors = [load_model(parent_id, fold=f, tracking_uri=tracking_uri) for f in folds]
    cache = Path(predictors[0].folder or ".").parent
    config_path = download_run_artifact(parent_id, "config.yaml", cache, tracking_uri)
    from ..config import read_yaml

    config = read_yaml(config_path, "a run config")
    # The AOA reference is built from the training pedons on the run's own dataset; the map
    # may be of another dataset with the same bands, CRS and grid (--data).
    if data is None:
        manifest = train_manifest = prepare_dataset(config, say)
    else:
        manifest = load_manifest(data)
        try:
            train_manifest = prepare_dataset(config, say)
        except (MisoBenchError, OSError) as exc:
            train_manifest = manifest
            say(
                f"note: the run's own dataset is not readable here ({exc}); the area of "
                f"applicability reads the training pedons' predictors on {manifest.path}"
            )
    for p in predictors:
        p._manifest(manifest)  # the model's CRS and bands are in this dataset
    record = predictors[0].record
    # The classes and their order are the model's (its probability columns), not the mapped
    # dataset's: a dataset listing the label's classes otherwise is refused.
    task = resolve_task(str(record["task"]), {str(record["label"]): tuple(record["classes"])})
    theirs = manifest.pedons.labels.get(str(record["label"]))
    if theirs is not None and [str(c) for c in theirs.classes] != task.class_names:
        raise MisoBenchError(
            f"{manifest.path}: label {record['label']} lists classes "
            f"{[str(c) for c in theirs.classes]}; the model predicts {task.class_names} "
            "(fix: list the model's classes in the same order)"
        )
    source = ChipSource(manifest, cache_mb=cache_mb)
    available = dataset_tiles(source)
    if all_tiles:
        regions = available
    elif bbox is not None:
        regions = [bbox_region(source, bbox)]
    else:
        by_name = {r.name: r for r in available}
        unknown = [t for t in tiles if t not in by_name]
        if unknown:
            shown = ", ".join(sorted(by_name)[:8]) + (" ..." if len(by_name) > 8 else "")
            raise MisoBenchError(
                f"--tile {unknown[0]}: no such tile in {manifest.path} (tiles are the file "
                f"names of its `{next(iter(manifest.modalities))}` files: {shown})"
            )
        regions = [by_name[t] for t in tiles]
    out_dir = Path(out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if stride_px is not None and predictors[0].kind == "chips":
        predictors[0].model.map_stride(stride_px)  # validated before any work
    key = _request_key(
        {
            "runs": [p.run_id for p in predictors],
            "data": str(manifest.path),
            "stride": stride_px,
            "probabilities": probabilities,
        }
    )
    stale = _clean_partials(out_dir)
    if stale:
        say(f"Removed {stale} partial file(s) of an interrupted run in {out_dir}")
    todo = [r for r in regions if not tile_done(out_dir, r.name, key)]
    skipped = [r.name for r in regions if r not in todo]
    if skipped:
        say(f"Resuming: {len(skipped)} of {len(regions)} tile(s) already mapped, skipped")

    # The AOA references: computed once per request, shared by every worker.
    aoa_dir = out_dir / ".aoa"
    aoa_dir.mkdir(exist_ok=True)
    aoa_files = []
    oof: pd.DataFrame | None = None
    for p, f in zip(predictors, folds, strict=True):
        path = aoa_dir / f"{p.run_id}-{key}.npz"  # per model, stride and dataset
        if not path.is_file():
            if oof is None:
                oof_path = download_run_artifact(
                    parent_id, "oof_predictions.parquet", cache, tracking_uri
                )
                oof = pd.read_parquet(oof_path)
            say(f"Area of applicability: predictors of {len(oof):,} training pedons (fold {f})")
            train_source = (
                source
                if train_manifest.path == manifest.path
                else ChipSource(train_manifest, cache_mb=cache_mb)
            )
            ref = _aoa_reference(
                MapModel(p, train_source),
                train_manifest,
                oof,
                f,
                int(config["seed"]),
                stride_px,
                say,
            )
            if not np.isfinite(ref.threshold):
                say(
                    "note: the run has a single test fold (a holdout): the dissimilarity index "
                    "is written, the area of applicability band is left empty (no CV "
                    "threshold)"
                )
            ref.save(path)
        aoa_files.append(str(path))
    folders = tuple(str(p.folder) for p in predictors)
    tags = {
        "run_id": parent_id,
        "fold": str(fold),
        "model": str(record["model"]),
        "task": task.name,
        "dataset": manifest.name,
        "miso_bench_product": "map",
    }
    job_task = {**asdict(task), "classes": list(task.classes)}
    jobs = [
        TileJob(
            r,
            str(out_dir),
            str(manifest.path),
            folders,
            tuple(aoa_files),
            job_task,
            key,
            stride_px,
            batch_size,
            probabilities,
            cache_mb,
            quicklooks,
            tags,
        )
        for r in todo
    ]
    records: dict[str, dict[str, Any]] = {}
    total_px = sum(r.h * r.w for r in todo)
    if jobs and scheduler is None and workers == 1:
        with tqdm(
            total=total_px,
            unit="px",
            unit_scale=True,
            desc=f"mapping {len(jobs)} tile(s)",
            disable=not show_progress,
        ) as bar:
            for job in jobs:
                records[job.region.name] = run_tile(job, bar.update)
    elif jobs:
        records.update(_run_dask(jobs, workers, scheduler, show_progress))
    for r in regions:
        if r.name not in records:
            records[r.name] = json.loads(tile_paths(out_dir, r.name)["record"].read_text())

    # The mosaic: every tile of this request in the folder.
    done = [r for r in available if _record_key(out_dir, r.name) == key]
    if bbox is not None:
        done = regions
    class_files = [tile_paths(out_dir, r.name)["class"] for r in done]
    stats_files = [tile_paths(out_dir, r.name)["stats"] for r in done]
    write_vrt(
        out_dir / "class.vrt",
        class_files,
        ["class"],
        "uint8",
        CLASS_NODATA,
        class_colours(task.class_names),
    )
    write_vrt(
        out_dir / "stats.vrt",
        stats_files,
        stat_band_names(task, probabilities),
        "float32",
        float("nan"),
    )
    if quicklooks:
        _mosaic_quicklook(out_dir, done, task, f"{record['model']} {task.name} ({len(done)} tiles)")
    truth = score_maps(class_files, stats_files, manifest, task)
    if truth is not None:
        truth.to_csv(out_dir / "map_truth_by_region.csv", index=False)
    overlap = overlap_pixels(regions)
    summary = {
        "run_id": parent_id,
        "fold": str(fold),
        "model_runs": [p.run_id for p in predictors],
        "dataset": str(manifest.path),
        "tiles": [r.name for r in regions],
        "skipped": skipped,
        "stride_px": stride_px,
        # Sums over tiles: a pixel in k overlapping tiles counts k times (overlap_pixels).
        "pixels": int(sum(records[r.name]["pixels"] for r in regions)),
        "overlap_pixels": overlap,
        "mapped_pixels": int(sum(records[r.name]["mapped_pixels"] for r in regions)),
        "aoa_inside_pixels": int(sum(records[r.name]["aoa_inside_pixels"] for r in regions)),
        "seconds": time.perf_counter() - started,
    }
    tmp = out_dir / ".summary.json.partial"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out_dir / "summary.json")
    result = MapResult(
        out_dir,
        [r.name for r in regions],
        skipped,
        [records[r.name] for r in regions],
        truth,
        time.perf_counter() - started,
        overlap_pixels=overlap,
    )
    if log:
        result.logged_to = _log_to_mlflow(
            predictors, parent_id, fold, out_dir, truth, task, summary, tracking_uri
        )
    return result


def _mosaic_quicklook(out_dir: Path, done: Sequence[Region], task: Task, title: str) -> None:
    """``quicklook.png``: the class maps of up to 16 tiles side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    shown = list(done)[:16]
    if not shown:
        return
    n = len(shown)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows + 0.8), squeeze=False)
    colours = np.array(class_colours(task.class_names)) / 255.0
    for ax, r in zip(axes.ravel(), shown, strict=False):
        with rasterio.open(tile_paths(out_dir, r.name)["class"]) as src:
            f = max(1, math.ceil(max(src.width, src.height) / 400))
            data = src.read(
                1, out_shape=(max(1, src.height // f), max(1, src.width // f)), masked=True
            )
        ax.imshow(
            np.ma.masked_equal(np.ma.filled(data, CLASS_NODATA), CLASS_NODATA),
            cmap=ListedColormap(colours),
            vmin=-0.5,
            vmax=len(colours) - 0.5,
            interpolation="nearest",
        )
        ax.set_title(r.name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(
        handles=[Patch(color=c, label=nm) for c, nm in zip(colours, task.class_names, strict=True)],
        loc="lower center",
        ncol=min(len(colours), 7),
        fontsize=8,
    )
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    tmp = out_dir / ".quicklook.partial.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out_dir / "quicklook.png")


def _run_dask(
    jobs: list[TileJob], workers: int, scheduler: str | None, show_progress: bool
) -> dict[str, dict[str, Any]]:
    """One Dask task per tile (a LocalCluster of ``workers`` processes, or a cluster)."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - a dependency
        raise MisoBenchError(
            "Dask is not installed (fix: pip install 'dask[distributed]')"
        ) from exc
    import shutil
    import tempfile

    from tqdm.auto import tqdm

    cluster = None
    scratch = None
    if scheduler is None:
        # One single-threaded worker process per tile task (Dask sets OMP/BLAS threads to 1);
        # its spill folder is removed afterwards.
        scratch = tempfile.mkdtemp(prefix="miso-bench-dask-")
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
            local_directory=scratch,
        )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout=10)
        except OSError as exc:
            raise MisoBenchError(
                f"--scheduler {scheduler}: no Dask scheduler answers there ({exc}) (fix: start "
                "one with `dask scheduler`, or leave --scheduler out for a local cluster)"
            ) from exc
    out: dict[str, dict[str, Any]] = {}
    try:
        futures = client.map(
            run_tile, jobs, pure=False, key=[f"tile-{j.region.name}-{j.key}" for j in jobs]
        )
        with tqdm(total=len(jobs), unit="tile", desc="mapping", disable=not show_progress) as bar:
            for future in as_completed(futures):
                record = future.result()
                out[record["region"]["name"]] = record
                bar.update(1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return out


def _log_to_mlflow(
    predictors: list[Predictor],
    parent_id: str,
    fold: str,
    out_dir: Path,
    truth: pd.DataFrame | None,
    task: Task,
    summary: dict[str, Any],
    tracking_uri: str | None,
) -> str:
    """Quicklooks, the summary and the map-truth metrics on the model's run (the parent run
    for an ensemble of folds)."""
    from ..registry import slugify
    from ..tracking import log_to_run

    target = predictors[0].run_id if len(predictors) == 1 else parent_id
    folder = f"maps/{out_dir.name}"
    files: list[tuple[str | Path, str]] = [(out_dir / "summary.json", folder)]
    for name in ("quicklook.png", "map_truth_by_region.csv"):
        if (out_dir / name).is_file():
            files.append((out_dir / name, folder))
    for png in sorted(out_dir.glob("*.png"))[:32]:
        if png.name != "quicklook.png":
            files.append((png, f"{folder}/tiles"))
    metrics: dict[str, float] = {}
    if truth is not None:
        for row in truth.itertuples():
            if row.layer == "overall":
                metrics[f"map/overall/{row.metric}"] = float(row.value)
            elif row.metric == task.primary_metric:
                metrics[f"map/{row.layer}/{slugify(str(row.region))}/{row.metric}"] = float(
                    row.value
                )
    log_to_run(
        target, files=files, metrics=metrics, tags={"map_dir": str(out_dir)}, uri=tracking_uri
    )
    return target
