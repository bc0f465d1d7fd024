"""MISO: foundation-model encoder, implicit neural representation decoder, contrastive
alignment of imagery, covariates and location; every ablation is a registry entry."""

from ..base import register_model
from .estimator import PRESETS, MisoModel

__all__ = ["PRESETS", "MisoModel"]

_FEATURES = ("coords",)  # the engine hands MISO pedon coordinates; it reads its own chips

register_model(
    "miso",
    MisoModel,
    {},
    _FEATURES,
    kind="chips",
    family="miso",
    description="MISO: Swin-V2 Sentinel-2 encoder + covariate encoder, implicit "
    "query decoder, location encoder (dual fusion), InfoNCE alignment",
)
register_model(
    "miso_no_geo",
    MisoModel,
    {"decoder": "visual_only", "aux": {"geo": 0.0, "visual_geo_nce": 0.0}},
    _FEATURES,
    kind="chips",
    family="miso",
    description="MISO without the location branch",
)
register_model(
    "miso_no_contrastive",
    MisoModel,
    {"aux": {"sat_cov_nce": 0.0, "visual_geo_nce": 0.0}},
    _FEATURES,
    kind="chips",
    family="miso",
    description="MISO without the InfoNCE terms",
)
register_model(
    "miso_sat_only",
    MisoModel,
    {"use_cov": False, "aux": {"sat_cov_nce": 0.0}},
    _FEATURES,
    kind="chips",
    family="miso",
    description="MISO on Sentinel-2 alone (no terrain/climate)",
)
register_model(
    "miso_naive_fusion",
    MisoModel,
    {"decoder": "naive"},
    _FEATURES,
    kind="chips",
    family="miso",
    description="MISO with additive location fusion",
)
register_model(
    "miso_attn_fusion",
    MisoModel,
    {"decoder": "attn"},
    _FEATURES,
    kind="chips",
    family="miso",
    description="MISO with location-attended queries",
)
register_model(
    "miso_center_query",
    MisoModel,
    {"query": "center"},
    _FEATURES,
    kind="chips",
    family="miso",
    description="MISO without the implicit decoder (chip-centre features only)",
)
register_model(
    "miso_scratch",
    MisoModel,
    {"pretrained": "none"},
    _FEATURES,
    kind="chips",
    family="miso",
    description="MISO from random initialisation (no Satlas weights)",
)
register_model(
    "miso_no_unlabeled",
    MisoModel,
    {"unlabeled_ratio": 0.0},
    _FEATURES,
    kind="chips",
    family="miso",
    description="MISO without unlabelled chips",
)
register_model(
    "geo_only",
    MisoModel,
    {"decoder": "geo_only", "aux": {"geo": 0.0, "sat_cov_nce": 0.0, "visual_geo_nce": 0.0}},
    _FEATURES,
    kind="chips",
    family="miso",
    description="location encoder alone (no imagery)",
)
