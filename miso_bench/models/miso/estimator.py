"""MISO as a chip model (:class:`~miso_bench.models.base.ChipModel`) that the fold engine drives
like the trees.

Per fit the engine passes a feature table whose rows are pedons (index: pedon id, columns
``coord_x``/``coord_y`` in the dataset CRS), the labels, the inner validation split and a
:class:`~miso_bench.models.base.FoldContext` (the chip source, the coordinates no training
chip may cover, a checkpoint folder, a per-epoch callback). The estimator cuts chips around the
pedons and trains with the inner validation split for model selection (the last epoch without
one). It predicts through the map path: overlapping windows of a global lattice, blended
(:meth:`decode_region` for maps, :meth:`predict_points` for the same values at points, as
cross-validation and the truth sample use); :meth:`predict_proba` decodes one chip centred on
each pedon (a secondary figure). A trained model saves its weights, normalisation statistics,
grid and location normaliser, and predicts again after
:func:`~miso_bench.models.base.load_fitted`.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree
from sklearn.metrics import f1_score

from ...errors import MisoBenchError, warn
from ...spatial import metres_per_unit
from ...training import TrainConfig, bf16_pays, fit_module
from ...training.distributed import device_count, launch, process_group, shard
from ..base import ChipModel, EpochCallback, FoldContext
from .backbones import find_satlas_weights, load_satlas_state_dict, satlas_normalize
from .location import LocationNormalizer
from .losses import MisoLoss, merged_aux
from .network import MisoConfig, MisoNet

if TYPE_CHECKING:  # the data layer (torchgeo, rasterio) loads when chips are first read
    from ...data.chips import ChipSource, PedonChipDataset
    from ...data.grid import GridSpec

__all__ = ["PRESETS", "FitStoppedError", "MisoModel", "resolve_preset"]

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
        "epochs": 9,
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
S2_MODALITY = "sentinel2"


def resolve_preset(preset: str) -> str:
    """``auto`` -> ``paper`` with a GPU, ``cpu`` without."""
    if preset == "auto":
        return "paper" if torch.cuda.is_available() else "cpu"
    if preset not in PRESETS:
        raise MisoBenchError(f"unknown MISO preset {preset!r}; use auto, cpu or paper")
    return preset


class FitStoppedError(Exception):
    """A data-parallel fit was stopped by the caller's per-epoch callback."""


