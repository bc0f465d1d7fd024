"""The implicit query decoder (local implicit functions over multi-stage feature maps).

For a feature map ``F`` of ``h x w`` cells covering the chip ``[-1, 1]^2`` (cell centres at
``(2k + 1) / w - 1``, as ``grid_sample`` with ``align_corners=False``), a query ``q = (x, y)``
is answered from its four nearest cells: each cell's feature ``f_i`` and the query's offset
from the cell centre ``r_i = (q - c_i) * (w, h) / 2`` (in cell units) go through an MLP, and
the four outputs are blended with bilinear weights. This fixes the reference's axis defect
(it paired x with row centres), so with an MLP that ignores ``r`` the decoder reproduces
exact bilinear interpolation.

The fast formulation does the same arithmetic with less work (both give the same outputs
and gradients, tested to 1e-5 against ``exact=True``, the straightforward one):
- the blend weights sum to one and the MLP's last layer is affine, so the corners'
  activations are blended *before* it: the widest matrix product runs once per query, not
  once per (query, corner) pair;
- the first layer is linear in ``[f_i, r_i]``: ``W [f; r] + b = (W_f f + b) + W_r r``; with
  many queries every cell is projected once per chip, and the offset term splits into a
  per-cell part (folded into the projection) and a per-query part shared by the 4 corners;
- without autograd the (query, corner) activations are formed in chunks that stay in cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ImplicitQueryDecoder", "LocalImplicitQuery", "corner_weights"]

#: Queries per chunk of the inference path (their (chunk, 4, D) activations stay in cache).
_CHUNK = 512


def corner_weights(
    q: torch.Tensor, h: int, w: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four cells around each query and their bilinear weights.

    Args:
        q: ``(B, N, 2)`` queries (x, y) in [-1, 1].

    Returns:
        rows ``(B, N, 4)``, cols ``(B, N, 4)`` (long, clamped to the map), weights
        ``(B, N, 4)`` (summing to 1) and offsets ``(B, N, 4, 2)`` in cell units.
    """
    # Continuous cell coordinates: cell k spans [k, k + 1) and has its centre at k + 0.5.
    gx = (q[..., 0] + 1) * w / 2 - 0.5
    gy = (q[..., 1] + 1) * h / 2 - 0.5
    x0 = torch.floor(gx)
    y0 = torch.floor(gy)
    fx = (gx - x0).clamp(0, 1)
    fy = (gy - y0).clamp(0, 1)
    cols = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
    rows = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)
    cols_c = cols.clamp(0, w - 1)
    rows_c = rows.clamp(0, h - 1)
    # Offsets from the (clamped) cell centres to the query, in cell units.
    offsets = torch.stack([gx[..., None] - cols_c, gy[..., None] - rows_c], dim=-1)
    return rows_c.long(), cols_c.long(), weights, offsets


def _gather(
    cells: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, chip: torch.Tensor | None = None
) -> torch.Tensor:
    """``cells (B, h, w, C)`` at ``(rows, cols) (B, N, 4)`` -> ``(B, N, 4, C)``.

    With ``chip`` (``(1, M)``, long), the queries of every chip come as one row ``(1, M, 4)``
    and ``chip`` names the map each one reads.
    """
    b, h, w, c = cells.shape
    if chip is None:
        base = torch.arange(b, device=rows.device).reshape(b, *([1] * (rows.ndim - 1)))
    else:
        base = chip[..., None]
    flat = (base * (h * w) + rows * w + cols).reshape(-1)
    return cells.reshape(b * h * w, c).index_select(0, flat).reshape(*rows.shape, c)


