"""The MISO network: encoders, implicit query decoders, location encoder, fusion and heads.

One encoded chip answers any number of query points: the encoders run once per chip and
the implicit decoders evaluate each query from the four nearest cells of every stage.

Fusion decoders (``decoder``):
- ``dual`` (the reference's default): the prediction comes from imagery (and covariates);
  location acts through its own head and the contrastive losses only;
- ``naive``: location embedding added to the visual embedding before the head;
- ``attn``: the location embedding attends over the per-stage query outputs (residual);
- ``visual_only``: no location branch;
- ``geo_only``: location alone (no imagery).
Query modes: ``implicit`` (the INR) or ``center`` (no implicit decoder: every query gets
the global-average features of the chip, an ablation of the INR).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .backbones import ConvEncoder, SwinEncoder
from .inr import ImplicitQueryDecoder
from .location import LocationEncoder

__all__ = ["MisoConfig", "MisoNet"]

DECODERS = ("dual", "naive", "attn", "visual_only", "geo_only")


@dataclass
class MisoConfig:
    """Architecture of a MISO network.

    Attributes:
        n_outputs: logits per query (1 for binary tasks, K for multi-class).
        s2_bands, cov_bands: input bands of the two modalities (0 disables covariates).
        embed_dim, depths, num_heads, window: Swin-V2 of the Sentinel-2 encoder.
        cov_encoder: ``swin`` (same shape as the Sentinel-2 encoder) or ``cnn``.
        cov_width: width of the CNN covariate encoder.
        dim: width of the query embeddings, mappers and heads.
        fusion: stage fusion of the implicit decoder (``sum`` or ``concat``).
        decoder: one of ``dual``, ``naive``, ``attn``, ``visual_only``, ``geo_only``.
        query: ``implicit`` or ``center``.
        location: ``gridcell`` or ``theory``; n_freq, min_scale: its frequencies.
        drop_path: stochastic depth of the Swin encoders.
        dropout: dropout of the location encoder's MLP.
    """

    n_outputs: int
    s2_bands: int = 9
    cov_bands: int = 10
    embed_dim: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window: int = 4
    cov_encoder: str = "cnn"
    cov_width: int = 32
    dim: int = 128
    fusion: str = "sum"
    decoder: str = "dual"
    query: str = "implicit"
    location: str = "gridcell"
    n_freq: int = 32
    min_scale: float = 5e-4
    drop_path: float = 0.1
    dropout: float = 0.1
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_preset(cls, settings: dict, **overrides: object) -> MisoConfig:
        """A config with the architecture of a preset (see ``estimator.PRESETS``)."""
        arch = {k: settings[k] for k in ("embed_dim", "window", "cov_encoder", "cov_width", "dim")}
        arch["depths"] = tuple(settings["depths"])
        arch["num_heads"] = tuple(settings["num_heads"])
        return cls(**{**arch, **overrides})


def _mlp(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, dim),
        nn.GELU(),
        nn.Linear(dim, dim // 2),
        nn.GELU(),
        nn.Linear(dim // 2, out),
    )


def _mapper(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.LayerNorm(dim))


class MisoNet(nn.Module):
    """The network. ``forward`` returns logits and the embeddings the losses need."""

    def __init__(self, cfg: MisoConfig) -> None:
        super().__init__()
        if cfg.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {cfg.decoder!r}; use one of {DECODERS}")
        if cfg.query not in ("implicit", "center"):
            raise ValueError(f"unknown query mode {cfg.query!r}; use implicit or center")
        self.cfg = cfg
        d = cfg.dim
        self.uses_images = cfg.decoder != "geo_only"
        self.uses_location = cfg.decoder != "visual_only"
        if self.uses_images:
            self.s2_encoder = SwinEncoder(
                cfg.s2_bands, cfg.embed_dim, cfg.depths, cfg.num_heads, cfg.window, cfg.drop_path
            )
            self.s2_query = ImplicitQueryDecoder(self.s2_encoder.stage_dims, d, fusion=cfg.fusion)
            self.s2_mapper = _mapper(d)
            if cfg.cov_bands:
                if cfg.cov_encoder == "swin":
                    self.cov_encoder: nn.Module = SwinEncoder(
                        cfg.cov_bands,
                        cfg.embed_dim,
                        cfg.depths,
                        cfg.num_heads,
                        cfg.window,
                        cfg.drop_path,
                    )
                elif cfg.cov_encoder == "cnn":
                    self.cov_encoder = ConvEncoder(cfg.cov_bands, cfg.cov_width)
                else:
                    raise ValueError(f"unknown covariate encoder {cfg.cov_encoder!r}")
                self.cov_query = ImplicitQueryDecoder(
                    self.cov_encoder.stage_dims, d, fusion=cfg.fusion
                )
                self.cov_mapper = _mapper(d)
            self.visual_mapper = _mapper(d)
            self.head = _mlp(d, cfg.n_outputs)
        if self.uses_location:
            self.location = LocationEncoder(
                d, cfg.location, cfg.n_freq, cfg.min_scale, dropout=cfg.dropout
            )
            self.geo_mapper = _mapper(d)
            self.geo_head = _mlp(d, cfg.n_outputs)
        if cfg.decoder == "attn":
            self.attn = nn.MultiheadAttention(d, num_heads=4, batch_first=True)
        if cfg.decoder == "naive":
            self.fuse_mapper = _mapper(d)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the image encoders (their learning rate has a multiplier)."""
        params: list[nn.Parameter] = []
        for name in ("s2_encoder", "cov_encoder"):
            if hasattr(self, name):
                params += list(getattr(self, name).parameters())
        return params

    def _query(
        self,
        decoder: ImplicitQueryDecoder,
        fmaps: list[torch.Tensor],
        q: torch.Tensor,
        exact: bool,
        chip: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.cfg.query == "center":
            # Ablation: no implicit decoder, every query sees the chip-centre features: decoded
            # once per chip (every query to the straightforward formulation).
            if exact:
                return decoder(fmaps, torch.zeros_like(q), exact, chip), []
            per_chip = decoder(fmaps, q.new_zeros(fmaps[0].shape[0], 1, 2))  # (B, 1, D)
            if chip is not None:
                return per_chip[chip.reshape(-1), 0][None], []
            # One row per chip; :meth:`decode` broadcasts it to the queries at the end.
            return per_chip, []
        if self.cfg.decoder == "attn":  # the fused embedding and the stages it came from
            stages = decoder.stage_outputs(fmaps, q, exact, chip)
            return decoder.fuse(stages, exact), stages
        return decoder(fmaps, q, exact, chip), []

    def encode(
        self, s2: torch.Tensor | None, cov: torch.Tensor | None
    ) -> dict[str, list[torch.Tensor]]:
        """Run the image encoders once per chip: their four stage outputs per modality."""
        feats: dict[str, list[torch.Tensor]] = {}
        if not self.uses_images:
            return feats
        if s2 is None:
            raise ValueError("this decoder needs the Sentinel-2 chip")
        feats["s2"] = self.s2_encoder(s2)
        if hasattr(self, "cov_encoder"):
            if cov is None:
                raise ValueError("this model needs the covariate chip")
            feats["cov"] = self.cov_encoder(cov)
        return feats

    def forward(
        self,
        s2: torch.Tensor | None,
        cov: torch.Tensor | None,
        query_xy: torch.Tensor,
        loc_xy: torch.Tensor,
        exact: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Encode the chips and decode queries (:meth:`encode` then :meth:`decode`).

        Args:
            s2: ``(B, 9, H, W)`` normalised Sentinel-2 chip (None for ``geo_only``).
            cov: ``(B, 10, H, W)`` normalised covariates (None without covariates).
            query_xy: ``(B, N, 2)`` query positions in the chip, in [-1, 1].
            loc_xy: ``(B, N, 2)`` normalised positions of the queries in the dataset (see
                :class:`~miso_bench.models.miso.location.LocationNormalizer`).
            exact: use the straightforward implicit-decoder formulation (tests, benchmarks).
        """
        return self.decode(self.encode(s2, cov), query_xy, loc_xy, exact)

    def decode(
        self,
        feats: dict[str, list[torch.Tensor]],
        query_xy: torch.Tensor,
        loc_xy: torch.Tensor,
        exact: bool = False,
        chip: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Decode queries from encoded chips (one encoding answers any number of queries).

        With ``chip`` (``(1, M)``, long), ``query_xy`` and ``loc_xy`` are ``(1, M, 2)``: the
        queries of every chip in one row, ``chip`` naming each one's chip (chips with few
        queries each, e.g. sparse points, are decoded together without padding).

        Returns:
            ``logits (B, N, n_outputs)``, ``head_emb`` (what the head reads) and, when
            present, ``geo_logits``, ``s2_emb``, ``cov_emb``, ``visual_emb``, ``geo_emb`` (each
            ``(B, N, dim)``).
        """
        out: dict[str, torch.Tensor] = {}
        geo = None
        if self.uses_location:
            geo = self.location(loc_xy)
            out["geo_emb"] = geo
            geo_hidden = self.geo_mapper(geo)
            out["geo_logits"] = self.geo_head(geo_hidden)
        if not self.uses_images:
            out["logits"] = out["geo_logits"]
            out["head_emb"] = geo_hidden  # what the head reads
            return out
        s2_emb, stages = self._query(self.s2_query, feats["s2"], query_xy, exact, chip)
        s2_emb = self.s2_mapper(s2_emb)
        out["s2_emb"] = s2_emb
        visual = s2_emb
        if hasattr(self, "cov_encoder"):
            cov_emb, _ = self._query(self.cov_query, feats["cov"], query_xy, exact, chip)
            cov_emb = self.cov_mapper(cov_emb)
            out["cov_emb"] = cov_emb
            visual = visual + cov_emb
        visual = self.visual_mapper(visual)
        if self.cfg.decoder == "attn" and geo is not None and stages:
            b, n, d = visual.shape
            keys = torch.stack(stages, dim=2).reshape(b * n, len(stages), d)
            attended, _ = self.attn(geo.reshape(b * n, 1, d), keys, keys)
            visual = visual + attended.reshape(b, n, d)
        out["visual_emb"] = visual
        if self.cfg.decoder == "naive" and geo is not None:
            out["head_emb"] = self.fuse_mapper(visual + 0.1 * geo)
        else:
            out["head_emb"] = visual
        out["logits"] = self.head(out["head_emb"])
        b, n, _ = query_xy.shape
        for key in ("s2_emb", "cov_emb", "visual_emb", "head_emb", "logits"):
            if key in out and out[key].shape[1] != n:  # the `center` ablation: one per chip
                out[key] = out[key].expand(b, n, -1)
        return out
