"""Image encoders: Swin-V2 (torchgeo / torchvision) with a multispectral stem, SatlasPretrain
weight loading, and a light CNN for the smooth covariate bands.

Every encoder maps ``(B, C, H, W)`` to four feature maps ``(B, C_s, H / 4 / 2^s, W / 4 / 2^s)``
(channels first) for the implicit query decoder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)

from ...errors import MisoBenchError
from .attention import WindowAttentionV2

__all__ = [
    "SATLAS_S2_FILE",
    "ConvEncoder",
    "SwinEncoder",
    "find_satlas_weights",
    "load_satlas_state_dict",
    "satlas_normalize",
]

#: File name of torchgeo's ``Swin_V2_B_Weights.SENTINEL2_SI_MS_SATLAS`` in the torch hub cache.
SATLAS_S2_FILE = "sentinel2_swinb_si_ms-fe22a12c.pth"


def satlas_normalize(s2: torch.Tensor) -> torch.Tensor:
    """L2A reflectance (x10,000) in Satlas band order -> the Satlas input convention.

    Satlas takes the true-colour bands B04, B03, B02 as 8-bit TCI values divided by 255 and the
    other bands divided by 8160. The TCI is ESA's 0-2,000 reflectance stretch to 0-255, so the
    first three bands become ``reflectance / 2000`` and the others ``reflectance / 8160``,
    all clipped to [0, 1].
    """
    scale = torch.tensor(
        [2000.0] * 3 + [8160.0] * (s2.shape[1] - 3), device=s2.device, dtype=s2.dtype
    )
    return (s2 / scale[None, :, None, None]).clamp(0, 1)


class SwinEncoder(nn.Module):
    """A Swin-V2 backbone with an ``in_chans`` patch-embedding stem, returning 4 stages.

    Args:
        in_chans: input bands.
        embed_dim: channels of the first stage (128 for Swin-V2-B).
        depths: blocks per stage (``[2, 2, 18, 2]`` for Swin-V2-B).
        num_heads: attention heads per stage.
        window: attention window (8 for Swin-V2-B).
        drop_path: stochastic depth rate.
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window: int = 8,
        drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        self.swin = SwinTransformer(
            patch_size=[4, 4],
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=[window, window],
            stochastic_depth_prob=drop_path,
            # torchvision's block with the attention that skips padded tokens (same weights)
            block=partial(SwinTransformerBlockV2, attn_layer=WindowAttentionV2),
            downsample_layer=PatchMergingV2,
            norm_layer=partial(nn.LayerNorm, eps=1e-5),
        )
        self.swin.features[0][0] = nn.Conv2d(in_chans, embed_dim, kernel_size=4, stride=4)
        # The classification head is unused: drop it so it holds no parameters.
        self.swin.head = nn.Identity()
        self.stage_dims = [embed_dim * 2**i for i in range(4)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` -> the four stage outputs, channels first."""
        outs = []
        h = x
        for i, layer in enumerate(self.swin.features):
            h = layer(h)
            if i % 2 == 1:  # attention stages: features[1], [3], [5], [7]
                outs.append(h.permute(0, 3, 1, 2))
        return outs


class ConvEncoder(nn.Module):
    """A light CNN for smooth covariates: four stride-2 stages after a stride-4 stem."""

    def __init__(self, in_chans: int, width: int = 32) -> None:
        super().__init__()
        dims = [width * 2**i for i in range(4)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], 4, 4), nn.GroupNorm(8, dims[0]), nn.GELU()
        )
        self.stages = nn.ModuleList()
        prev = dims[0]
        for i, d in enumerate(dims):
            stride = 1 if i == 0 else 2
            self.stages.append(
                nn.Sequential(
                    nn.Conv2d(prev, d, 3, stride=stride, padding=1),
                    nn.GroupNorm(8, d),
                    nn.GELU(),
                    nn.Conv2d(d, d, 3, padding=1),
                    nn.GroupNorm(8, d),
                    nn.GELU(),
                )
            )
            prev = d
        self.stage_dims = dims

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` -> four feature maps."""
        h = self.stem(x)
        outs = []
        for stage in self.stages:
            h = stage(h)
            outs.append(h)
        return outs


def find_satlas_weights(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The SatlasPretrain Sentinel-2 weights: ``path``, ``$MISO_SATLAS_WEIGHTS``, or the torch
    hub cache (where torchgeo stores them); None when absent."""
    candidates = []
    if path:
        candidates.append(Path(path))
    if os.environ.get("MISO_SATLAS_WEIGHTS"):
        candidates.append(Path(os.environ["MISO_SATLAS_WEIGHTS"]))
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / SATLAS_S2_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if path:
        raise MisoBenchError(
            f"{path}: Satlas weights file not found (fix: give the path of "
            f"{SATLAS_S2_FILE} or leave model.params.pretrained empty)"
        )
    return None


def load_satlas_state_dict(encoder: SwinEncoder, path: str | os.PathLike[str]) -> None:
    """Load a Satlas-format Swin-V2 state dict into ``encoder``, keeping its 9-band stem.

    Accepts torchgeo's files (torchvision keys) and the original SatlasPretrain files (keys
    prefixed ``backbone.backbone.``). Every backbone key must match in name and shape; the
    classification head is ignored.

    Raises:
        MisoBenchError: unreadable file, or missing/unexpected/mis-shaped keys (listed).
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, struct, zip) on bad files
        raise MisoBenchError(f"{path}: cannot read the weights file: {exc}") from exc
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    prefix = "backbone.backbone."
    if any(k.startswith(prefix) for k in raw):
        raw = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    state = {k: v for k, v in raw.items() if not k.startswith("head.")}
    target = {k: v for k, v in encoder.swin.state_dict().items() if not k.startswith("head.")}
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shapes = sorted(k for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or unexpected or shapes:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            detail.append(
                f"{len(shapes)} with other shapes (e.g. {shapes[0]}: "
                f"{tuple(state[shapes[0]].shape)} vs "
                f"{tuple(target[shapes[0]].shape)})"
            )
        raise MisoBenchError(
            f"{path}: not a Satlas Swin-V2 state dict for this encoder: "
            f"{'; '.join(detail)} (fix: use the Sentinel-2 multispectral "
            "Swin-V2-B weights with the paper preset)"
        )
    encoder.swin.load_state_dict(state, strict=False)
