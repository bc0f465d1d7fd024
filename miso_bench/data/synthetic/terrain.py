"""Fractal terrain and its standard derivatives on a regular grid.

All functions take and return ``float32``/``float64`` arrays in map orientation (row 0 is north)
with square cells of ``res_m`` metres, so they apply equally to synthetic and real DEMs.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = [
    "TERRAIN_BANDS",
    "aspect_deg",
    "flow_accumulation",
    "fractal_surface",
    "gaussian_field",
    "horn_gradients",
    "max_curvature",
    "slope_deg",
    "stream_power_index",
    "terrain_derivatives",
    "topographic_position_index",
    "wetness_index",
]

#: Band names of the terrain modality, in the reference's order (IfSAR DEM derivatives).
TERRAIN_BANDS = ("aspct_4", "elevation_full_10m_3338", "maxc_4", "sl_4", "spi", "swi_10", "tpi_4")


def fractal_surface(rng: np.random.Generator, size_px: int, beta: float = 3.2) -> np.ndarray:
    """Return a zero-mean, unit-std fractal (power-law spectrum) surface.

    Args:
        rng: random generator (consumed deterministically).
        size_px: side length of the square output.
        beta: spectral exponent; 3.0-3.5 gives natural-looking terrain.
    """
    white = rng.standard_normal((size_px, size_px))
    fy = np.fft.fftfreq(size_px)[:, None]
    fx = np.fft.rfftfreq(size_px)[None, :]
    freq = np.sqrt(fx**2 + fy**2)
    freq[0, 0] = 1.0
    amplitude = freq ** (-beta / 2.0)
    amplitude[0, 0] = 0.0
    surface = np.fft.irfft2(np.fft.rfft2(white) * amplitude, s=(size_px, size_px))
    surface -= surface.mean()
    surface /= surface.std() + 1e-12
    return surface


def gaussian_field(rng: np.random.Generator, size_px: int, range_px: float) -> np.ndarray:
    """Return a zero-mean, unit-std Gaussian random field with correlation length ``range_px``."""
    white = rng.standard_normal((size_px, size_px))
    field = ndi.gaussian_filter(white, sigma=max(range_px / 2.0, 0.5), mode="wrap")
    field -= field.mean()
    field /= field.std() + 1e-12
    return field


def horn_gradients(dem: np.ndarray, res_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Horn (1981) 3x3 finite differences: dz/dx (east) and dz/dy (north), edges replicated."""
    z = np.pad(dem.astype(np.float64), 1, mode="edge")
    a, b, c = z[:-2, :-2], z[:-2, 1:-1], z[:-2, 2:]
    d, f = z[1:-1, :-2], z[1:-1, 2:]
    g, h, i = z[2:, :-2], z[2:, 1:-1], z[2:, 2:]
    dzdx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * res_m)
    # Row index grows southward, so north-minus-south is top rows minus bottom rows.
    dzdy = ((a + 2 * b + c) - (g + 2 * h + i)) / (8 * res_m)
    return dzdx, dzdy


def slope_deg(dem: np.ndarray, res_m: float) -> np.ndarray:
    """Slope in degrees (Horn gradients)."""
    dzdx, dzdy = horn_gradients(dem, res_m)
    return np.degrees(np.arctan(np.hypot(dzdx, dzdy)))


def aspect_deg(dem: np.ndarray, res_m: float) -> np.ndarray:
    """Aspect in degrees clockwise from north (0-360), the direction the slope faces."""
    dzdx, dzdy = horn_gradients(dem, res_m)
    # Downslope direction is minus the gradient; azimuth measured clockwise from north.
    return np.mod(np.degrees(np.arctan2(-dzdx, -dzdy)), 360.0)


def max_curvature(dem: np.ndarray, res_m: float) -> np.ndarray:
    """Maximum curvature (Wood 1996) from a local quadratic fit, in 1/m."""
    z = dem.astype(np.float64)
    zxx = np.gradient(np.gradient(z, res_m, axis=1), res_m, axis=1)
    zyy = np.gradient(np.gradient(z, res_m, axis=0), res_m, axis=0)
    zxy = np.gradient(np.gradient(z, res_m, axis=1), res_m, axis=0)
    a, b, c = zxx / 2.0, zyy / 2.0, zxy
    return -a - b + np.sqrt((a - b) ** 2 + c**2)


