import numpy as np
import pytest

from miso_bench.data.synthetic.terrain import (
    aspect_deg,
    flow_accumulation,
    gaussian_field,
    max_curvature,
    slope_deg,
    topographic_position_index,
    wetness_index,
)

RES = 10.0


def plane(n: int, dzdx: float, dzdy_north: float) -> np.ndarray:
    rows, cols = np.mgrid[0:n, 0:n]
    # row 0 is north, so the northward coordinate is -row
    return dzdx * cols * RES + dzdy_north * (-rows) * RES


def test_slope_of_a_plane():
    dem = plane(20, 0.1, 0.0)
    assert slope_deg(dem, RES)[5:-5, 5:-5] == pytest.approx(np.degrees(np.arctan(0.1)))


@pytest.mark.parametrize(
    ("dzdx", "dzdy", "expected"),
    [(-0.1, 0.0, 90.0), (0.1, 0.0, 270.0), (0.0, -0.1, 0.0), (0.0, 0.1, 180.0)],
)
def test_aspect_faces_downslope(dzdx, dzdy, expected):
    # A surface falling toward the east faces east (90 degrees), and so on.
    a = aspect_deg(plane(20, dzdx, dzdy), RES)[5:-5, 5:-5]
    assert np.allclose(np.mod(a - expected + 180, 360) - 180, 0, atol=1e-6)


def test_flow_accumulation_on_a_tilted_plane_collects_downslope():
    dem = plane(16, 0.0, 0.1)  # rises to the north, water flows south
    acc = flow_accumulation(dem, RES)
    assert acc.shape == dem.shape
    assert acc[0].min() == 1  # ridge cells drain only themselves
    assert acc[-1, 5] == 16  # a column of 16 cells drains to the bottom row
    assert acc.sum() == pytest.approx(sum(range(1, 17)) * 16)


def test_flow_accumulation_conserves_cells_on_random_terrain():
    rng = np.random.default_rng(0)
    dem = rng.random((30, 30))
    acc = flow_accumulation(dem, RES)
    assert (acc >= 1).all()
    assert np.allclose(acc, np.round(acc))


def test_curvature_and_tpi_vanish_on_a_plane_and_wetness_grows_with_area():
    dem = plane(20, 0.05, 0.02)
    assert np.allclose(max_curvature(dem, RES)[3:-3, 3:-3], 0, atol=1e-12)
    assert np.allclose(topographic_position_index(dem)[5:-5, 5:-5], 0, atol=1e-9)
    slope = np.full((2, 2), 5.0)
    twi = wetness_index(np.array([[1.0, 10.0], [100.0, 1000.0]]), slope, RES)
    assert np.all(np.diff(twi.ravel()) > 0)


def test_gaussian_field_is_standardised_and_seeded():
    a = gaussian_field(np.random.default_rng(1), 64, 8)
    b = gaussian_field(np.random.default_rng(1), 64, 8)
    assert np.array_equal(a, b)
    assert a.mean() == pytest.approx(0, abs=1e-9)
    assert a.std() == pytest.approx(1, rel=1e-6)
