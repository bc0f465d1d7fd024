"""MISO losses: supervised loss on labelled queries, the location head, and InfoNCE alignment.

Auxiliary terms are named and weighted; an unknown name is an error (the reference silently
ignored ``vg_nce``). Pseudo queries (label ``-1``) take part in the contrastive terms only.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import MisoBenchError

__all__ = ["AUX_LOSSES", "MisoLoss", "info_nce", "supervised_loss"]

#: Auxiliary losses and the outputs they need.
AUX_LOSSES: dict[str, tuple[str, ...]] = {
    "geo": ("geo_logits",),  # supervised loss on the location head
    "sat_cov_nce": ("s2_emb", "cov_emb"),  # align Sentinel-2 and covariate embeddings
    "visual_geo_nce": ("visual_emb", "geo_emb"),  # align imagery and location embeddings
}


def supervised_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    binary: bool,
    class_weights: torch.Tensor | None = None,
    focal_gamma: float = 0.0,
) -> torch.Tensor:
    """BCE (binary, one logit) or CE on labelled queries (``y >= 0``); 0 when none."""
    labelled = y >= 0
    if not labelled.any():
        return logits.sum() * 0.0
    z, t = logits[labelled], y[labelled]
    if binary:
        z = z[..., 0]
        tf = t.float()
        pos_weight = None
        if class_weights is not None:
            pos_weight = class_weights[1] / class_weights[0]
        loss = F.binary_cross_entropy_with_logits(z, tf, pos_weight=pos_weight, reduction="none")
        if focal_gamma:
            p = torch.sigmoid(z)
            pt = torch.where(tf > 0.5, p, 1 - p)
            loss = loss * (1 - pt) ** focal_gamma
        return loss.mean()
    loss = F.cross_entropy(z, t, weight=class_weights, reduction="none")
    if focal_gamma:
        pt = torch.softmax(z, -1).gather(1, t[:, None])[:, 0]
        loss = loss * (1 - pt) ** focal_gamma
    return loss.mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two embeddings ``(B, N, D)``.

    For every query slot n, the positives are the same chip's pair and the negatives the
    other chips of the batch at that slot (the reference's formulation, averaged over slots
    and directions instead of summed).
    """
    if a.shape[0] < 2:
        return a.sum() * 0.0
    a = F.normalize(a, dim=-1).transpose(0, 1)  # (N, B, D)
    b = F.normalize(b, dim=-1).transpose(0, 1)
    logits = a @ b.transpose(1, 2) / temperature  # (N, B, B)
    target = torch.arange(a.shape[1], device=a.device).expand(a.shape[0], -1)
    return 0.5 * (
        F.cross_entropy(logits.flatten(0, 1), target.flatten())
        + F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), target.flatten())
    )


class MisoLoss(nn.Module):
    """Base loss plus weighted auxiliary terms.

    Args:
        binary: binary task (BCE on one logit) or multi-class (CE).
        aux: auxiliary loss name -> weight (see :data:`AUX_LOSSES`).
        temperature: InfoNCE temperature.
        class_weights: optional per-class weights of the supervised losses.
        focal_gamma: focal-loss focusing (0 = plain BCE/CE).
    """

    def __init__(
        self,
        binary: bool,
        aux: Mapping[str, float] | None = None,
        temperature: float = 0.1,
        class_weights: torch.Tensor | None = None,
        focal_gamma: float = 0.0,
    ) -> None:
        super().__init__()
        aux = dict(aux or {})
        unknown = sorted(set(aux) - set(AUX_LOSSES))
        if unknown:
            raise MisoBenchError(
                f"unknown auxiliary loss {unknown[0]!r}; valid: {', '.join(AUX_LOSSES)}"
            )
        self.binary = binary
        self.aux = aux
        self.temperature = temperature
        self.focal_gamma = focal_gamma
        self.register_buffer("class_weights", class_weights, persistent=False)

    def _weights(self) -> torch.Tensor | None:
        weights = self.class_weights
        return weights if isinstance(weights, torch.Tensor) else None

    def active(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """The auxiliary terms whose inputs the network produces."""
        return {
            k: w for k, w in self.aux.items() if w > 0 and all(n in outputs for n in AUX_LOSSES[k])
        }

    def forward(
        self, outputs: Mapping[str, torch.Tensor], y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its parts (for logging)."""
        base = supervised_loss(outputs["logits"], y, self.binary, self._weights(), self.focal_gamma)
        total = base
        parts = {"loss/base": float(base.detach())}
        for name, weight in self.active(outputs).items():
            if name == "geo":
                term = supervised_loss(
                    outputs["geo_logits"], y, self.binary, self._weights(), self.focal_gamma
                )
            else:
                a, b = AUX_LOSSES[name]
                term = info_nce(outputs[a], outputs[b], self.temperature)
            total = total + weight * term
            parts[f"loss/{name}"] = float(term.detach())
        return total, parts
