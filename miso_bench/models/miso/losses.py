"""MISO losses: supervised loss on labelled queries, the location head, and InfoNCE alignment.

Auxiliary terms are named and weighted; an unknown name is an error (the reference silently
ignored ``vg_nce``). Pseudo queries (label ``-1``) take part in the contrastive terms only.

Data-parallel training (each rank holds a share of the global batch) computes the same loss as
one process on the whole batch: the supervised loss is normalised by the *global* number (or
weight) of labelled queries, and InfoNCE takes its negatives from every rank's chips. Each rank
returns its share of the one-process loss times the world size, so DDP's gradient average
equals the one-process gradient.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import MisoBenchError
from ...training.distributed import gather_rows, global_sum, shard

__all__ = ["AUX_LOSSES", "DEFAULT_AUX", "MisoLoss", "info_nce", "supervised_loss"]

#: Auxiliary losses and the outputs they need.
AUX_LOSSES: dict[str, tuple[str, ...]] = {
    "geo": ("geo_logits",),  # supervised loss on the location head
    "sat_cov_nce": ("s2_emb", "cov_emb"),  # align Sentinel-2 and covariate embeddings
    "visual_geo_nce": ("visual_emb", "geo_emb"),  # align imagery and location embeddings
}
#: Weights of the auxiliary losses unless a model's ``aux`` overrides them (key by key).
DEFAULT_AUX: dict[str, float] = {"geo": 1.0, "sat_cov_nce": 0.1, "visual_geo_nce": 0.1}


def supervised_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    binary: bool,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE (binary, one logit) or CE on labelled queries (``y >= 0``); 0 when none.

    The mean runs over the labelled queries of the *global* batch (weighted by class for CE,
    as ``F.cross_entropy``'s weighted mean): in a process group this rank returns its share
    times the world size.
    """
    world = shard()[1]
    labelled = y >= 0
    z, t = logits[labelled], y[labelled]
    if binary:
        z = z[..., 0]
        pos_weight = None
        if class_weights is not None:
            pos_weight = class_weights[1] / class_weights[0]
        per_query = F.binary_cross_entropy_with_logits(
            z, t.float(), pos_weight=pos_weight, reduction="none"
        )
        norm = torch.tensor(float(t.numel()), device=logits.device)
    else:
        per_query = F.cross_entropy(z, t, weight=class_weights, reduction="none")
        w = class_weights[t] if class_weights is not None else torch.ones_like(per_query)
        norm = w.detach().float().sum()
    total = global_sum(norm)
    if float(total) == 0.0:
        return logits.sum() * 0.0
    return per_query.sum() * world / total


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two embeddings ``(B, N, D)``.

    For every query slot n, the positives are the same chip's pair and the negatives the
    other chips of the (global) batch at that slot (the reference's formulation, averaged over
    slots and directions instead of summed). In a process group the negatives are gathered from
    every rank.
    """
    world = shard()[1]
    a_all, first = gather_rows(a)
    b_all, _ = gather_rows(b)
    n_global = a_all.shape[0]
    if n_global < 2:
        return a.sum() * 0.0
    a_loc = F.normalize(a, dim=-1).transpose(0, 1)  # (N, b, D): this rank's chips
    b_loc = F.normalize(b, dim=-1).transpose(0, 1)
    a_glob = F.normalize(a_all, dim=-1).transpose(0, 1)  # (N, B, D): every rank's chips
    b_glob = F.normalize(b_all, dim=-1).transpose(0, 1)
    n_slots, n_local = a_loc.shape[0], a_loc.shape[1]
    target = (torch.arange(n_local, device=a.device) + first).expand(n_slots, -1).flatten()
    ab = (a_loc @ b_glob.transpose(1, 2) / temperature).flatten(0, 1)  # (N * b, B)
    ba = (b_loc @ a_glob.transpose(1, 2) / temperature).flatten(0, 1)
    total = F.cross_entropy(ab, target, reduction="sum") + F.cross_entropy(
        ba, target, reduction="sum"
    )
    return 0.5 * total * world / (n_slots * n_global)


def merged_aux(aux: Mapping[str, float] | None) -> dict[str, float]:
    """:data:`DEFAULT_AUX` with ``aux`` merged key by key; unknown names are an error."""
    aux = dict(aux or {})
    unknown = sorted(set(aux) - set(AUX_LOSSES))
    if unknown:
        raise MisoBenchError(
            f"unknown auxiliary loss {unknown[0]!r} in model.params.aux; valid: "
            f"{', '.join(AUX_LOSSES)}"
        )
    return {**DEFAULT_AUX, **{k: float(v) for k, v in aux.items()}}


class MisoLoss(nn.Module):
    """Base loss plus weighted auxiliary terms.

    Args:
        binary: binary task (BCE on one logit) or multi-class (CE).
        aux: auxiliary loss name -> weight (see :data:`AUX_LOSSES`); taken as given.
        temperature: InfoNCE temperature.
        class_weights: optional per-class weights of the supervised losses.
    """

    def __init__(
        self,
        binary: bool,
        aux: Mapping[str, float] | None = None,
        temperature: float = 0.1,
        class_weights: torch.Tensor | None = None,
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
        base = supervised_loss(outputs["logits"], y, self.binary, self._weights())
        total = base
        parts = {"loss/base": float(base.detach())}
        for name, weight in self.active(outputs).items():
            if name == "geo":
                term = supervised_loss(outputs["geo_logits"], y, self.binary, self._weights())
            else:
                a, b = AUX_LOSSES[name]
                term = info_nce(outputs[a], outputs[b], self.temperature)
            total = total + weight * term
            parts[f"loss/{name}"] = float(term.detach())
        return total, parts
