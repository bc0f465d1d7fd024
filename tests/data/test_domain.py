"""The prediction domain is where maps predict: valid pixels, once per place, per km².
Overlapping tiles once counted twice, no-data was sampled as mapped area and a degree grid
weighted the north as heavily as the south, shifting kNNDM's folds without a word."""

import numpy as np
import pytest

from miso_bench.data.domain import sample_prediction_domain
from miso_bench.data.manifest import load_manifest
from tests.data.test_delivery_pixels import X0, write_tif
from tests.helpers import write_point_dataset


def manifest_over(root, crs="EPSG:3338"):
    write_point_dataset(root, {"r": {"folder": "r", "bands": ["v"]}}, np.zeros(2), np.zeros(2))
    text = (root / "dataset.yaml").read_text().replace("EPSG:3338", crs)
    (root / "dataset.yaml").write_text(text)
    return load_manifest(root)


def test_overlapping_tiles_are_sampled_once(tmp_path):
    # a: 20 px wide from X0; b: 20 px wide from X0 + 100 m: the union is 30 px wide.
    write_tif(tmp_path / "r" / "a.tif", np.ones((10, 20), np.float32))
    write_tif(tmp_path / "r" / "b.tif", np.ones((10, 20), np.float32), x0=X0 + 100)
    points = sample_prediction_domain(manifest_over(tmp_path), 3000, seed=0)
    assert len(points) == 3000
    shared = (points[:, 0] >= X0 + 100) & (points[:, 0] < X0 + 200)
    assert shared.mean() == pytest.approx(1 / 3, abs=0.03)  # was 1/2


def test_no_data_is_not_part_of_the_domain(tmp_path):
    data = np.ones((10, 20), np.float32)
    data[:, 10:] = np.nan
    write_tif(tmp_path / "r" / "a.tif", data)
    points = sample_prediction_domain(manifest_over(tmp_path), 2000, seed=1)
    assert len(points) == 2000 and (points[:, 0] < X0 + 100).all()


def test_a_degree_grid_is_sampled_per_square_kilometre(tmp_path):
    # 55-71 N: the band north of 63 N holds 43 % of the area, not half.
    write_tif(
        tmp_path / "r" / "a.tif",
        np.ones((16, 10), np.float32),
        crs="EPSG:4326",
        res=1.0,
        x0=-160.0,
        y0=71.0,
    )
    points = sample_prediction_domain(manifest_over(tmp_path, "EPSG:4326"), 4000, seed=2)
    north = (points[:, 1] >= 63.0).mean()
    expected = (np.sin(np.radians(71)) - np.sin(np.radians(63))) / (
        np.sin(np.radians(71)) - np.sin(np.radians(55))
    )
    assert north == pytest.approx(expected, abs=0.03)