class LocalImplicitQuery(nn.Module):
    """Queries one feature map: MLP([f_i, r_i]) over 4 corners, bilinearly blended.

    Args:
        in_dim: channels of the feature map.
        hidden: hidden widths of the MLP (the first layer is split as described above).
        out_dim: output width.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        first = hidden[0] if hidden else out_dim
        self.first = nn.Linear(in_dim + 2, first)
        layers: list[nn.Module] = []
        dims = [first, *hidden[1:], out_dim] if hidden else [first]
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.GELU(), nn.Linear(a, b)]
        self.rest = nn.Sequential(*layers)

    def forward(
        self,
        fmap: torch.Tensor,
        q: torch.Tensor,
        exact: bool = False,
        chip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``fmap (B, C, h, w)``, ``q (B, N, 2)`` -> ``(B, N, out_dim)``; with ``chip``
        (``(1, M)``), ``q (1, M, 2)`` holds every chip's queries in one row (no padding) and
        ``chip`` names each query's chip.

        ``exact=True`` runs the straightforward formulation (the whole MLP on every gathered
        (query, corner) feature, then the blend); otherwise :meth:`blended_hidden` then the
        last layer, which gives the same numbers with a quarter of its work.
        """
        if exact:
            h, w = fmap.shape[-2:]
            rows, cols, weights, offsets = corner_weights(q, h, w)
            feats = _gather(fmap.permute(0, 2, 3, 1), rows, cols, chip)  # (B, N, 4, C)
            out = self.rest(self.first(torch.cat([feats, offsets], dim=-1)))
            return (out * weights[..., None]).sum(dim=-2)
        hidden = self.blended_hidden(fmap, q, chip)
        return self.rest[-1](hidden) if len(self.rest) else hidden

    def blended_hidden(
        self, fmap: torch.Tensor, q: torch.Tensor, chip: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The blend of the four corners' activations entering the MLP's last (linear) layer.

        The blend weights sum to one and the last layer is affine, so blending its inputs
        instead of its outputs gives the same result: ``sum_i w_i (W a_i + b) = W (sum_i w_i
        a_i) + b``. The first layer's offset term is also shared: with the query's continuous
        cell coordinates ``(gx, gy)`` and a corner cell ``(col, row)``, ``W_r r_i = W_x gx +
        W_y gy - (W_x col + W_y row)``; the bracket goes into the per-cell projection, the rest
        is computed once per query instead of once per corner.
        """
        b, c, h, w = fmap.shape
        cells = fmap.permute(0, 2, 3, 1)
        n = q.shape[1]
        if 4 * q.shape[0] * n < b * h * w:
            # A few queries on a fine stage (training): gather, then the first layer.
            rows, cols, weights, offsets = corner_weights(q, h, w)
            z = self.first(torch.cat([_gather(cells, rows, cols, chip), offsets], dim=-1))
            return self._blend(z, weights)
        # Many queries (maps, dense evaluation): project every cell once.
        rows, cols, weights, _ = corner_weights(q, h, w)
        weight = self.first.weight
        w_x, w_y = weight[:, c], weight[:, c + 1]
        # Cell indices in the weights' precision (fp32): a bf16 feature map cannot hold
        # integers above 256 exactly.
        col_idx = torch.arange(w, dtype=weight.dtype, device=fmap.device)
        row_idx = torch.arange(h, dtype=weight.dtype, device=fmap.device)
        projected = (
            F.linear(cells, weight[:, :c], self.first.bias)
            - col_idx[None, None, :, None] * w_x
            - row_idx[None, :, None, None] * w_y
        )  # (B, h, w, D): the per-cell part of the first layer
        gx = (q[..., 0] + 1) * w / 2 - 0.5
        gy = (q[..., 1] + 1) * h / 2 - 0.5
        per_query = gx[..., None] * w_x + gy[..., None] * w_y  # (B, N, D)
        if torch.is_grad_enabled():
            z = _gather(projected, rows, cols, chip) + per_query[..., None, :]
            return self._blend(z, weights)
        # Without autograd, in chunks of queries whose (chunk, 4, D) activations stay in cache.
        parts = []
        for s in range(0, n, _CHUNK):
            part = None if chip is None else chip[:, s : s + _CHUNK]
            z = _gather(projected, rows[:, s : s + _CHUNK], cols[:, s : s + _CHUNK], part)
            z += per_query[:, s : s + _CHUNK, None, :]
            parts.append(self._blend(z, weights[:, s : s + _CHUNK]))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _blend(self, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """First-layer outputs ``(B, N, 4, D)`` -> the blended input of the last layer."""
        a = z
        for layer in list(self.rest)[:-1]:  # every layer but the last
            a = layer(a)
        b, n, k, d = a.shape
        blended = torch.bmm(weights.reshape(b * n, 1, k), a.reshape(b * n, k, d))
        return blended.reshape(b, n, d)


class ImplicitQueryDecoder(nn.Module):
    """One :class:`LocalImplicitQuery` per stage, fused by sum (then LayerNorm) or concat.

    Args:
        stage_dims: channels of each stage's feature map.
        out_dim: embedding width.
        hidden: hidden widths of each stage's MLP.
        fusion: ``sum`` or ``concat``.
    """

    def __init__(
        self,
        stage_dims: Sequence[int],
        out_dim: int,
        hidden: Sequence[int] = (),
        fusion: str = "sum",
    ) -> None:
        super().__init__()
        if fusion not in ("sum", "concat"):
            raise ValueError(f"unknown stage fusion {fusion!r}; use sum or concat")
        self.fusion = fusion
        self.queries = nn.ModuleList(
            LocalImplicitQuery(d, hidden or (out_dim,), out_dim) for d in stage_dims
        )
        self.project = (
            nn.Linear(out_dim * len(stage_dims), out_dim) if fusion == "concat" else nn.Identity()
        )
        self.norm = nn.LayerNorm(out_dim)

    def forward(
        self,
        fmaps: Sequence[torch.Tensor],
        q: torch.Tensor,
        exact: bool = False,
        chip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Feature maps of every stage and queries ``(B, N, 2)`` -> ``(B, N, out_dim)`` (see
        :meth:`LocalImplicitQuery.forward` for ``chip``)."""
        return self.fuse(self.stage_outputs(fmaps, q, exact, chip), exact)

    def stage_outputs(
        self,
        fmaps: Sequence[torch.Tensor],
        q: torch.Tensor,
        exact: bool = False,
        chip: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Per-stage query outputs ``(B, N, out_dim)`` (attention fusion reads them too)."""
        return [query(f, q, exact, chip) for query, f in zip(self.queries, fmaps, strict=True)]

    def fuse(self, outs: Sequence[torch.Tensor], exact: bool = False) -> torch.Tensor:
        """Per-stage outputs -> the fused, normalised embedding."""
        if self.fusion == "concat":
            return self.norm(self.project(torch.cat(list(outs), dim=-1)))
        if exact:
            return self.norm(torch.stack(list(outs)).sum(0))
        fused = outs[0]
        for i, out in enumerate(outs[1:]):
            if torch.is_grad_enabled():
                fused = fused + out
            else:  # in place, into a new tensor (the first stage's output stays as it was)
                fused = fused + out if i == 0 else fused.add_(out)
        return self.norm(fused)
