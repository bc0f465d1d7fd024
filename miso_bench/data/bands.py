"""Sentinel-2 bands by name, whatever a delivery calls them or in whatever order it stacks them.

MISO's image encoder reads the nine bands of SatlasPretrain's Sentinel-2 model in Satlas order
(B04, B03, B02, B05, B06, B07, B08, B11, B12). A dataset may hold them in any order, among
other bands (B01, B8A, B09...), and spell them ``B4`` or ``B04`` (any case). The imagery is the
``sentinel2`` modality when there is one, otherwise the first modality holding all nine.
"""

from __future__ import annotations

import re

from ..errors import DatasetError
from .manifest import DatasetManifest

__all__ = ["SATLAS_S2_BANDS", "canonical_s2_name", "find_s2_bands"]

#: The bands of the Satlas Sentinel-2 encoder, in its input order.
SATLAS_S2_BANDS = ("B04", "B03", "B02", "B05", "B06", "B07", "B08", "B11", "B12")
#: Models that need no imagery (what runs on a dataset without Sentinel-2).
MODELS_WITHOUT_IMAGERY = ("rf", "xgboost", "majority", "coords_only", "geo_only")

_NAME = re.compile(r"^(?:sentinel[-_ ]?2[-_ ]?|s2[-_ ]?)?b(?:and)?[-_ ]?0*(\d{1,2})(a?)$", re.I)


def canonical_s2_name(name: str) -> str | None:
    """``B04`` for ``B4``, ``b04``, ``band_4`` or ``S2_B4``; ``B8A`` for ``B8a``; None for a
    name that is not a Sentinel-2 band."""
    m = _NAME.match(name.strip())
    if m is None:
        return None
    number, suffix = int(m.group(1)), m.group(2).upper()
    if not 1 <= number <= 12:
        return None
    return f"B{number:02d}" if not suffix else f"B{number}A"


def find_s2_bands(manifest: DatasetManifest) -> tuple[str, list[str]]:
    """The imagery modality and its band names for the Satlas bands, in Satlas order.

    Raises:
        DatasetError: no modality holds the nine bands (naming the missing ones, or the
            models that run without imagery).
    """
    order = sorted(manifest.modalities, key=lambda n: n != "sentinel2")
    best: tuple[str, list[str]] | None = None
    for name in order:
        spec = manifest.modalities[name]
        by_canon: dict[str, str] = {}
        for band in spec.bands:
            canon = canonical_s2_name(band)
            if canon is not None and canon not in by_canon:
                by_canon[canon] = band
        missing = [b for b in SATLAS_S2_BANDS if b not in by_canon]
        if not missing:
            return name, [by_canon[b] for b in SATLAS_S2_BANDS]
        if by_canon and (best is None or name == "sentinel2"):
            best = (name, missing)
    if best is not None:
        name, missing = best
        raise DatasetError(
            manifest.path,
            f"modalities.{name}.bands",
            f"MISO needs the Sentinel-2 bands {', '.join(SATLAS_S2_BANDS)}; "
            f"{', '.join(missing)} missing",
            "name the bands B02...B12 (B4 and B04 both work) or use a model without imagery: "
            + ", ".join(MODELS_WITHOUT_IMAGERY),
        )
    raise DatasetError(
        manifest.path,
        "modalities",
        f"MISO needs Sentinel-2 imagery (bands {', '.join(SATLAS_S2_BANDS)}); this dataset "
        f"has {', '.join(manifest.modalities)}",
        "add the imagery, or run a model that needs none: " + ", ".join(MODELS_WITHOUT_IMAGERY),
    )
