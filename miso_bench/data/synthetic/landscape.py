"""One synthetic landscape: terrain, climate, latent soil state, land cover and Sentinel-2.

The rules here are the benchmark's ground truth and are documented in
``datasets/synthetic_alaska/README.md``. They are physically motivated (lapse rate, cold-air
pooling, aspect, wetness, river taliks, volcanic ash, the Soil Taxonomy key order) and fixed:
they must not be tuned to favour any model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from .sites import Site
from .terrain import TERRAIN_BANDS, fractal_surface, gaussian_field, terrain_derivatives

__all__ = [
    "CLIMATE_BANDS",
    "COVER_CLASSES",
    "PF_ZONES",
    "S2_BANDS",
    "TAX_ORDERS",
    "Landscape",
    "build_landscape",
    "permafrost_zone_codes",
]

#: Sentinel-2 bands in SatlasPretrain order.
S2_BANDS = ("B04", "B03", "B02", "B05", "B06", "B07", "B08", "B11", "B12")
#: Climate layers, in the reference's order.
CLIMATE_BANDS = ("ppt_annual", "tmean_swi", "tmin_january")
#: The seven USDA soil orders of the study, in the reference's class-index order.
TAX_ORDERS = (
    "Andisols",
    "Entisols",
    "Gelisols",
    "Histosols",
    "Inceptisols",
    "Mollisols",
    "Spodosols",
)
#: Permafrost zones, coldest first, with the upper MAAT bound (deg C) of each.
PF_ZONES = (
    ("continuous", -5.0),
    ("discontinuous", -1.0),
    ("sporadic", 1.0),
    ("isolated", 2.0),
    ("none", np.inf),
)

LAPSE_C_PER_M = -0.0065
#: Land-cover classes and their mid-summer L2A reflectance (x10,000) in :data:`S2_BANDS` order.
COVER_CLASSES: dict[str, tuple[int, ...]] = {
    "water": (200, 350, 400, 250, 200, 150, 150, 80, 60),
    "black_spruce": (250, 400, 250, 700, 1250, 1800, 2000, 1100, 500),
    "birch_aspen": (300, 600, 300, 1000, 2100, 3200, 3500, 1700, 700),
    "tussock_tundra": (450, 600, 350, 1000, 1750, 2500, 2700, 2000, 1100),
    "shrub": (350, 600, 300, 1000, 2000, 3000, 3300, 1800, 800),
    "wet_sedge": (400, 550, 350, 800, 1400, 2000, 2200, 1500, 700),
    "bare": (1500, 1300, 1100, 1600, 1750, 1900, 2000, 2600, 2200),
    "coastal_conifer": (200, 380, 220, 650, 1400, 2100, 2300, 1000, 420),
}
_COVER_INDEX = {name: i for i, name in enumerate(COVER_CLASSES)}
_REFLECTANCE = np.array(list(COVER_CLASSES.values()), dtype=np.float32)
S2_NODATA = -32768


@dataclass
class Landscape:
    """All rasters of one site, in map orientation (row 0 is north), plus vector hints.

    Attributes:
        s2: Sentinel-2 reflectance, int16, ``(9, n, n)``, :data:`S2_NODATA` where cloud-masked.
        terrain: ``(7, n, n)`` float32 in :data:`~.terrain.TERRAIN_BANDS` order.
        climate: ``(3, n, n)`` float32 in :data:`CLIMATE_BANDS` order.
        pf1m: true permafrost within 1 m, bool ``(n, n)``.
        tax_order: true soil order index into :data:`TAX_ORDERS`, int8 ``(n, n)``.
        cover: land-cover index into :data:`COVER_CLASSES`, int8 ``(n, n)``.
        zone_maat_c: smoothed regional MAAT used for permafrost-zone polygons.
        road_rc: ``(k, 2)`` row/col vertices of the site's road.
        river_rc: ``(k, 2)`` row/col vertices of the site's main river.
    """

    s2: np.ndarray
    terrain: np.ndarray
    climate: np.ndarray
    pf1m: np.ndarray
    tax_order: np.ndarray
    cover: np.ndarray
    zone_maat_c: np.ndarray
    road_rc: np.ndarray
    river_rc: np.ndarray


def _meander(rng: np.random.Generator, n: int, wiggle: float) -> np.ndarray:
    """A smooth curve crossing the window from one edge to the opposite one (row/col, float)."""
    t = np.linspace(0.0, 1.0, 4 * n)
    offset = np.zeros_like(t)
    for k in range(1, 5):
        offset += rng.normal(0.0, wiggle / k) * np.sin(np.pi * k * t + rng.uniform(0, np.pi))
    start = rng.uniform(0.2, 0.8) * n
    end = rng.uniform(0.2, 0.8) * n
    across = start + (end - start) * t + offset * n
    along = t * (n - 1)
    curve = np.stack([along, across], axis=1)
    if rng.random() < 0.5:  # west-east instead of north-south
        curve = curve[:, ::-1]
    return np.clip(curve, 0, n - 1)


def _distance_to_curve_px(curve_rc: np.ndarray, n: int) -> np.ndarray:
    """Euclidean distance (pixels) from every cell to a polyline given by dense vertices."""
    grid = np.ones((n, n), dtype=bool)
    rc = np.round(curve_rc).astype(int)
    grid[rc[:, 0], rc[:, 1]] = False
    return ndi.distance_transform_edt(grid)


def permafrost_zone_codes(maat_c: np.ndarray) -> np.ndarray:
    """Index into :data:`PF_ZONES` from mean annual air temperature (rule of thumb)."""
    bounds = np.array([b for _, b in PF_ZONES[:-1]])
    return np.searchsorted(bounds, maat_c, side="right").astype(np.int8)


def build_landscape(site: Site, size_px: int, res_m: float, rng: np.random.Generator) -> Landscape:
    """Generate every raster of one site deterministically from ``rng``."""
    n = size_px
    # Feature sizes below are fixed in pixels (10 m), so in metres too, whatever the window;
    # only the relief grows with the window (fractal terrain).
    scale = n / 512.0

    # --- terrain: fractal relief, a regional tilt and a carved river valley -----------------
    macro = fractal_surface(rng, n, beta=3.4)
    macro = (macro - macro.min()) / (np.ptp(macro) + 1e-12)
    yy, xx = np.mgrid[0:n, 0:n] / n
    tilt_dir = rng.uniform(0, 2 * np.pi)
    tilt = np.cos(tilt_dir) * xx + np.sin(tilt_dir) * yy
    tilt = (tilt - tilt.min()) / (np.ptp(tilt) + 1e-12)
    river_rc = _meander(rng, n, wiggle=0.08)
    river_dist_px = _distance_to_curve_px(river_rc, n)
    valley = np.exp(-((river_dist_px * res_m / 400.0) ** 2))
    relief_field = 0.8 * macro + 0.35 * tilt - 0.45 * valley
    relief_field = (relief_field - relief_field.min()) / (np.ptp(relief_field) + 1e-12)
    # Relief is quoted for a 512 px (5.12 km) window; fractal relief grows with extent roughly
    # as size**H (Hurst exponent ~0.8), which keeps slopes comparable across presets.
    relief_m = site.relief_m * scale**0.8
    dem = site.base_elev_m + relief_m * relief_field
    # Micro-relief (hummocks, polygon rims): a few decimetres, fractal.
    dem = dem + 0.25 * fractal_surface(rng, n, beta=2.4)
    routing_dem = ndi.gaussian_filter(dem, sigma=3.0)
    terr = terrain_derivatives(dem, res_m, routing_dem=routing_dem)
    slope, aspect, acc = terr["sl_4"], terr["aspct_4"], terr["flow_acc"]
    twi_z = (terr["swi_10"] - 6.0) / 2.0  # fixed constants: wetness relative to typical 10 m TWI

    # --- climate: latitude/continentality via the site anchor, lapse rate, inversions -------
    smooth_dem = ndi.gaussian_filter(dem, sigma=20.0)
    dz = smooth_dem - site.base_elev_m
    # Cold-air pooling: continental valley bottoms are colder than mid-slopes in winter.
    inversion = site.continentality * np.clip(dz / 300.0, 0.0, 1.0)
    climate_noise = gaussian_field(rng, n, range_px=120)
    tmin_jan = site.tmin_jan_c + LAPSE_C_PER_M * dz + 6.0 * inversion + 0.4 * climate_noise
    maat = site.maat_c + LAPSE_C_PER_M * dz + 2.0 * inversion + 0.2 * climate_noise
    swi = np.maximum(site.swi_c + 4.0 * LAPSE_C_PER_M * dz + 0.8 * climate_noise, 0.0)
    ppt = site.precip_mm * (1.0 + 0.6 * np.clip(dz, 0, None) / 1000.0) * (1 + 0.04 * climate_noise)
    climate = np.stack([ppt, swi, tmin_jan]).astype(np.float32)

    # --- latent soil state ---------------------------------------------------------------------
    slope_w = np.clip(slope / 15.0, 0.0, 1.0)
    northness = np.cos(np.radians(aspect)) * slope_w
    river_talik = np.exp(-((river_dist_px * res_m / 100.0) ** 2))
    ground_noise = gaussian_field(rng, n, range_px=40)
    # Mean annual ground temperature proxy: snow keeps ground ~2.5 C warmer than air; north
    # slopes, wet (mossy, organic) ground stay colder; rivers keep a thawed talik.
    ground_t = (
        maat
        + 2.5
        - 1.5 * northness
        - 0.8 * np.clip(twi_z, -1.5, 2.0)
        + 2.5 * river_talik
        + 0.8 * ground_noise
    )
    pf1m = ground_t < 0.0

    u_wet, u_spod, u_ash, u_moll, u_young = (gaussian_field(rng, n, 30) for _ in range(5))
    wet_flat = (twi_z + 0.5 * u_wet > 1.0) & (slope < 2.5) & ((swi > 15) | (ppt > 400))
    ash_local = site.ash * (0.75 + 0.25 * u_ash)
    spodic = (ppt + 250 * u_spod > 700) & (twi_z < 0.8) & (swi > 30) & (ash_local < 0.6)
    andic = (ash_local > 0.45) & (slope < 35)
    southness = -np.cos(np.radians(aspect))
    mollic = (
        (swi > 48)
        & (ppt < 330)
        & (southness > 0.3)
        & (slope > 5)
        & (slope < 30)
        & (twi_z < 0.0)
        & (u_moll > 0.3)
    )
    floodplain = (river_dist_px * res_m < 200.0) & (dz < relief_m * 0.5 + 5)
    young = (slope > 30 + 4 * u_young) | floodplain
    # The Soil Taxonomy key: the first order whose condition holds wins (assigning in reverse
    # lets earlier orders overwrite later ones). "Young" soils without a cambic horizon key out
    # as Entisols instead of the Inceptisols default.
    order = np.full((n, n), TAX_ORDERS.index("Inceptisols"), dtype=np.int8)
    for name, cond in reversed(
        [
            ("Gelisols", pf1m),
            ("Histosols", wet_flat),
            ("Spodosols", spodic),
            ("Andisols", andic),
            ("Mollisols", mollic),
            ("Entisols", young),
        ]
    ):
        order[cond] = TAX_ORDERS.index(name)

    # --- land cover: follows soil state and climate at the patch scale ------------------------
    patch = gaussian_field(rng, n, range_px=12)
    pf_s = ndi.gaussian_filter(pf1m.astype(np.float32), sigma=3.0)
    wet_s = ndi.gaussian_filter(twi_z, sigma=3.0) + 0.4 * patch
    ponds = gaussian_field(rng, n, range_px=5)
    forest_climate = swi + 5.0 * patch > 35.0
    cover = np.full((n, n), _COVER_INDEX["tussock_tundra"], dtype=np.int8)
    drainage = (np.log10(acc) > 2.2) | (river_dist_px * res_m < 150)
    tundra = ~forest_climate
    cover[tundra & drainage] = _COVER_INDEX["shrub"]
    cover[tundra & (slope > 12) & ~pf1m] = _COVER_INDEX["shrub"]
    cover[tundra & (wet_s > 0.8)] = _COVER_INDEX["wet_sedge"]
    forest = forest_climate
    cover[forest] = _COVER_INDEX["birch_aspen"]
    cover[forest & (ppt > 900)] = _COVER_INDEX["coastal_conifer"]
    cover[forest & drainage & (pf_s < 0.5)] = _COVER_INDEX["shrub"]
    cover[forest & (pf_s > 0.5)] = _COVER_INDEX["black_spruce"]
    cover[forest & (patch < -1.0) & (ppt <= 900)] = _COVER_INDEX["black_spruce"]
    cover[forest & (wet_s > 1.2) & (pf_s <= 0.5)] = _COVER_INDEX["wet_sedge"]
    cover[(slope > 32) & ((swi < 30) | (patch > 0.5))] = _COVER_INDEX["bare"]
    # Thaw ponds over ice-rich, wet, flat permafrost; gravel bars and the channel itself.
    thaw_ponds = (pf_s > 0.6) & (wet_s > 0.6) & (slope < 3) & (ponds > 1.3)
    cover[thaw_ponds] = _COVER_INDEX["water"]
    cover[(river_dist_px * res_m < 60) & (ponds > 0.8)] = _COVER_INDEX["bare"]
    cover[river_dist_px * res_m < 35] = _COVER_INDEX["water"]
    water = cover == _COVER_INDEX["water"]

    # --- Sentinel-2: per-cover spectra, patch variation, illumination, texture, noise --------
    refl = _REFLECTANCE[cover].transpose(2, 0, 1).copy()  # (9, n, n)
    within = gaussian_field(rng, n, range_px=8)
    refl *= (1.0 + 0.08 * within)[None]
    sun_az, sun_el = np.radians(150.0), np.radians(45.0)
    s_r, a_r = np.radians(slope), np.radians(aspect)
    cos_i = np.sin(sun_el) * np.cos(s_r) + np.cos(sun_el) * np.sin(s_r) * np.cos(sun_az - a_r)
    illumination = np.clip(0.7 + 0.3 * cos_i / np.sin(sun_el), 0.5, 1.3)
    refl *= np.where(water, 1.0, illumination)[None]
    # Patterned ground: polygon troughs (~50 m) over ice-rich permafrost darken NIR and SWIR.
    theta = rng.uniform(0, np.pi)
    rr, cc = np.mgrid[0:n, 0:n]
    u = (np.cos(theta) * cc + np.sin(theta) * rr) * res_m / 50.0
    v = (-np.sin(theta) * cc + np.cos(theta) * rr) * res_m / 50.0
    troughs = (np.cos(2 * np.pi * u) > 0.7) | (np.cos(2 * np.pi * v) > 0.7)
    patterned = troughs & (pf_s > 0.7) & (slope < 3) & ~water
    refl[6:, patterned] *= 0.85
    refl *= 1.0 + 0.03 * rng.standard_normal(refl.shape).astype(np.float32)
    refl = ndi.gaussian_filter(refl, sigma=(0, 0.6, 0.6))  # sensor point-spread mixing
    s2 = np.clip(np.round(refl), 1, 10_000).astype(np.int16)
    # Cloud/shadow gaps left in the composite: blobs covering 0.2-2 % of every site.
    cloud_field = gaussian_field(rng, n, range_px=25)
    clouds = cloud_field > np.quantile(cloud_field, 1.0 - rng.uniform(0.002, 0.02))
    s2[:, clouds] = S2_NODATA

    terrain = np.stack([terr[b] for b in TERRAIN_BANDS]).astype(np.float32)
    zone_maat = ndi.gaussian_filter(maat, sigma=30.0)
    return Landscape(
        s2=s2,
        terrain=terrain,
        climate=climate,
        pf1m=pf1m,
        tax_order=order,
        cover=cover,
        zone_maat_c=zone_maat,
        road_rc=_meander(rng, n, wiggle=0.12),
        river_rc=river_rc,
    )
