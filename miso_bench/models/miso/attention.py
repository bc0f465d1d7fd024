"""Swin-V2 window attention without the padded tokens' work when a feature map fits in one
window.

torchvision's window attention pads a feature map to a multiple of the window. A stage
smaller than the window (the CPU preset's 32 px chips give 2 x 2 tokens at stage 3 and 1 x 1
at stage 4, inside 4 x 4 windows) is padded with zero tokens, and those take part in the
attention as keys and values: every query also attends to them. torchvision computes the
projections, attention and output of all ``window²`` positions to keep the real ones. The
padded tokens' contribution is known without computing them: a zero token's key is zero once
its bias is (Swin-V2 zeroes the key bias), so its cosine logit is zero and its logit is the
relative position bias alone; its value is the value bias. :class:`WindowAttentionV2` computes
exactly that for the real tokens only, and keeps torchvision's formulation for every other
case (several windows, shifted windows, a map that fills its window, attention dropout).
The two are equal to float rounding (tests check values and gradients against torchvision).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.swin_transformer import ShiftedWindowAttentionV2

__all__ = ["WindowAttentionV2", "set_exact_attention"]


class WindowAttentionV2(ShiftedWindowAttentionV2):
    """torchvision's ``ShiftedWindowAttentionV2`` (same parameters and state dict) that skips
    the padded tokens of a feature map smaller than one window.

    ``exact = True`` (an attribute, see :func:`set_exact_attention`) always takes
    torchvision's path (tests, benchmarks).
    """

    exact: bool = False

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        _, h, w, _ = x.shape
        ws_h, ws_w = self.window_size
        padded = h * w < ws_h * ws_w
        dropout = self.training and (self.attention_dropout > 0 or self.dropout > 0)
        if self.exact or not padded or h > ws_h or w > ws_w or dropout:
            return super().forward(x)
        return self._one_window(x)

    def _positions(self, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Positions of the real and of the padded tokens in the padded window (row-major,
        as torchvision flattens it), made once per map size and device."""
        cache: dict = self.__dict__.setdefault("_position_cache", {})
        key = (h, w, str(device))
        if key not in cache:
            ws_w = self.window_size[1]
            n = self.window_size[0] * ws_w
            rows = torch.arange(h, device=device)[:, None] * ws_w
            real = (rows + torch.arange(w, device=device)[None, :]).reshape(-1)
            keep = torch.ones(n, dtype=torch.bool, device=device)
            keep[real] = False
            cache[key] = (real, torch.nonzero(keep).squeeze(1))
        return cache[key]

    def _one_window(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        heads = self.num_heads
        head_dim = c // heads
        real, pad = self._positions(h, w, x.device)
        r = real.numel()

        bias = self.qkv.bias
        if bias is not None:  # Swin-V2 zeroes the key bias, as torchvision does
            third = bias.numel() // 3
            zero_k = torch.zeros_like(bias[third : 2 * third])
            bias = torch.cat([bias[:third], zero_k, bias[2 * third :]])
        qkv = F.linear(x.reshape(b, r, c), self.qkv.weight, bias)
        qkv = qkv.reshape(b, r, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, r, head_dim)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        rpb = self.get_relative_position_bias()[0].index_select(1, real)  # (heads, r, n)
        attn = attn + rpb.index_select(2, real)
        # Padded keys: zero key -> zero cosine logit, so the bias alone.
        to_pad = rpb.index_select(2, pad).unsqueeze(0).expand(b, heads, r, pad.numel())
        weights = F.softmax(torch.cat([attn, to_pad], dim=-1), dim=-1)
        out = weights[..., :r] @ v
        if bias is not None:  # padded values are the value bias
            v_pad = bias[2 * third :].reshape(1, heads, 1, head_dim)
            out = out + weights[..., r:].sum(-1, keepdim=True) * v_pad
        out = out.transpose(1, 2).reshape(b, r, c)
        out = F.linear(out, self.proj.weight, self.proj.bias)
        return out.reshape(b, h, w, c)


def set_exact_attention(module: torch.nn.Module, exact: bool) -> None:
    """Make every :class:`WindowAttentionV2` in ``module`` take torchvision's path (``True``)
    or the padded-token-free one where it applies (``False``)."""
    for m in module.modules():
        if isinstance(m, WindowAttentionV2):
            m.exact = exact
