"""Location encoders: Space2Vec encodings of normalised EPSG:3338 coordinates and their MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LocationEncoder", "Space2Vec", "normalize_3338"]

#: The reference's normalisation of Alaska's EPSG:3338 extent to [-1, 1] (north is -1).
X0_M, XSPAN_M = -2_199_995.0, 3_700_000.0
Y0_M, YSPAN_M = 2_400_005.0, 2_400_000.0


def normalize_3338(xy: torch.Tensor) -> torch.Tensor:
    """EPSG:3338 metres ``(..., 2)`` -> ``[-1, 1]`` with north = -1, as the reference."""
    x = 2 * (xy[..., 0] - X0_M) / XSPAN_M - 1
    y = 2 * (Y0_M - xy[..., 1]) / YSPAN_M - 1
    return torch.stack([x, y], dim=-1)


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
