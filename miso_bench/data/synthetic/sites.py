"""The places of the synthetic Alaska and the presets that choose among them.

Climate anchors follow the public climatology in the project's design notes
(mean annual air temperature, annual precipitation, January minimum, summer warmth index).
These numbers are part of the benchmark's fixed rules: do not tune them to favour a model.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRESETS", "SITES", "Preset", "Site"]


@dataclass(frozen=True)
class Site:
    """One synthetic landscape: a square window at a real Alaska location.

    Attributes:
        name: short identifier (lower snake case).
        lat, lon: WGS84 location of the window centre.
        maat_c: mean annual air temperature at ``base_elev_m`` (deg C).
        precip_mm: annual precipitation at ``base_elev_m``.
        tmin_jan_c: mean January minimum temperature at ``base_elev_m``.
        swi_c: summer warmth index (sum of monthly means above 0 deg C) at ``base_elev_m``.
        base_elev_m: elevation of the lowest ground in the window.
        relief_m: typical elevation range within the window.
        continentality: 0 (maritime) to 1 (continental); drives winter cold-air pooling.
        ash: volcanic-ash influence, 0 (none) to 1 (thick tephra).
        mlra: name of the Major Land Resource Area the window lies in.
        sampling_weight: relative pedon density (field effort is uneven across Alaska).
    """

    name: str
    lat: float
    lon: float
    maat_c: float
    precip_mm: float
    tmin_jan_c: float
    swi_c: float
    base_elev_m: float
    relief_m: float
    continentality: float
    ash: float
    mlra: str
    sampling_weight: float = 1.0


SITES: dict[str, Site] = {
    s.name: s
    for s in [
        Site(
            "utqiagvik",
            71.25,
            -156.70,
            -11.0,
            120,
            -28,
            9,
            3,
            8,
            0.3,
            0.0,
            "Arctic Coastal Plain",
            0.8,
        ),
        Site(
            "prudhoe_bay",
            70.20,
            -148.50,
            -10.5,
            150,
            -30,
            12,
            8,
            12,
            0.4,
            0.0,
            "Arctic Coastal Plain",
            0.9,
        ),
        Site(
            "toolik",
            68.62,
            -149.60,
            -9.0,
            300,
            -30,
            20,
            700,
            160,
            0.6,
            0.0,
            "Arctic Foothills",
            1.3,
        ),
        Site(
            "anaktuvuk", 68.10, -151.70, -8.5, 350, -31, 17, 750, 750, 0.6, 0.0, "Brooks Range", 0.6
        ),
        Site(
            "noatak",
            67.60,
            -162.90,
            -5.5,
            280,
            -24,
            26,
            30,
            60,
            0.4,
            0.0,
            "Western Alaska Lowlands",
            0.7,
        ),
        Site(
            "nome", 64.55, -165.30, -2.5, 420, -20, 31, 20, 320, 0.3, 0.0, "Seward Peninsula", 1.0
        ),
        Site(
            "bethel",
            60.80,
            -161.70,
            -0.6,
            450,
            -18,
            38,
            5,
            12,
            0.3,
            0.0,
            "Yukon-Kuskokwim Delta",
            1.0,
        ),
        Site(
            "fairbanks",
            64.88,
            -147.70,
            -2.5,
            280,
            -30,
            56,
            130,
            260,
            0.9,
            0.0,
            "Interior Alaska Highlands",
            1.8,
        ),
        Site(
            "yukon_flats",
            66.55,
            -145.30,
            -6.0,
            170,
            -34,
            58,
            120,
            20,
            1.0,
            0.0,
            "Interior Alaska Lowlands",
            0.6,
        ),
        Site(
            "tok",
            63.30,
            -143.00,
            -4.0,
            280,
            -33,
            50,
            500,
            320,
            1.0,
            0.0,
            "Interior Alaska Highlands",
            1.0,
        ),
        Site(
            "glennallen",
            62.10,
            -145.50,
            -3.0,
            300,
            -29,
            46,
            440,
            70,
            0.8,
            0.1,
            "Copper River Plateau",
            1.0,
        ),
        Site(
            "anchorage",
            61.15,
            -149.75,
            2.5,
            420,
            -10,
            55,
            60,
            300,
            0.3,
            0.45,
            "Cook Inlet Lowlands",
            1.6,
        ),
        Site(
            "kenai",
            60.55,
            -151.20,
            1.5,
            480,
            -12,
            50,
            30,
            40,
            0.3,
            0.55,
            "Cook Inlet Lowlands",
            1.2,
        ),
        Site(
            "king_salmon",
            58.70,
            -156.60,
            0.8,
            500,
            -12,
            42,
            15,
            40,
            0.3,
            0.6,
            "Alaska Peninsula",
            0.8,
        ),
        Site(
            "cold_bay", 55.25, -162.60, 3.5, 950, -4, 30, 30, 420, 0.1, 1.0, "Alaska Peninsula", 0.7
        ),
        Site(
            "juneau", 58.35, -134.55, 5.5, 1500, -3, 60, 20, 600, 0.1, 0.0, "Southeast Alaska", 1.2
        ),
        Site(
            "ketchikan",
            55.40,
            -131.70,
            7.0,
            2600,
            -1,
            66,
            20,
            500,
            0.0,
            0.0,
            "Southeast Alaska",
            0.8,
        ),
        Site(
            "mccarthy",
            61.45,
            -142.90,
            -3.5,
            420,
            -27,
            44,
            450,
            700,
            0.8,
            0.2,
            "Copper River Plateau",
            0.5,
        ),
    ]
}


@dataclass(frozen=True)
class Preset:
    """Size of a generated dataset.

    Attributes:
        sites: names of the sites (windows) to generate.
        size_px: side of each square window in 10 m pixels.
        n_pedons: number of pedon sites in total.
        tax_order_missing: fraction of pedons with no soil order.
        pf1m_labelled: fraction of pedons with a permafrost (pf1m) observation.
        n_truth: number of dense truth pixels (true labels without label noise).
    """

    sites: tuple[str, ...]
    size_px: int
    n_pedons: int
    tax_order_missing: float
    pf1m_labelled: float
    n_truth: int


_DEFAULT_SITES = (
    "utqiagvik",
    "prudhoe_bay",
    "toolik",
    "anaktuvuk",
    "noatak",
    "nome",
    "bethel",
    "fairbanks",
    "yukon_flats",
    "tok",
    "glennallen",
    "anchorage",
    "kenai",
    "king_salmon",
    "cold_bay",
    "juneau",
)

# The reference data set: 37,252 sites, 32,132 with a soil order, ~15,000 with pf1m.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(("prudhoe_bay", "fairbanks", "cold_bay", "juneau"), 128, 480, 0.14, 0.45, 4_000),
    "default": Preset(_DEFAULT_SITES, 512, 4_000, 0.14, 0.40, 64_000),
    "paper": Preset(tuple(SITES), 1024, 37_252, 1 - 32_132 / 37_252, 15_000 / 37_252, 100_000),
}
