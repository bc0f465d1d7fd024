"""The AK050 tiling of Alaska used by the reference study (50 km tiles, 10 m pixels, EPSG:3338).

Tile ``AK050HxxVyy`` has its upper-left corner at ``x = -2,200,000 + 50 km * (H - 1)`` and
``y = 2,400,000 - 50 km * (V - 1)``; H grows eastward and V grows southward.
"""

from __future__ import annotations

import math
import re

__all__ = ["TILE_ORIGIN_X_M", "TILE_ORIGIN_Y_M", "TILE_SIZE_M", "tile_bounds", "tile_id_at"]

TILE_SIZE_M = 50_000.0
TILE_ORIGIN_X_M = -2_200_000.0
TILE_ORIGIN_Y_M = 2_400_000.0
_TILE_RE = re.compile(r"^AK050H(\d{2})V(\d{2})$")


def tile_id_at(x_m: float, y_m: float) -> str:
    """Return the AK050 tile id containing the EPSG:3338 point ``(x_m, y_m)``."""
    h = math.floor((x_m - TILE_ORIGIN_X_M) / TILE_SIZE_M) + 1
    v = math.floor((TILE_ORIGIN_Y_M - y_m) / TILE_SIZE_M) + 1
    if not (1 <= h <= 99 and 1 <= v <= 99):
        raise ValueError(f"point ({x_m:.0f}, {y_m:.0f}) lies outside the AK050 tiling")
    return f"AK050H{h:02d}V{v:02d}"


def tile_bounds(tile_id: str) -> tuple[float, float, float, float]:
    """Return ``(xmin, ymin, xmax, ymax)`` in EPSG:3338 metres of an AK050 tile id."""
    match = _TILE_RE.match(tile_id)
    if match is None:
        raise ValueError(f"{tile_id!r} is not an AK050 tile id (expected AK050HxxVyy)")
    h, v = int(match.group(1)), int(match.group(2))
    xmin = TILE_ORIGIN_X_M + TILE_SIZE_M * (h - 1)
    ymax = TILE_ORIGIN_Y_M - TILE_SIZE_M * (v - 1)
    return xmin, ymax - TILE_SIZE_M, xmin + TILE_SIZE_M, ymax
