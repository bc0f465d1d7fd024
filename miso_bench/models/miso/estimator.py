"""MISO as a scikit-learn-style estimator that the benchmark runner drives like the trees.

The runner passes, per fold, a feature table whose rows are pedons (index: pedon id,
columns ``coord_x``/``coord_y``) and the labels; before ``fit`` it calls :meth:`bind` with the
dataset (and the coordinates of the test fold, used *only* to keep unlabelled chips away
from the test area). The estimator cuts chips around the pedons, trains with the inner
validation split for model selection, and predicts pedons with centred chips
(:meth:`predict_proba`) or many points per chip through the implicit decoder
(:meth:`predict_points`, used for the truth sample and maps).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import f1_score

from ...data.chips import (
    FootprintCache,
    GridSpec,
    PedonChipDataset,
    band_fill,
    grid_of,
    valid_pixels,
)
from ...data.manifest import DatasetManifest, load_manifest
from ...data.normalization import Normalizer, compute_band_stats
from ...data.rasters import open_stack
from ...errors import MisoBenchError
from ...training import TrainConfig, fit_module
from ...training.distributed import device_count, launch, process_group, shard
from .backbones import find_satlas_weights, load_satlas_state_dict, satlas_normalize
from .location import normalize_3338
from .losses import MisoLoss
from .network import MisoConfig, MisoNet

__all__ = ["PRESETS", "MisoModel", "resolve_preset"]

#: Architecture and schedule presets. ``cpu`` is the paper's architecture at smaller width,
#: depth and chip size (chosen automatically without a GPU); ``paper`` is Swin-V2-B at 256 px.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "embed_dim": 48,
        "depths": (2, 2, 2, 2),
        "num_heads": (3, 6, 12, 24),
        "window": 4,
        "dim": 128,
        "cov_encoder": "cnn",
        "cov_width": 32,
        "chip_size_px": 32,
        "batch_size": 32,
        "epochs": 10,
        "lr": 5e-4,
        "patience": 5,
        "unlabeled_ratio": 0.1,
    },
    "paper": {
        "embed_dim": 128,
        "depths": (2, 2, 18, 2),
        "num_heads": (4, 8, 16, 32),
        "window": 8,
        "dim": 1024,
        "cov_encoder": "swin",
        "cov_width": 32,
        "chip_size_px": 256,
        "batch_size": 32,
        "epochs": 40,
        "lr": 5e-5,
        "patience": 11,
        "unlabeled_ratio": 0.5,
    },
}


def resolve_preset(preset: str) -> str:
    """``auto`` -> ``paper`` with a GPU, ``cpu`` without."""
    if preset == "auto":
        return "paper" if torch.cuda.is_available() else "cpu"
    if preset not in PRESETS:
        raise MisoBenchError(f"unknown MISO preset {preset!r}; use auto, cpu or paper")
    return preset


class MisoModel(ClassifierMixin, BaseEstimator):
    """The MISO model family (see :mod:`miso_bench.models.miso.network`).

    Args:
        n_classes: classes of the task (2 = binary, one logit).
        random_state: seed.
        preset: ``auto``, ``cpu`` or ``paper`` (architecture, chip size, schedule).
        decoder: ``dual``, ``naive``, ``attn``, ``visual_only`` or ``geo_only``.
        query: ``implicit`` (INR) or ``center`` (ablation: chip-centre features only).
        use_cov: use the terrain + climate covariates (second encoder).
        location: ``gridcell`` or ``theory`` location encoding; n_freq its frequencies.
        aux: auxiliary losses and weights (``geo``, ``sat_cov_nce``, ``visual_geo_nce``).
        temperature: InfoNCE temperature.
        pretrained: ``auto`` (Satlas weights when found locally), ``none``, or a file path.
        unlabeled_ratio: extra unlabelled chips per labelled chip (contrastive terms only;
            ``None`` = the preset's: 0.5 as in the reference for ``paper``, 0.1 for ``cpu``).
        n_random_queries, grid_queries: pseudo queries per chip (random; grid side).
        jitter_frac: chip jitter as a share of the chip size (training only).
        epochs, batch_size, lr, patience, chip_size_px: override the preset.
        backbone_lr_mult: learning-rate multiplier of the image encoders.
        class_weighting: ``none`` or ``sqrt_inverse`` class weights.
        device: ``auto``, ``cpu`` or ``cuda``.
        devices: processes training data-parallel (one per GPU; on CPU, each gets a share
            of the cores); ``-1`` = every visible GPU. ``batch_size`` is the global batch.
    """

    needs_validation = True

    def __init__(
        self,
        n_classes: int = 2,
        random_state: int = 0,
        preset: str = "auto",
        decoder: str = "dual",
        query: str = "implicit",
        use_cov: bool = True,
        location: str = "gridcell",
        n_freq: int = 32,
        aux: dict[str, float] | None = None,
        temperature: float = 0.1,
        pretrained: str = "auto",
        unlabeled_ratio: float | None = None,
        n_random_queries: int = 8,
        grid_queries: int = 3,
        jitter_frac: float = 0.25,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        patience: int | None = None,
        chip_size_px: int | None = None,
        backbone_lr_mult: float = 1.0,
        class_weighting: str = "sqrt_inverse",
        device: str = "auto",
        devices: int = 1,
    ) -> None:
        self.n_classes = n_classes
        self.random_state = random_state
        self.preset = preset
        self.decoder = decoder
        self.query = query
        self.use_cov = use_cov
        self.location = location
        self.n_freq = n_freq
        self.aux = aux
        self.temperature = temperature
        self.pretrained = pretrained
        self.unlabeled_ratio = unlabeled_ratio
        self.n_random_queries = n_random_queries
        self.grid_queries = grid_queries
        self.jitter_frac = jitter_frac
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.chip_size_px = chip_size_px
        self.backbone_lr_mult = backbone_lr_mult
        self.class_weighting = class_weighting
        self.device = device
        self.devices = devices

    # --- data ---------------------------------------------------------------------------
    def bind(
        self,
        manifest: DatasetManifest,
        exclude_xy: np.ndarray | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        shared: dict[str, Any] | None = None,
    ) -> MisoModel:
        """Attach the dataset.

        Args:
            manifest: the dataset (needs a ``sentinel2`` modality).
            exclude_xy: coordinates of the test fold; unlabelled chips never cover them.
            checkpoint_dir: where to keep ``best.pt``/``last.pt`` (resume after interruption).
            shared: a dict kept by the caller across folds to reuse the raster cache and the
                normalisation statistics.
        """
        if "sentinel2" not in manifest.modalities:
            raise MisoBenchError(
                f"{manifest.path}: MISO needs a `sentinel2` modality (9 bands "
                "in Satlas order); this dataset has "
                f"{sorted(manifest.modalities)}"
            )
        shared = shared if shared is not None else {}
        key = str(manifest.path)
        if shared.get("key") != key:
            stack, parts = open_stack(manifest)
            grid = grid_of(parts)
            nodata = band_fill(parts)
            stats = compute_band_stats(manifest)
            shared.update(
                key=key,
                stack=stack,
                parts=parts,
                grid=grid,
                cache=FootprintCache(stack, grid, nodata),
                normalizer=Normalizer(stats, manifest.band_names),
            )
        self._shared = shared
        self._manifest = manifest
        self._n_s2 = len(manifest.modalities["sentinel2"].bands)
        self._exclude = None if exclude_xy is None else np.asarray(exclude_xy, dtype=np.float64)
        self._checkpoint_dir = checkpoint_dir
        return self

    def _settings(self) -> dict[str, Any]:
        preset = resolve_preset(self.preset)
        s = dict(PRESETS[preset])
        for key in ("epochs", "batch_size", "lr", "patience", "chip_size_px", "unlabeled_ratio"):
            if getattr(self, key) is not None:
                s[key] = getattr(self, key)
        s["preset"] = preset
        return s

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _inputs(
        self, chips: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw chips ``(B, C, H, W)`` -> normalised Sentinel-2 and covariates (masked -> 0)."""
        n = self._n_s2
        s2 = satlas_normalize(chips[:, :n]) * valid[:, :n]
        cov = None
        if self.use_cov and chips.shape[1] > n:
            cov = self._shared["normalizer"](chips, valid)[:, n:]
        return s2, cov

    def _chip_dataset(
        self, x: np.ndarray, y: np.ndarray, jitter: int, seed: int
    ) -> PedonChipDataset:
        table = pd.DataFrame({"id": np.arange(len(x)), "x": x, "y": y})
        return PedonChipDataset(
            self._shared["stack"],
            self._shared["parts"],
            table,
            self._size,
            jitter_px=jitter,
            seed=seed,
            preload=self._shared["cache"],
        )

    # --- queries ------------------------------------------------------------------------
    def _pseudo_queries(self, rng: np.random.Generator, b: int) -> np.ndarray:
        pts = [rng.uniform(-1, 1, size=(b, self.n_random_queries, 2))]
        g = self.grid_queries
        if g > 0:
            centres = (2 * np.arange(g) + 1) / g - 1
            gx, gy = np.meshgrid(centres, centres)
            grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
            pts.append(np.broadcast_to(grid, (b, g * g, 2)))
        return np.concatenate(pts, axis=1)

    def _loc(self, bounds: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Query positions in a chip -> normalised EPSG:3338 positions."""
        xmin, xmax, ymin, ymax = (bounds[:, i, None] for i in range(4))
        x = xmin + (q[..., 0] + 1) / 2 * (xmax - xmin)
        y = ymax - (q[..., 1] + 1) / 2 * (ymax - ymin)
        return normalize_3338(torch.stack([x, y], dim=-1)).float()

    def _unlabeled_centres(
        self, x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Chip centres near training pedons whose chips keep clear of the test fold."""
        if n <= 0:
            return np.empty((0, 2))
        size_m = self._size * self._grid.res
        pick = rng.integers(0, len(x), size=4 * n)
        centres = np.column_stack([x[pick], y[pick]]) + rng.uniform(
            -size_m, size_m, size=(4 * n, 2)
        )
        if self._exclude is not None and len(self._exclude):
            dist, _ = cKDTree(self._exclude).query(centres)
            centres = centres[dist > size_m]  # the chip (half-diagonal < size) never covers one
        return centres[:n]

    # --- fit ----------------------------------------------------------------------------
    def _prepare(self, load_weights: bool = True) -> MisoNet:
        """Resolve the preset and build the network (with Satlas weights when found, unless
        ``load_weights`` is false because trained weights replace them)."""
        s = self._settings()
        self.settings_ = s
        self._size = int(s["chip_size_px"])
        self._grid: GridSpec = self._shared["grid"]
        torch.manual_seed(self.random_state)
        np.random.seed(self.random_state % 2**32)
        cfg = MisoConfig.from_preset(
            s,
            n_outputs=1 if self.n_classes == 2 else self.n_classes,
            s2_bands=self._n_s2,
            cov_bands=(len(self._manifest.band_names) - self._n_s2) if self.use_cov else 0,
            decoder=self.decoder,
            query=self.query,
            location=self.location,
            n_freq=self.n_freq,
        )
        self.config_ = asdict(cfg)
        net = MisoNet(cfg)
        self.pretrained_ = "none"
        if load_weights and self.pretrained != "none" and net.uses_images:
            path = find_satlas_weights(None if self.pretrained == "auto" else self.pretrained)
            if path is not None:
                load_satlas_state_dict(net.s2_encoder, path)
                self.pretrained_ = str(path)
        return net

    def _n_devices(self) -> int:
        device = self._device()
        n = device_count(device.type) if self.devices == -1 else int(self.devices)
        if n < 1:
            raise MisoBenchError(
                f"model.params.devices={self.devices}: use 1 or more, or -1 for all devices"
            )
        if device.type == "cuda" and n > torch.cuda.device_count():
            raise MisoBenchError(
                f"model.params.devices={n} but {torch.cuda.device_count()} GPU(s) are visible"
            )
        return n

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        X_val: pd.DataFrame | None = None,
        y_val: np.ndarray | None = None,
    ) -> MisoModel:
        """Train on the pedons of ``X`` (coordinates) with labels ``y``; select the best epoch
        on ``(X_val, y_val)``, the inner validation split of the training fold.

        With ``devices > 1`` the fit runs data-parallel in that many worker processes
        (:mod:`miso_bench.training.distributed`) and this process receives rank 0's weights.
        """
        if not hasattr(self, "_shared"):
            raise MisoBenchError("MisoModel.fit needs the dataset: call bind(manifest) first")
        n = self._n_devices()
        if n == 1:
            self._fit_here(X, y, X_val, y_val)
            return self
        bs = int(self._settings()["batch_size"])
        if bs < n:
            raise MisoBenchError(
                f"batch_size={bs} is smaller than devices={n}; the "
                "batch is split between devices (fix: raise model.params.batch_size)"
            )
        results = launch(
            _fit_worker,
            (
                self.get_params(),
                str(self._manifest.path),
                self._exclude,
                self._checkpoint_dir,
                X,
                y,
                X_val,
                y_val,
            ),
            n,
        )
        out = results[0]
        self.rank_checksums_ = [results[r]["checksum"] for r in sorted(results)]
        net = self._prepare(load_weights=False)  # rank 0's trained weights replace them
        net.load_state_dict(out["state"])
        self.pretrained_ = out["pretrained"]
        self.net_: torch.nn.Module = net.to(self._device()).eval()
        self.history_ = out["history"]
        self.best_epoch_ = out["best_epoch"]
        self.resumed_from_ = out["resumed_from"]
        self.train_seconds_ = out["seconds"]
        self.world_size_ = n
        return self

    def _fit_here(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        X_val: pd.DataFrame | None,
        y_val: np.ndarray | None,
    ) -> None:
        """Train in this process (one rank of a process group, or alone)."""
        net = self._prepare()
        s = self.settings_
        rank, world = shard()
        self.world_size_ = world
        binary = self.n_classes == 2
        y = np.asarray(y, dtype=np.int64)
        counts = np.bincount(y, minlength=self.n_classes).astype(np.float64)
        weights = None
        if self.class_weighting == "sqrt_inverse":
            w = np.where(counts > 0, 1 / np.sqrt(np.maximum(counts, 1)), 0.0)
            weights = torch.tensor(w / w[counts > 0].mean(), dtype=torch.float32)
        aux = (
            {"geo": 1.0, "sat_cov_nce": 0.1, "visual_geo_nce": 0.1}
            if self.aux is None
            else dict(self.aux)
        )
        loss_fn = MisoLoss(binary, aux, self.temperature, weights)
        device = self._device()
        loss_fn.to(device)
        x_fit, y_fit = X["coord_x"].to_numpy(), X["coord_y"].to_numpy()
        jitter = min(int(self.jitter_frac * self._size), (self._size - 1) // 2)
        labelled = self._chip_dataset(x_fit, y_fit, jitter, self.random_state)
        n_unlab = int(round(float(s["unlabeled_ratio"]) * len(x_fit)))
        bs = int(s["batch_size"])
        if bs < world:
            raise MisoBenchError(
                f"batch_size={bs} is smaller than the {world} devices; the batch is split "
                "between devices (fix: raise model.params.batch_size or lower devices)"
            )
        n_items = len(x_fit) + n_unlab
        # The global batch is split between ranks; a last batch too small to split is dropped.
        steps = n_items // bs + (1 if n_items % bs >= world else 0)

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
            rng = np.random.default_rng([self.random_state, epoch])
            labelled.set_epoch(epoch)
            unl = self._unlabeled_centres(x_fit, y_fit, n_unlab, rng)
            unl_ds = (
                self._chip_dataset(unl[:, 0], unl[:, 1], 0, self.random_state) if len(unl) else None
            )
            items = [(0, i) for i in range(len(x_fit))] + [(1, i) for i in range(len(unl))]
            order = rng.permutation(len(items))
            for start in range(0, len(order), bs):
                chunk = [items[k] for k in order[start : start + bs]]
                # Every rank draws the global batch's pseudo queries, then keeps its share.
                pseudo = self._pseudo_queries(rng, len(chunk))[rank::world]
                if len(chunk) < world:
                    break
                chunk = chunk[rank::world]
                samples, labels, qs = [], [], []
                for src, i in chunk:
                    sample = labelled[i] if src == 0 else unl_ds[i]  # type: ignore[index]
                    samples.append(sample)
                    labels.append(int(y[i]) if src == 0 else -1)
                    qs.append(sample["query_xy"].numpy())
                q = np.concatenate([np.stack(qs)[:, None, :], pseudo], axis=1)
                lab = np.full(q.shape[:2], -1, dtype=np.int64)
                lab[:, 0] = labels
                yield (
                    torch.stack([t["image"] for t in samples]),
                    torch.stack([t["valid"] for t in samples]),
                    torch.stack([t["bounds"] for t in samples]),
                    torch.from_numpy(q.astype(np.float32)),
                    torch.from_numpy(lab),
                )

        def step_loss(module: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict]:
            image, valid, bounds, q, lab = batch
            s2, cov = self._inputs(image, valid.float())
            out = module(
                s2.to(device),
                None if cov is None else cov.to(device),
                q.to(device),
                self._loc(bounds, q).to(device),
            )
            return loss_fn(out, lab.to(device))

        x_val = None if X_val is None else X_val["coord_x"].to_numpy()
        yv = None if X_val is None else X_val["coord_y"].to_numpy()

        def validate(module: torch.nn.Module) -> float:
            if x_val is None or yv is None or y_val is None or len(x_val) == 0:
                return 0.0  # no validation split: the last epoch is kept (ties keep the first)
            self.net_ = module
            pred = self._predict_xy(x_val, yv).argmax(1)
            if binary:
                return float(f1_score(y_val, pred, pos_label=1, zero_division=0))
            present = np.unique(y_val)
            return float(f1_score(y_val, pred, labels=present, average="macro", zero_division=0))

        cfg_train = TrainConfig(
            epochs=int(s["epochs"]),
            lr=float(s["lr"]),
            backbone_lr_mult=self.backbone_lr_mult,
            patience=int(s["patience"]),
            device=device.type,
        )
        result = fit_module(
            net,
            batches,
            steps,
            step_loss,
            validate,
            cfg_train,
            backbone=net.backbone_parameters(),
            checkpoint_dir=None if self._checkpoint_dir is None else Path(self._checkpoint_dir),
        )
        self.net_ = net.eval()
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.resumed_from_ = result.resumed_from
        self.train_seconds_ = result.seconds

    def run_tags(self) -> dict[str, str]:
        """Tags for the run record: the preset used and the pretrained weights (or none)."""
        return {
            "miso_preset": self.settings_["preset"],
            "pretrained_weights": self.pretrained_,
            "device": str(self._device()),
            "devices": str(getattr(self, "world_size_", 1)),
        }

    # --- predict ------------------------------------------------------------------------
    def _probs(self, logits: torch.Tensor) -> np.ndarray:
        if self.n_classes == 2:
            p = torch.sigmoid(logits[..., 0].float())
            return torch.stack([1 - p, p], dim=-1).cpu().numpy()
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    @torch.no_grad()
    def _predict_xy(self, x: np.ndarray, y: np.ndarray, batch_size: int = 64) -> np.ndarray:
        ds = self._chip_dataset(np.asarray(x), np.asarray(y), 0, 0)
        device = self._device()
        out = np.zeros((len(ds), self.n_classes))
        for start in range(0, len(ds), batch_size):
            items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            image = torch.stack([t["image"] for t in items])
            valid = torch.stack([t["valid"] for t in items]).float()
            bounds = torch.stack([t["bounds"] for t in items])
            q = torch.stack([t["query_xy"] for t in items])[:, None, :]
            s2, cov = self._inputs(image, valid)
            logits = self.net_(
                s2.to(device),
                None if cov is None else cov.to(device),
                q.to(device),
                self._loc(bounds, q).to(device),
            )["logits"]
            out[start : start + len(items)] = self._probs(logits)[:, 0]
        return out

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities ``(n, n_classes)`` for pedons, each with a chip centred on it."""
        if len(X) == 0:
            return np.zeros((0, self.n_classes))
        self.net_.eval()
        return self._predict_xy(X["coord_x"].to_numpy(), X["coord_y"].to_numpy())

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Most probable class index."""
        return self.predict_proba(X).argmax(axis=1)

    @torch.no_grad()
    def predict_points(self, X: pd.DataFrame, batch_size: int = 16) -> np.ndarray:
        """Probabilities for many points: one chip per grid tile answers all its points.

        Points are grouped by the ``chip_size_px`` tile of the raster grid that contains them;
        each tile is encoded once and its points are decoded by the implicit decoder. This
        is how maps are made, and how the truth sample is scored.
        """
        self.net_.eval()
        x, y = X["coord_x"].to_numpy(), X["coord_y"].to_numpy()
        grid, size = self._grid, self._size
        row, col = grid.pixel_of(x, y)
        tr, tc = row // size, col // size
        keys, inverse = np.unique(np.stack([tr, tc], axis=1), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        bounds_of = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
        out = np.zeros((len(x), self.n_classes))
        device = self._device()
        cache: FootprintCache = self._shared["cache"]
        stack = self._shared["stack"]
        nodata = cache.fill
        for start in range(0, len(keys), batch_size):
            tiles = range(start, min(start + batch_size, len(keys)))
            images, valids, bounds, members = [], [], [], []
            for t in tiles:
                r0, c0 = int(keys[t, 0] * size), int(keys[t, 1] * size)
                chip = cache.chip(r0, c0, size)
                xmin, ymax = grid.x0 + c0 * grid.res, grid.y0 - r0 * grid.res
                b = (xmin, xmin + size * grid.res, ymax - size * grid.res, ymax)
                if chip is None:
                    chip = stack[slice(b[0], b[1], grid.res), slice(b[2], b[3], grid.res)][
                        "image"
                    ].numpy()
                valid = valid_pixels(chip, nodata)
                images.append(torch.from_numpy(np.nan_to_num(chip).astype(np.float32)))
                valids.append(torch.from_numpy(valid))
                bounds.append(torch.tensor(b, dtype=torch.float64))
                members.append(order[bounds_of[t] : bounds_of[t + 1]])
            n_max = max(len(m) for m in members)
            q = torch.zeros(len(members), n_max, 2)
            bt = torch.stack(bounds)
            for k, m in enumerate(members):
                qx = 2 * (x[m] - bt[k, 0].item()) / (bt[k, 1] - bt[k, 0]).item() - 1
                qy = 2 * (bt[k, 3].item() - y[m]) / (bt[k, 3] - bt[k, 2]).item() - 1
                q[k, : len(m)] = torch.from_numpy(np.stack([qx, qy], axis=1)).float()
            s2, cov = self._inputs(torch.stack(images), torch.stack(valids).float())
            logits = self.net_(
                s2.to(device),
                None if cov is None else cov.to(device),
                q.to(device),
                self._loc(bt, q).to(device),
            )["logits"]
            probs = self._probs(logits)
            for k, m in enumerate(members):
                out[m] = probs[k, : len(m)]
        return out


def _fit_worker(
    params: dict[str, Any],
    manifest_path: str,
    exclude_xy: np.ndarray | None,
    checkpoint_dir: str | os.PathLike[str] | None,
    X: pd.DataFrame,
    y: np.ndarray,
    X_val: pd.DataFrame | None,
    y_val: np.ndarray | None,
) -> dict[str, Any]:
    """One rank of a data-parallel fit (started by ``training.distributed.launch``)."""
    model = MisoModel(**{**params, "devices": 1})
    with process_group(model._device().type) as (rank, _):
        model.bind(load_manifest(manifest_path), exclude_xy, checkpoint_dir)
        model._fit_here(X, y, X_val, y_val)
        net = model.net_
        checksum = float(sum(p.detach().double().sum() for p in net.parameters()))
        out: dict[str, Any] = {"rank": rank, "checksum": checksum}
        if rank == 0:
            out.update(
                state={k: v.detach().cpu() for k, v in net.state_dict().items()},
                history=model.history_,
                pretrained=model.pretrained_,
                best_epoch=model.best_epoch_,
                resumed_from=model.resumed_from_,
                seconds=model.train_seconds_,
            )
        return out
