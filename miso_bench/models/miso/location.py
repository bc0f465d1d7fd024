"""Location encoders: Space2Vec encodings of normalised dataset coordinates and their MLP."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["LocationEncoder", "LocationNormalizer", "Space2Vec"]


@dataclass(frozen=True)
class LocationNormalizer:
    """Maps coordinates of the dataset's CRS to ``[-1, 1]`` over a square around the dataset's
    extent (west is -1, north is -1, as the reference's normalisation of Alaska; one scale for
    both axes, so distances keep their proportions). Built from the rasters' extent and stored
    with the trained model, so a model predicts at the same positions wherever its data lies.

    Attributes:
        xmin, ymin, xmax, ymax: the square, in the dataset's CRS units.
        metres_per_unit: about how many metres a CRS unit spans there (1 in metric CRSs).
    """

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    metres_per_unit: float = 1.0

    def __post_init__(self) -> None:
        if not (self.xmax > self.xmin and self.ymax > self.ymin):
            raise ValueError(f"empty extent for the location normaliser: {self}")

    @classmethod
    def from_extent(
        cls, extent: tuple[float, float, float, float], metres_per_unit: float = 1.0
    ) -> LocationNormalizer:
        """The square around ``(xmin, ymin, xmax, ymax)`` (centred, side the longer span)."""
        xmin, ymin, xmax, ymax = (float(v) for v in extent)
        half = max(xmax - xmin, ymax - ymin) / 2
        cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
        return cls(cx - half, cy - half, cx + half, cy + half, float(metres_per_unit))

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> LocationNormalizer:
        """From :meth:`to_dict`'s output."""
        keys = ("xmin", "ymin", "xmax", "ymax", "metres_per_unit")
        return cls(**{k: float(data[k]) for k in keys if k in data})

    @property
    def half_span_m(self) -> float:
        """Half the square's side, in metres: one normalised unit."""
        return (self.xmax - self.xmin) / 2 * self.metres_per_unit

    def scale(self, metres: float) -> float:
        """A length in metres in normalised units."""
        return metres / self.half_span_m

    def to_dict(self) -> dict[str, float]:
        """Plain data (saved with the model)."""
        return asdict(self)

    def __call__(self, xy: torch.Tensor) -> torch.Tensor:
        """Coordinates ``(..., 2)`` -> ``[-1, 1]`` (float64 in, float32 out)."""
        x = 2 * (xy[..., 0] - self.xmin) / (self.xmax - self.xmin) - 1
        y = 2 * (self.ymax - xy[..., 1]) / (self.ymax - self.ymin) - 1
        return torch.stack([x, y], dim=-1).float()


class Space2Vec(nn.Module):
    """Multi-scale sinusoidal encoding (Mai et al. 2020, Space2Vec).

    ``gridcell``: sin/cos of each coordinate at S geometric frequencies (4S features).
    ``theory``: sin/cos of projections on unit vectors at 0, 120 and 240 degrees (6S).
    Frequencies run from ``1 / min_scale`` down to ``1 / max_scale`` (no 2 pi, as the
    reference).

    Args:
        kind: ``gridcell`` or ``theory``.
        n_freq: number of frequencies S.
        min_scale, max_scale: the finest and coarsest scales, in normalised units.
    """

    def __init__(
        self,
        kind: str = "gridcell",
        n_freq: int = 64,
        min_scale: float = 5e-4,
        max_scale: float = 2.0,
    ) -> None:
        super().__init__()
        if kind not in ("gridcell", "theory"):
            raise ValueError(f"unknown location encoding {kind!r}; use gridcell or theory")
        self.kind = kind
        s = torch.arange(n_freq, dtype=torch.float64)
        ratio = max_scale / min_scale
        scales = min_scale * ratio ** (s / max(n_freq - 1, 1))
        self.register_buffer("freqs", (1.0 / scales).float(), persistent=False)
        if kind == "gridcell":
            dirs = torch.eye(2)
        else:
            angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
            dirs = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        self.register_buffer("dirs", dirs.float(), persistent=False)
        self.out_dim = 2 * n_freq * dirs.shape[0]

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` normalised coordinates -> ``(..., out_dim)``."""
        dirs: torch.Tensor = self.dirs  # type: ignore[assignment]
        freqs: torch.Tensor = self.freqs  # type: ignore[assignment]
        proj = xy @ dirs.T  # (..., D)
        phase = proj[..., :, None] * freqs  # (..., D, S)
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1).flatten(-2)


class LocationEncoder(nn.Module):
    """Space2Vec encoding followed by a residual MLP (the reference's geo encoder, sized down)."""

    def __init__(
        self,
        dim: int,
        kind: str = "gridcell",
        n_freq: int = 64,
        min_scale: float = 5e-4,
        n_blocks: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoding = Space2Vec(kind, n_freq, min_scale)
        self.stem = nn.Sequential(nn.Linear(self.encoding.out_dim, dim), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))
            for _ in range(n_blocks)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_blocks))

    def forward(self, xy_norm: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` normalised coordinates -> ``(..., dim)`` embedding."""
        h = self.stem(self.encoding(xy_norm))
        for block, norm in zip(self.blocks, self.norms, strict=True):
            h = norm(h + block(h))
        return h