_D8 = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def flow_accumulation(dem: np.ndarray, res_m: float) -> np.ndarray:
    """D8 flow accumulation (number of cells draining through each cell, itself included).

    Each cell drains to its steepest lower neighbour (pits and edges drain nowhere). The
    accumulation solves ``(I - P^T) a = 1`` for the drainage forest ``P`` with a sparse solver,
    which is exact and avoids a Python loop over cells.
    """
    rows, cols = dem.shape
    z = np.pad(dem.astype(np.float64), 1, mode="constant", constant_values=np.inf)
    best_drop = np.zeros(dem.shape)
    target = np.full(dem.shape, -1, dtype=np.int64)
    rr, cc = np.mgrid[0:rows, 0:cols]
    for dr, dc in _D8:
        dist = res_m * (np.sqrt(2.0) if dr and dc else 1.0)
        drop = (z[1:-1, 1:-1] - z[1 + dr : rows + 1 + dr, 1 + dc : cols + 1 + dc]) / dist
        better = drop > best_drop
        best_drop = np.where(better, drop, best_drop)
        nr = np.clip(rr + dr, 0, rows - 1)
        nc = np.clip(cc + dc, 0, cols - 1)
        target = np.where(better, nr * cols + nc, target)
    n = rows * cols
    src = np.flatnonzero(target.ravel() >= 0)
    dst = target.ravel()[src]
    # a_j = 1 + sum_{i -> j} a_i  <=>  (I - P^T) a = 1, with P[i, j] = 1 when i drains to j.
    flow = sp.csr_matrix((np.ones(src.size), (dst, src)), shape=(n, n))
    system = (sp.identity(n, format="csr") - flow).tocsc()
    acc = spla.spsolve(system, np.ones(n), permc_spec="COLAMD")
    return np.asarray(acc).reshape(rows, cols)


def stream_power_index(acc: np.ndarray, slope: np.ndarray, res_m: float) -> np.ndarray:
    """Stream power index ``SPI = A_s * tan(beta)`` with specific catchment area ``A_s`` in m."""
    specific_area = acc * res_m
    return specific_area * np.tan(np.radians(slope))


def wetness_index(acc: np.ndarray, slope: np.ndarray, res_m: float) -> np.ndarray:
    """Topographic wetness index ``ln(A_s / tan(beta))`` (slope floored at 0.1 degree)."""
    specific_area = acc * res_m
    tan_b = np.tan(np.radians(np.maximum(slope, 0.1)))
    return np.log(specific_area / tan_b)


def topographic_position_index(dem: np.ndarray, radius_px: int = 4) -> np.ndarray:
    """Elevation minus the mean elevation of the surrounding ``(2r+1)^2`` window, in metres."""
    mean = ndi.uniform_filter(dem.astype(np.float64), size=2 * radius_px + 1, mode="nearest")
    return dem - mean


def terrain_derivatives(
    dem: np.ndarray, res_m: float, routing_dem: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """All seven terrain bands of :data:`TERRAIN_BANDS`, plus ``flow_acc`` for internal use.

    Args:
        dem: elevation in metres.
        res_m: cell size in metres.
        routing_dem: surface used for flow routing (for example a smoothed DEM, as hydrological
            conditioning does); defaults to ``dem``.
    """
    slope = slope_deg(dem, res_m)
    acc = flow_accumulation(dem if routing_dem is None else routing_dem, res_m)
    return {
        "aspct_4": aspect_deg(dem, res_m),
        "elevation_full_10m_3338": dem,
        "maxc_4": max_curvature(dem, res_m),
        "sl_4": slope,
        "spi": stream_power_index(acc, slope, res_m),
        "swi_10": wetness_index(acc, slope, res_m),
        "tpi_4": topographic_position_index(dem, 4),
        "flow_acc": acc,
    }