class MisoModel(ChipModel):
    """The MISO model family (see :mod:`miso_bench.models.miso.network`).

    Args:
        n_classes: classes of the task (2 = binary, one logit).
        random_state: seed.
        preset: ``auto``, ``cpu`` or ``paper`` (architecture, chip size, schedule).
        decoder: ``dual``, ``naive``, ``attn``, ``visual_only`` or ``geo_only``.
        query: ``implicit`` (INR) or ``center`` (ablation: chip-centre features only).
        use_cov: use the other modalities (terrain, climate) as covariates (second encoder).
        location: ``gridcell`` or ``theory`` location encoding; n_freq its frequencies.
        location_min_scale_m: the finest wavelength of the location encoding, in metres (the
            coarsest spans the dataset). 925 m is the reference's: 5e-4 of Alaska's
            half-width in its normalisation.
        aux: auxiliary loss weights, merged key by key over ``geo: 1.0, sat_cov_nce: 0.1,
            visual_geo_nce: 0.1`` (a weight of 0 switches a term off).
        temperature: InfoNCE temperature.
        pretrained: ``auto`` (Satlas weights when found locally), ``none``, or a file path.
        unlabeled_ratio: extra unlabelled chips per labelled chip (contrastive terms only;
            ``None`` = the preset's: 0.5 as in the reference for ``paper``, 0.1 for ``cpu``).
        n_random_queries, grid_queries: pseudo queries per chip (random; grid side).
        jitter_frac: chip jitter as a share of the chip size (training only).
        epochs, batch_size, lr, patience, chip_size_px: override the preset.
        backbone_lr_mult: learning-rate multiplier of the image encoders.
        weight_decay: AdamW weight decay (not on norms and biases).
        warmup_frac: share of the steps spent warming up the learning rate.
        class_weighting: ``none`` or ``sqrt_inverse`` class weights.
        drop_path: stochastic depth of the Swin encoders; dropout: of the location MLP.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: training arithmetic: ``auto`` (bf16 autocast where it is faster: CUDA,
            and CPUs with AVX512-BF16 or AMX whose bf16 matrix products measure at least 1.5x
            fp32's; fp32 elsewhere), ``bf16`` or ``fp32``. Weights, optimizer and prediction
            stay fp32 either way; the run's ``precision`` tag records what was used.
        devices: processes training data-parallel (one per GPU; on CPU, each gets a share
            of the cores); ``-1`` = every visible GPU. ``batch_size`` is the global batch.
        chip_cache_mb: memory for the training chips, read and normalised once per fit with
            room for their jitter (each epoch slices them: the same numbers, bit for bit, as
            reading each chip). Chips that would take more are read per batch; 0 = always.
            Per process: the CPU preset's chips fit (175 MB per 1,000 training pedons of the
            default dataset); the paper preset's 256 px chips do not.
    """

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
        location_min_scale_m: float = 925.0,
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
        weight_decay: float = 0.01,
        warmup_frac: float = 0.05,
        class_weighting: str = "sqrt_inverse",
        drop_path: float = 0.1,
        dropout: float = 0.1,
        device: str = "auto",
        devices: int = 1,
        precision: str = "auto",
        chip_cache_mb: float = 1024.0,
    ) -> None:
        self.n_classes = n_classes
        self.random_state = random_state
        self.preset = preset
        self.decoder = decoder
        self.query = query
        self.use_cov = use_cov
        self.location = location
        self.n_freq = n_freq
        self.location_min_scale_m = location_min_scale_m
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
        self.weight_decay = weight_decay
        self.warmup_frac = warmup_frac
        self.class_weighting = class_weighting
        self.drop_path = drop_path
        self.dropout = dropout
        self.device = device
        self.devices = devices
        self.precision = precision
        self.chip_cache_mb = chip_cache_mb

    # --- settings -----------------------------------------------------------------------
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

    def _n_devices(self) -> int:
        device = self._device()
        if self.devices == -1:  # every visible GPU; one process on CPU
            n = device_count(device.type) if device.type == "cuda" else 1
        else:
            n = int(self.devices)
        if n < 1:
            raise MisoBenchError(
                f"model.params.devices={self.devices}: use 1 or more, or -1 for all devices"
            )
        if device.type == "cuda" and n > torch.cuda.device_count():
            raise MisoBenchError(
                f"model.params.devices={n} but {torch.cuda.device_count()} GPU(s) are visible"
            )
        return n

    # --- data ---------------------------------------------------------------------------
    def attach(self, source: ChipSource) -> MisoModel:
        """Read chips from ``source``: a dataset with the bands, CRS and grid the model was
        trained on (checked for a loaded model)."""
        from ...data.bands import find_s2_bands

        manifest = source.manifest
        imagery: set[str] = set()
        s2_names: list[str] = []
        self._s2_scale = 1.0
        if self.decoder != "geo_only":  # the location-only ablation reads no imagery
            modality, s2_names = find_s2_bands(manifest)
            imagery = set(manifest.modalities[modality].bands)
            self._s2_scale = float(manifest.modalities[modality].scale)
        if hasattr(self, "band_names_"):
            if list(source.band_names) != list(self.band_names_):
                raise MisoBenchError(
                    f"{source.manifest.path}: the model was trained on bands "
                    f"{self.band_names_}, this dataset has {source.band_names} (fix: give "
                    "it the same bands in the same order)"
                )
            if source.manifest.crs != self.crs_:
                raise MisoBenchError(
                    f"{source.manifest.path}: the model was trained in {self.crs_}, this "
                    f"dataset is in {source.manifest.crs} (fix: reproject it, or train there)"
                )
            g, trained = source.grid, self.grid_

            def on_lattice(a: float, b: float) -> bool:
                shift = (a - b) / trained.res
                return abs(shift - round(shift)) < 1e-6

            same_res = abs(g.res - trained.res) <= 1e-9 * trained.res
            if not (same_res and on_lattice(g.x0, trained.x0) and on_lattice(g.y0, trained.y0)):
                raise MisoBenchError(
                    f"{source.manifest.path}: the model was trained on a {trained.res:g} grid "
                    f"(origin {trained.x0:g}, {trained.y0:g}); this dataset's grid is "
                    f"{g.res:g} (origin {g.x0:g}, {g.y0:g}) (fix: resample it onto the "
                    "training grid: chips of another pixel size show another area)"
                )
        self._source = source
        self._grid: GridSpec = source.grid
        names = list(source.band_names)
        # Sentinel-2 by name in Satlas order (extra imagery bands unused); every continuous
        # band of the other modalities is a covariate.
        self._s2_idx = [names.index(b) for b in s2_names]
        categorical = {b for spec in manifest.modalities.values() for b in spec.categorical}
        self._cov_idx = (
            [i for i, b in enumerate(names) if b not in imagery and b not in categorical]
            if self.use_cov
            else []
        )
        # Categorical covariates enter one-hot (their codes are learned at fit time).
        self._cat_idx = (
            [i for i, b in enumerate(names) if b not in imagery and b in categorical]
            if self.use_cov
            else []
        )
        return self

    def _one_hot(self, chips: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
        """``(B, sum(codes), H, W)`` one-hot channels of the categorical covariates (0 where
        invalid or an unseen code), or None without any."""
        codes = getattr(self, "cat_codes_", {})
        parts = []
        for i in getattr(self, "_cat_idx", []):
            band_codes = codes.get(self.band_names_[i], [])
            if not band_codes:
                continue
            values = torch.nan_to_num(chips[:, i], nan=float("-inf"))
            known = torch.tensor(band_codes, dtype=values.dtype, device=values.device)
            hot = (values[:, None] == known[None, :, None, None]) & valid[:, i, None]
            parts.append(hot.to(torch.float32))
        return torch.cat(parts, dim=1) if parts else None

    def _learn_codes(self, source: ChipSource) -> dict[str, list[float]]:
        """The codes of each categorical covariate: its (at most 32) most frequent values in
        decimated reads of up to 64 of its files, spread over the list (deterministic: every
        rank and every refit finds the same; a code never seen gets no channel)."""
        import rasterio

        from ...data.manifest import open_raster, raster_nodata, read_masked

        out: dict[str, list[float]] = {}
        manifest = source.manifest
        for i in getattr(self, "_cat_idx", []):
            band = self.band_names_[i]
            spec = next(m for m in manifest.modalities.values() if band in m.bands)
            files = manifest.modality_files(spec.name)
            picked = [files[k] for k in np.unique(np.linspace(0, len(files) - 1, 64).astype(int))]
            counts: dict[float, int] = {}
            for path in picked:
                with rasterio.Env(), open_raster(path, full_resolution=True) as src:
                    f = max(1, int(np.ceil(max(src.width, src.height) / 512)))
                    fill = raster_nodata(spec.nodata, src, path, spec.name)
                    data = read_masked(
                        src,
                        fill,
                        indexes=spec.bands.index(band) + 1,
                        out_shape=(max(1, src.height // f), max(1, src.width // f)),
                    )
                v = data[np.isfinite(data)]
                uniq, n = np.unique(v, return_counts=True)
                for u, k in zip(uniq.tolist(), n.tolist(), strict=True):
                    counts[u] = counts.get(u, 0) + k
            top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:32]
            out[band] = sorted(float(k) for k, _ in top)
        return out

    def _inputs(
        self, chips: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Raw chips ``(B, C, H, W)`` -> normalised Sentinel-2 (None without imagery) and
        covariates; invalid pixels are 0 whatever their raw value (NaN no-data included)."""
        s2: torch.Tensor | None = None
        if self._s2_idx:  # none for the location-only ablation
            s2_raw = chips[:, self._s2_idx]
            if getattr(self, "_s2_scale", 1.0) != 1.0:  # e.g. reflectance 0-1 -> L2A numbers
                s2_raw = s2_raw * self._s2_scale
            s2_valid = valid[:, self._s2_idx]
            s2 = torch.where(s2_valid, satlas_normalize(torch.nan_to_num(s2_raw)), 0.0)
        cov: torch.Tensor | None = None
        if self._cov_idx:
            normalized = self.normalizer_(chips, valid, channels=self._cov_idx)
            if not isinstance(normalized, torch.Tensor):  # tensors in, tensors out
                raise TypeError(
                    f"the normaliser returned {type(normalized).__name__}, not a tensor"
                )
            cov = normalized
        hot = self._one_hot(chips, valid)
        if hot is not None:
            cov = hot if cov is None else torch.cat([cov, hot], dim=1)
        return s2, cov

    def _chip_dataset(
        self, x: np.ndarray, y: np.ndarray, jitter: int, seed: int
    ) -> PedonChipDataset:
        from ...data.chips import PedonChipDataset

        table = pd.DataFrame({"id": np.arange(len(x)), "x": x, "y": y})
        return PedonChipDataset(self._source, table, self._size, jitter_px=jitter, seed=seed)

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
        """Query positions in chips ``(B, N, 2)`` -> normalised dataset positions."""
        xmin, xmax, ymin, ymax = (bounds[:, i, None] for i in range(4))
        qd = q.double()
        x = xmin + (qd[..., 0] + 1) / 2 * (xmax - xmin)
        y = ymax - (qd[..., 1] + 1) / 2 * (ymax - ymin)
        return self.location_norm_(torch.stack([x, y], dim=-1))

    def _unlabeled_centres(
        self, x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Chip centres near training pedons whose chips keep clear of the excluded area.

        Works in pixels of the grid (any CRS): a chip of side S centred on pixel c covers
        pixels within S / 2 of c; it is kept when every excluded pedon is more than S / 2 + 1
        pixels away along a row or a column.
        """
        if n <= 0:
            return np.empty((0, 2))
        size, g = self._size, self._grid
        rows, cols = g.pixel_of(x, y)
        tree = None
        if self._exclude is not None and len(self._exclude):
            er, ec = g.pixel_of(self._exclude[:, 0], self._exclude[:, 1])
            tree = cKDTree(np.column_stack([er, ec]))
        found: list[np.ndarray] = []
        have = 0
        for _ in range(10):  # draws of 4n candidates until n keep clear of the excluded area
            pick = rng.integers(0, len(x), size=4 * n)
            shift = rng.integers(-size, size + 1, size=(4 * n, 2))
            cand = np.column_stack([rows[pick] + shift[:, 0], cols[pick] + shift[:, 1]])
            if tree is not None:
                dist, _ = tree.query(cand, p=np.inf)
                cand = cand[dist > size / 2 + 1]
            found.append(cand)
            have += len(cand)
            if have >= n:
                break
        rc = np.concatenate(found)[:n]
        if len(rc) < n:
            warn(
                "unlabeled_chips_short",
                f"only {len(rc)} of {n} unlabelled chips keep clear of the held-out pedons "
                "(the rest of each epoch trains on labelled chips only)",
            )
        cx = g.x0 + (rc[:, 1] + 0.5) * g.res
        cy = g.y0 - (rc[:, 0] + 0.5) * g.res
        return np.column_stack([cx, cy])

    def _window_bounds(self, centres: np.ndarray) -> np.ndarray:
        """``(n, 4)`` bounds of the chips that :class:`PedonChipDataset` cuts at ``centres``."""
        if len(centres) == 0:
            return np.empty((0, 4))
        g, size = self._grid, self._size
        rows, cols = g.pixel_of(centres[:, 0], centres[:, 1])
        xmin = g.x0 + (cols - size // 2) * g.res
        ymax = g.y0 - (rows - size // 2) * g.res
        return np.column_stack([xmin, xmin + size * g.res, ymax - size * g.res, ymax])

    def unlabeled_windows(self) -> np.ndarray:
        """Bounds of every unlabelled chip of the last fit (every epoch)."""
        return getattr(self, "unlabeled_windows_", np.empty((0, 4)))

    # --- fit ----------------------------------------------------------------------------
    def _prepare(self, context: FoldContext, load_weights: bool = True) -> MisoNet:
        """Resolve the preset, read the data layout and build the network (with Satlas weights
        when found, unless ``load_weights`` is false because trained weights replace them)."""
        for learned in ("band_names_", "crs_"):  # a refit may change datasets
            self.__dict__.pop(learned, None)
        self.attach(context.source)
        s = self._settings()
        self.settings_ = s
        self._size = int(s["chip_size_px"])
        self.normalizer_ = context.normalizer
        extent = context.source.extent()
        self.location_norm_ = LocationNormalizer.from_extent(
            extent, metres_per_unit(context.source.manifest.crs, extent)
        )
        self.band_names_ = list(context.source.band_names)
        self.cat_codes_ = self._learn_codes(context.source)
        self.crs_ = context.source.manifest.crs
        self.grid_ = self._grid
        self.classes_ = np.arange(self.n_classes)
        torch.manual_seed(self.random_state)
        np.random.seed(self.random_state % 2**32)
        cfg = MisoConfig.from_preset(
            s,
            n_outputs=1 if self.n_classes == 2 else self.n_classes,
            s2_bands=len(self._s2_idx),
            cov_bands=len(self._cov_idx) + sum(len(c) for c in self.cat_codes_.values()),
            decoder=self.decoder,
            query=self.query,
            location=self.location,
            n_freq=self.n_freq,
            # The finest wavelength is a physical length whatever the dataset's extent.
            min_scale=min(self.location_norm_.scale(self.location_min_scale_m), 1.0),
            drop_path=self.drop_path,
            dropout=self.dropout,
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

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        X_val: pd.DataFrame | None = None,
        y_val: np.ndarray | None = None,
        *,
        context: FoldContext | None = None,
    ) -> MisoModel:
        """Train on the pedons of ``X`` (coordinates) with labels ``y``; select the best epoch
        on ``(X_val, y_val)``, the inner validation split of the training fold (without one,
        the last epoch is kept).

        With ``devices > 1`` the fit runs data-parallel in that many worker processes
        (:mod:`miso_bench.training.distributed`) and this process receives rank 0's weights.

        Raises:
            MisoBenchError: no context, a dataset without Sentinel-2, bad settings.
        """
        if context is None:
            raise MisoBenchError(
                "MisoModel.fit needs the data: pass context=FoldContext(source=ChipSource("
                "manifest), normalizer=...) (the benchmark engine does this)"
            )
        merged_aux(self.aux)  # unknown loss names fail before any work
        n = self._n_devices()
        if n == 1:
            self._fit_here(X, y, X_val, y_val, context)
            return self
        bs = int(self._settings()["batch_size"])
        if bs < n:
            raise MisoBenchError(
                f"batch_size={bs} is smaller than devices={n}; the "
                "batch is split between devices (fix: raise model.params.batch_size)"
            )
        self._fit_distributed(X, y, X_val, y_val, context, n)
        return self

    def _fit_distributed(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        X_val: pd.DataFrame | None,
        y_val: np.ndarray | None,
        context: FoldContext,
        n: int,
    ) -> None:
        """Train in ``n`` worker processes; relay their epochs to ``context.on_epoch``."""
        import multiprocessing

        manager = relay = listener = None
        failure: list[BaseException] = []
        if context.on_epoch is not None:
            manager = multiprocessing.get_context("spawn").Manager()
            relay = _EpochRelay(manager.Queue(), manager.Queue())
            listener = threading.Thread(
                target=relay.serve, args=(context.on_epoch, failure), daemon=True
            )
            listener.start()
        # Each worker holds its own block cache: they share the memory budget.
        source = context.source.resized(context.source.cache_mb / n)
        worker_ctx = replace(context, on_epoch=relay, source=source)
        try:
            # Resolved once here, so that every rank trains alike (they do not measure).
            self.precision_ = self._precision(self._device())
            params = {**self.get_params(), "precision": self.precision_}
            results = launch(_fit_worker, (params, worker_ctx, X, y, X_val, y_val), n)
        finally:
            if relay is not None:
                relay.close()
            if listener is not None:
                listener.join(timeout=10)
            if manager is not None:
                manager.shutdown()
        if failure:
            raise failure[0]
        out = results[0]
        self.rank_checksums_ = [results[r]["checksum"] for r in sorted(results)]
        net = self._prepare(context, load_weights=False)  # rank 0's trained weights replace them
        net.load_state_dict(out["state"])
        self.pretrained_ = out["pretrained"]
        self.net_: torch.nn.Module = net.to(self._device()).eval()
        self.history_ = out["history"]
        self.best_epoch_ = out["best_epoch"]
        self.resumed_from_ = out["resumed_from"]
        self.train_seconds_ = out["seconds"]
        self.unlabeled_windows_ = out["unlabeled_windows"]
        self.chip_cache_mb_ = out["chip_cache_mb"]  # each rank's
        self.world_size_ = n

    def _fit_here(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        X_val: pd.DataFrame | None,
        y_val: np.ndarray | None,
        context: FoldContext,
    ) -> None:
        """Train in this process (one rank of a process group, or alone)."""
        net = self._prepare(context)
        self._exclude = np.asarray(context.exclude_xy, dtype=np.float64).reshape(-1, 2)
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
        loss_fn = MisoLoss(binary, merged_aux(self.aux), self.temperature, weights)
        device = self._device()
        self.precision_ = self._precision(device)  # a rank's model gets it resolved
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
        # The global batch is split between ranks. A last batch of fewer than max(2, ranks)
        # chips is dropped (one chip has no InfoNCE negatives, and every rank needs a share),
        # so one and two processes run the same batches.
        smallest = max(2, world)
        steps = n_items // bs + (1 if n_items % bs >= smallest else 0)

        self._unlabeled_bounds: dict[int, np.ndarray] = {}

        # The labelled chips, normalised once per fit with room for their jitter (each epoch
        # slices them), when they fit in chip_cache_mb; otherwise read and normalised per batch.
        padded = _PaddedChips.build(self, labelled, jitter, self._chip_cache_mb())
        self.chip_cache_mb_ = 0.0 if padded is None else padded.nbytes / 2**20

        def batches(epoch: int) -> Iterator[_Batch]:
            rng = np.random.default_rng([self.random_state, epoch])
            labelled.set_epoch(epoch)
            unl = self._unlabeled_centres(x_fit, y_fit, n_unlab, rng)
            self._unlabeled_bounds[epoch] = self._window_bounds(unl)
            unl_ds = (
                self._chip_dataset(unl[:, 0], unl[:, 1], 0, self.random_state) if len(unl) else None
            )
            items = [(0, i) for i in range(len(x_fit))] + [(1, i) for i in range(len(unl))]
            order = rng.permutation(len(items))
            for start in range(0, len(order), bs):
                chunk = [items[k] for k in order[start : start + bs]]
                # Every rank draws the global batch's pseudo queries, then keeps its share.
                pseudo = self._pseudo_queries(rng, len(chunk))[rank::world]
                if len(chunk) < smallest:
                    break
                chunk = chunk[rank::world]
                yield self._batch(chunk, labelled, unl_ds, padded, y, pseudo)

        def step_loss(module: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict]:
            s2, cov, bounds, q, lab = batch
            out = module(
                None if s2 is None else s2.to(device),
                None if cov is None else cov.to(device),
                q.to(device),
                self._loc(bounds, q).to(device),
            )
            return loss_fn(out, lab.to(device))

        x_val = None if X_val is None else X_val["coord_x"].to_numpy()
        yv = None if X_val is None else X_val["coord_y"].to_numpy()

        pos_label = int(context.positive_index)

        def validate(module: torch.nn.Module) -> float | None:
            if x_val is None or yv is None or y_val is None or len(x_val) == 0:
                return None  # no validation split: the last epoch is kept
            self.net_ = module
            pred = self._predict_xy(x_val, yv).argmax(1)
            if binary:
                # The task's scored class, as the reported f1_pos scores it.
                return float(f1_score(y_val, pred, pos_label=pos_label, zero_division=0))
            present = np.unique(y_val)
            return float(f1_score(y_val, pred, labels=present, average="macro", zero_division=0))

        cfg_train = TrainConfig(
            epochs=int(s["epochs"]),
            lr=float(s["lr"]),
            backbone_lr_mult=self.backbone_lr_mult,
            weight_decay=float(self.weight_decay),
            warmup_frac=float(self.warmup_frac),
            patience=int(s["patience"]),
            device=device.type,
            amp=self.precision_ == "bf16",
        )
        result = fit_module(
            net,
            batches,
            steps,
            step_loss,
            validate,
            cfg_train,
            backbone=net.backbone_parameters(),
            checkpoint_dir=context.checkpoint_dir,
            on_epoch=context.on_epoch,
        )
        self.net_ = net.eval()
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.resumed_from_ = result.resumed_from
        self.train_seconds_ = result.seconds
        self.stopped_ = result.stopped
        self.unlabeled_windows_ = (
            np.concatenate(list(self._unlabeled_bounds.values()))
            if self._unlabeled_bounds
            else np.empty((0, 4))
        )

    def _batch(
        self,
        chunk: list[tuple[int, int]],
        labelled: PedonChipDataset,
        unlabelled: PedonChipDataset | None,
        padded: _PaddedChips | None,
        y: np.ndarray,
        pseudo: np.ndarray,
    ) -> _Batch:
        """One training batch: normalised Sentinel-2 and covariate chips (None where the model
        reads none), bounds, queries (the pedon's, then the pseudo queries) and labels (-1 on
        pseudo queries and unlabelled chips). ``chunk`` lists ``(0, i)`` for labelled chip ``i``
        and ``(1, i)`` for unlabelled chip ``i``."""
        parts: list[tuple[torch.Tensor | None, torch.Tensor | None]] = [(None, None)] * len(chunk)
        bounds, qs, labels = [], [], []
        images, valids, read = [], [], []
        for k, (src, i) in enumerate(chunk):
            ds = labelled if src == 0 else unlabelled
            if ds is None:
                raise RuntimeError("an unlabelled chip was drawn without unlabelled chips")
            r0, c0, b, query = ds.geometry(i)
            bounds.append(b)
            qs.append(query)
            labels.append(int(y[i]) if src == 0 else -1)
            if src == 0 and padded is not None:
                parts[k] = padded.chip(i, r0, c0)
            else:
                size = self._size
                image, valid = self._source.window(r0, c0, size, size)
                images.append(torch.from_numpy(image))
                valids.append(torch.from_numpy(valid))
                read.append(k)
        if read:
            s2, cov = self._inputs(torch.stack(images), torch.stack(valids))
            for j, k in enumerate(read):
                parts[k] = (None if s2 is None else s2[j], None if cov is None else cov[j])
        s2_all = None if parts[0][0] is None else torch.stack([p[0] for p in parts])  # type: ignore[misc]
        cov_all = None if parts[0][1] is None else torch.stack([p[1] for p in parts])  # type: ignore[misc]
        q = np.concatenate([np.stack(qs)[:, None, :], pseudo], axis=1)
        lab = np.full(q.shape[:2], -1, dtype=np.int64)
        lab[:, 0] = labels
        return (
            s2_all,
            cov_all,
            torch.tensor(bounds, dtype=torch.float64),
            torch.from_numpy(q.astype(np.float32)),
            torch.from_numpy(lab),
        )

    def _chip_cache_mb(self) -> float:
        """The padded-chip cache's budget, checked."""
        mb = self.chip_cache_mb
        if isinstance(mb, bool) or not isinstance(mb, int | float) or not mb >= 0:
            raise MisoBenchError(
                f"chip_cache_mb={mb!r}: give the memory in MB for the training chips, 0 or more "
                "(0 reads them per batch; fix: --set model.params.chip_cache_mb=1024)"
            )
        return float(mb)

    def _precision(self, device: torch.device) -> str:
        """The training arithmetic (``fp32`` or ``bf16``) on ``device``."""
        if self.precision not in ("auto", "fp32", "bf16"):
            raise MisoBenchError(
                f"precision={self.precision!r}: use auto, fp32 or bf16 "
                "(fix: --set model.params.precision=fp32)"
            )
        if self.precision != "auto":
            return str(self.precision)
        return "bf16" if bf16_pays(device) else "fp32"

    def fit_report(self) -> dict[str, float]:
        """The selected epoch, the epochs run and the memory the padded-chip cache took (0:
        chips read and normalised per batch)."""
        return {
            "best_epoch": float(self.best_epoch_),
            "epochs_run": float(len(self.history_)),
            "chip_cache_mb": float(getattr(self, "chip_cache_mb_", 0.0)),
        }

    def run_tags(self) -> dict[str, str]:
        """Tags for the run record: the preset used, the pretrained weights (or none), the
        device, arithmetic and device count, and the GPU's name on CUDA."""
        device = self._device()
        tags = {
            "miso_preset": self.settings_["preset"],
            "pretrained_weights": self.pretrained_,
            "device": str(device),
            "precision": getattr(self, "precision_", None) or self._precision(device),
            "devices": str(getattr(self, "world_size_", 1)),
        }
        if device.type == "cuda":
            tags["gpu"] = torch.cuda.get_device_name(device)
        return tags

    # --- predict ------------------------------------------------------------------------
    def _probs(self, logits: torch.Tensor) -> np.ndarray:
        if self.n_classes == 2:
            p = torch.sigmoid(logits[..., 0].float())
            return torch.stack([1 - p, p], dim=-1).cpu().numpy().astype(np.float64)
        return torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)

    def _check_ready(self) -> None:
        if not hasattr(self, "net_"):
            raise MisoBenchError("this MISO model is not trained: call fit first")
        if not hasattr(self, "_source"):
            raise MisoBenchError("no data attached: call attach(ChipSource(manifest)) first")

    @torch.no_grad()
    def _predict_xy(self, x: np.ndarray, y: np.ndarray, batch_size: int = 64) -> np.ndarray:
        ds = self._chip_dataset(np.asarray(x), np.asarray(y), 0, 0)
        device = self._device()
        out = np.zeros((len(ds), self.n_classes))
        for start in range(0, len(ds), batch_size):
            items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            image = torch.stack([t["image"] for t in items])
            valid = torch.stack([t["valid"] for t in items])
            bounds = torch.stack([t["bounds"] for t in items])
            q = torch.stack([t["query_xy"] for t in items])[:, None, :]
            s2, cov = self._inputs(image, valid)
            logits = self.net_(
                None if s2 is None else s2.to(device),
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
        self._check_ready()
        self.net_.eval()
        return self._predict_xy(X["coord_x"].to_numpy(), X["coord_y"].to_numpy())

    def _decode_windows(
        self, origins: list[tuple[int, int]], queries: list[np.ndarray], embed: bool
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Read the chip-sized windows at global pixels ``origins`` and decode each one's
        queries (:meth:`_decode_each`)."""
        size, grid = self._size, self._grid
        images, valids, bounds = [], [], []
        for wr, wc in origins:
            image, valid = self._source.window(wr, wc, size, size)
            images.append(torch.from_numpy(image))
            valids.append(torch.from_numpy(valid))
            bounds.append(grid.bounds_of(wr, wc, size, size))
        return self._decode_each(
            torch.stack(images),
            torch.stack(valids),
            torch.tensor(bounds, dtype=torch.float64),
            queries,
            embed=embed,
        )

    @torch.no_grad()
    def _decode_each(
        self,
        images: torch.Tensor,
        valids: torch.Tensor,
        bounds: torch.Tensor,
        queries: list[np.ndarray],
        embed: bool = False,
        chunk: int = 4096,
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Encode a batch of windows once, then decode every window's own queries (no padding
        to the longest window): all of them in one row, each naming its window, in chunks
        that keep the decoder's working set small. Windows with a few points each (pedons,
        the truth sample) thus cost one decoder call per chunk, not one per window.

        Args:
            queries: per window ``(n_k, 2)`` positions in [-1, 1].

        Returns:
            per window ``(n_k, n_classes)`` probabilities and, with ``embed``, ``(n_k, dim)``
            float32 embeddings the head reads.
        """
        if not queries:
            return [], ([] if embed else None)
        device = self._device()
        net: MisoNet = self.net_  # type: ignore[assignment]
        s2, cov = self._inputs(images, valids)
        feats = net.encode(
            None if s2 is None else s2.to(device), None if cov is None else cov.to(device)
        )
        counts = [len(qk) for qk in queries]
        q = torch.from_numpy(
            np.concatenate([np.asarray(qk, dtype=np.float32).reshape(-1, 2) for qk in queries])
        )[None]
        chip = torch.repeat_interleave(torch.arange(len(queries)), torch.tensor(counts))[None]
        loc = self._loc(bounds[chip[0]], q[0][:, None, :])[:, 0][None]  # (1, M, 2)
        parts, eparts = [], []
        for start in range(0, q.shape[1], chunk):
            out = net.decode(
                feats,
                q[:, start : start + chunk].to(device),
                loc[:, start : start + chunk].to(device),
                chip=chip[:, start : start + chunk].to(device),
            )
            parts.append(self._probs(out["logits"])[0])
            if embed:
                eparts.append(out["head_emb"][0].float().cpu().numpy())
        cuts = np.cumsum(counts)[:-1]
        probs_all = np.concatenate(parts) if parts else np.zeros((0, self.n_classes))
        probs = np.split(probs_all, cuts)
        if not embed:
            return probs, None
        embs_all = np.concatenate(eparts) if eparts else np.zeros((0, 0), np.float32)
        return probs, np.split(embs_all, cuts)

    def map_stride(self, stride: int | None = None) -> int:
        """The window stride of the map path (default: half a chip)."""
        from .tiling import check_stride

        try:
            return check_stride(self._size, stride)
        except ValueError as exc:
            raise MisoBenchError(f"--stride-px: {exc}") from exc

    @torch.no_grad()
    def decode_region(
        self,
        r0: int,
        c0: int,
        h: int,
        w: int,
        stride: int | None = None,
        batch_size: int = 16,
        embed: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The map path: blended probabilities at every pixel centre of a region of the grid.

        The region's pixels are decoded from every window of the global lattice that covers
        them (see :mod:`~miso_bench.models.miso.tiling`), reading neighbouring data across any
        tile border; each window is encoded once and decodes only the region's pixels.

        Args:
            r0, c0: global row and column of the region's upper-left pixel.
            h, w: its size in pixels.
            stride: window stride in pixels (default: half a chip).
            batch_size: windows encoded together.
            embed: also return the blended embedding (for the area of applicability).

        Returns:
            float32 ``(n_classes, h, w)`` probabilities and, with ``embed``, float32
            ``(dim, h, w)`` embeddings.
        """
        from .tiling import blend_weights, lattice_range

        self._check_ready()
        self.net_.eval()
        size = self._size
        stride = self.map_stride(stride)
        wt = blend_weights(size)
        acc = np.zeros((self.n_classes, h, w), dtype=np.float32)
        acc_emb: np.ndarray | None = None
        total = np.zeros((h, w), dtype=np.float32)
        windows = [
            (i * stride, j * stride)
            for i in lattice_range(r0, h, size, stride)
            for j in lattice_range(c0, w, size, stride)
        ]
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            spans = []
            for wr, wc in batch:
                rr0, rr1 = max(wr, r0), min(wr + size, r0 + h)
                cc0, cc1 = max(wc, c0), min(wc + size, c0 + w)
                spans.append((rr0, rr1, cc0, cc1))
            queries = []
            for (wr, wc), (rr0, rr1, cc0, cc1) in zip(batch, spans, strict=True):
                rows, cols = np.meshgrid(
                    np.arange(rr0, rr1) - wr, np.arange(cc0, cc1) - wc, indexing="ij"
                )
                queries.append(
                    np.stack(
                        [(2 * cols.ravel() + 1) / size - 1, (2 * rows.ravel() + 1) / size - 1],
                        axis=1,
                    )
                )
            probs, emb = self._decode_windows(batch, queries, embed)
            for k, ((wr, wc), (rr0, rr1, cc0, cc1)) in enumerate(zip(batch, spans, strict=True)):
                hh, ww = rr1 - rr0, cc1 - cc0
                weight = np.outer(wt[rr0 - wr : rr1 - wr], wt[cc0 - wc : cc1 - wc])
                weight = weight.astype(np.float32)
                region = (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))
                pk = probs[k].T.reshape(self.n_classes, hh, ww)
                acc[:, region[0], region[1]] += weight * pk.astype(np.float32)
                total[region] += weight
                if emb is not None:
                    ek = emb[k].T.reshape(-1, hh, ww)
                    if acc_emb is None:
                        acc_emb = np.zeros((ek.shape[0], h, w), dtype=np.float32)
                    acc_emb[:, region[0], region[1]] += weight * ek
        acc /= total
        if acc_emb is not None:
            acc_emb /= total
        return acc, acc_emb

    @torch.no_grad()
    def predict_points(
        self,
        X: pd.DataFrame,
        batch_size: int | None = None,
        stride: int | None = None,
        embed: bool = False,
    ) -> Any:
        """The map's value at points: the blended prediction of the pixels that hold them.

        Each point's pixel is decoded, at its centre, from every lattice window that covers
        it, with the map's blending weights: exactly the value :meth:`decode_region` gives that
        pixel (the truth sample, cross-validation and maps share this path). Windows shared by
        several points are encoded once.

        Args:
            X: ``coord_x``, ``coord_y`` of the points.
            batch_size: windows encoded together (default: 16, more for chips under 64 px,
                whose small tensors run faster in larger batches).
            stride: window stride in pixels (default: half a chip).
            embed: also return the blended embeddings.

        Returns:
            ``(n, n_classes)`` probabilities; with ``embed``, also ``(n, dim)`` embeddings.
        """
        from .tiling import blend_weights, lattice_range

        self._check_ready()
        if batch_size is None:
            batch_size = max(16, 65536 // self._size**2)
        self.net_.eval()
        size, grid = self._size, self._grid
        stride = self.map_stride(stride)
        wt = blend_weights(size)
        x, y = X["coord_x"].to_numpy(), X["coord_y"].to_numpy()
        n = len(x)
        out = np.zeros((n, self.n_classes))
        out_emb: np.ndarray | None = None
        total = np.zeros(n)
        if n == 0:
            return (out, np.zeros((0, 0))) if embed else out
        row, col = grid.pixel_of(x, y)
        pairs = [
            (p, i * stride, j * stride)
            for p in range(n)
            for i in lattice_range(int(row[p]), 1, size, stride)
            for j in lattice_range(int(col[p]), 1, size, stride)
        ]
        pair = np.array(pairs, dtype=np.int64)
        keys, inverse = np.unique(pair[:, 1:], axis=0, return_inverse=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        cuts = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
        for start in range(0, len(keys), batch_size):
            ks = range(start, min(start + batch_size, len(keys)))
            origins = [(int(keys[t, 0]), int(keys[t, 1])) for t in ks]
            members = [pair[order[cuts[t] : cuts[t + 1]], 0] for t in ks]
            queries, weights = [], []
            for t, m in zip(ks, members, strict=True):
                ur, uc = row[m] - keys[t, 0], col[m] - keys[t, 1]
                queries.append(np.stack([(2 * uc + 1) / size - 1, (2 * ur + 1) / size - 1], axis=1))
                weights.append(wt[ur] * wt[uc])
            probs, emb = self._decode_windows(origins, queries, embed)
            for k, m in enumerate(members):
                wk = weights[k]
                np.add.at(out, m, wk[:, None] * probs[k])
                np.add.at(total, m, wk)
                if emb is not None:
                    if out_emb is None:
                        out_emb = np.zeros((n, emb[k].shape[-1]))
                    np.add.at(out_emb, m, wk[:, None] * emb[k])
        out /= total[:, None]
        if embed:
            if out_emb is None:  # every point had a window, so embeddings were summed
                raise RuntimeError("predict_points: no embedding was decoded")
            return out, out_emb / total[:, None]
        return out

    @torch.no_grad()
    def decode_window(
        self,
        image: np.ndarray,
        valid: np.ndarray,
        bounds: tuple[float, float, float, float],
    ) -> np.ndarray:
        """Class probabilities at every pixel centre of a raster window.

        Args:
            image: ``(C, H, W)`` raw band values in the model's band order (see
                ``band_names_``); values under ``valid == False`` are ignored.
            valid: ``(C, H, W)`` bool validity mask.
            bounds: ``(xmin, xmax, ymin, ymax)`` of the window in the model's CRS.

        Returns:
            ``(n_classes, H, W)`` probabilities. Windows of ``chip_size_px`` match training.
        """
        if not hasattr(self, "net_"):
            raise MisoBenchError("this MISO model is not trained: call fit first")
        image = np.asarray(image, dtype=np.float32)
        valid = np.asarray(valid, dtype=bool)
        if image.ndim != 3 or image.shape != valid.shape:
            raise MisoBenchError(
                f"decode_window needs image and valid of the same (C, H, W) shape, got "
                f"{image.shape} and {valid.shape}"
            )
        if image.shape[0] != len(self.band_names_):
            raise MisoBenchError(
                f"decode_window: {image.shape[0]} bands given, the model reads "
                f"{len(self.band_names_)} ({', '.join(self.band_names_)})"
            )
        self.net_.eval()
        _, h, w = image.shape
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        q = np.stack([(2 * cols.ravel() + 1) / w - 1, (2 * rows.ravel() + 1) / h - 1], axis=1)
        probs, _ = self._decode_each(
            torch.from_numpy(np.where(valid, image, 0.0).astype(np.float32))[None],
            torch.from_numpy(valid)[None],
            torch.tensor([bounds], dtype=torch.float64),
            [q],
        )
        return probs[0].T.reshape(self.n_classes, h, w)

    # --- saved state --------------------------------------------------------------------
    def save_state(self, folder: Path) -> dict[str, Any]:
        """Write ``weights.pt`` and ``band_stats.json``; return the rest of the state."""
        if not hasattr(self, "net_"):
            raise MisoBenchError("this MISO model is not trained: nothing to save")
        state = {k: v.detach().cpu() for k, v in self.net_.state_dict().items()}
        torch.save(state, Path(folder) / "weights.pt")
        self.normalizer_.to_json(Path(folder) / "band_stats.json")
        return {
            "settings": self.settings_,
            "config": self.config_,
            "band_names": self.band_names_,
            "s2_bands": [self.band_names_[i] for i in self._s2_idx],
            "cov_bands": [self.band_names_[i] for i in self._cov_idx],
            "cat_codes": self.cat_codes_,
            "crs": self.crs_,
            "grid": self.grid_.to_dict(),
            "location_normalizer": self.location_norm_.to_dict(),
            "pretrained": self.pretrained_,
            "history": self.history_,
            "best_epoch": self.best_epoch_,
        }

    def load_state(self, folder: Path, meta: Mapping[str, Any]) -> None:
        """Rebuild the network from ``model.json`` and load ``weights.pt`` (weights only)."""
        from ...data.grid import GridSpec
        from ...data.normalization import BandStats, Normalizer

        state = meta["state"]
        cfg = dict(state["config"])
        cfg["depths"], cfg["num_heads"] = tuple(cfg["depths"]), tuple(cfg["num_heads"])
        net = MisoNet(MisoConfig(**cfg))
        weights = torch.load(Path(folder) / "weights.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(weights)
        self.net_ = net.to(self._device()).eval()
        self.settings_ = dict(state["settings"])
        self.config_ = cfg
        self._size = int(self.settings_["chip_size_px"])
        self.band_names_ = list(state["band_names"])
        self._s2_idx = [self.band_names_.index(b) for b in state["s2_bands"]]
        self._cov_idx = [self.band_names_.index(b) for b in state["cov_bands"]]
        self.cat_codes_ = {b: list(c) for b, c in state.get("cat_codes", {}).items()}
        self._cat_idx = [self.band_names_.index(b) for b in self.cat_codes_]
        self.crs_ = state["crs"]
        self.grid_ = GridSpec(**state["grid"])
        self._grid = self.grid_
        self.location_norm_ = LocationNormalizer.from_dict(state["location_normalizer"])
        raw = json.loads((Path(folder) / "band_stats.json").read_text())
        self.normalizer_ = Normalizer({b: BandStats(**v) for b, v in raw.items()}, list(raw))
        self.pretrained_ = state["pretrained"]
        self.history_ = state["history"]
        self.best_epoch_ = state["best_epoch"]
        self.classes_ = np.arange(self.n_classes)


class _EpochRelay:
    """Carries rank 0's epoch records from a worker process to the caller's callback and its
    answer back (a callback that raises stops the data-parallel fit)."""

    def __init__(self, records: Any, answers: Any) -> None:
        self.records = records
        self.answers = answers

    def __call__(self, epoch: int, record: dict[str, float]) -> None:
        self.records.put((epoch, record))
        if self.answers.get() != "go":
            raise FitStoppedError("stopped by the per-epoch callback")

    def serve(self, callback: EpochCallback, failure: list[BaseException]) -> None:
        """Run in the caller's process: call ``callback`` for every record until closed."""
        while True:
            try:
                item = self.records.get()
            except (EOFError, OSError):  # the manager went away
                return
            if item is None:
                return
            try:
                callback(*item)
                self.answers.put("go")
            except BaseException as exc:  # handed to the caller after the workers stop
                failure.append(exc)
                self.answers.put("stop")

    def close(self) -> None:
        """Stop :meth:`serve`."""
        with contextlib.suppress(EOFError, OSError, queue.Full):
            self.records.put(None)


#: A training batch: Sentinel-2 and covariate chips (normalised; None where not read), bounds,
#: queries and labels.
_Batch = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]


class _PaddedChips:
    """A fit's labelled chips, each read and normalised once with ``jitter`` pixels of margin
    on every side: an epoch's jittered chip is a slice of its padded window. Normalisation is
    per pixel, so the slice equals the chip read and normalised on its own (float rounding of
    vectorised ``asinh`` aside)."""

    def __init__(
        self,
        s2: torch.Tensor | None,
        cov: torch.Tensor | None,
        r0: np.ndarray,
        c0: np.ndarray,
        size: int,
    ) -> None:
        self.s2, self.cov, self.r0, self.c0, self.size = s2, cov, r0, c0, size

    @classmethod
    def build(
        cls, model: MisoModel, ds: PedonChipDataset, jitter: int, budget_mb: float, batch: int = 64
    ) -> _PaddedChips | None:
        """The padded chips of ``ds``, or None when they would take more than ``budget_mb``
        (judged from the first batch) or there are none."""
        n, size = len(ds), ds.sampler.chip_size_px
        if n == 0 or budget_mb <= 0:
            return None
        side = size + 2 * jitter
        half = size // 2
        r0 = ds.sampler.row.astype(np.int64) - half - jitter
        c0 = ds.sampler.col.astype(np.int64) - half - jitter
        s2_parts: list[torch.Tensor] = []
        cov_parts: list[torch.Tensor] = []
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            windows = [
                model._source.window(int(r0[i]), int(c0[i]), side, side) for i in range(start, stop)
            ]
            s2, cov = model._inputs(
                torch.from_numpy(np.stack([w[0] for w in windows])),
                torch.from_numpy(np.stack([w[1] for w in windows])),
            )
            if start == 0:
                per_chip = sum(t[0].nbytes for t in (s2, cov) if t is not None)
                if per_chip * n > budget_mb * 2**20:
                    return None
            if s2 is not None:
                s2_parts.append(s2)
            if cov is not None:
                cov_parts.append(cov)
        return cls(
            torch.cat(s2_parts) if s2_parts else None,
            torch.cat(cov_parts) if cov_parts else None,
            r0,
            c0,
            size,
        )

    @property
    def nbytes(self) -> int:
        """Memory held."""
        return sum(t.nbytes for t in (self.s2, self.cov) if t is not None)

    def chip(self, i: int, r0: int, c0: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Chip ``i`` with upper-left global pixel ``(r0, c0)`` (inside its padded window)."""
        dr, dc = r0 - int(self.r0[i]), c0 - int(self.c0[i])
        rows, cols = slice(dr, dr + self.size), slice(dc, dc + self.size)
        return (
            None if self.s2 is None else self.s2[i, :, rows, cols],
            None if self.cov is None else self.cov[i, :, rows, cols],
        )


def _fit_worker(
    params: dict[str, Any],
    context: FoldContext,
    X: pd.DataFrame,
    y: np.ndarray,
    X_val: pd.DataFrame | None,
    y_val: np.ndarray | None,
) -> dict[str, Any]:
    """One rank of a data-parallel fit (started by ``training.distributed.launch``)."""
    model = MisoModel(**{**params, "devices": 1})
    with process_group(model._device().type) as (rank, _):
        try:
            model._fit_here(X, y, X_val, y_val, context)
        except FitStoppedError:
            return {"rank": rank, "checksum": float("nan"), "stopped": True}
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
                unlabeled_windows=model.unlabeled_windows_,
                chip_cache_mb=model.chip_cache_mb_,
            )
        return out
