"""Values as real deliveries store them: scale/offset tags, +-inf, overviews, no no-data.

Each case read a wrong number without an error before: packed values were used as stored,
-inf counted as valid (and turned a band's statistics into NaN, so the band into zeros),
band statistics of COGs came from their cubic overviews (5x too narrow on a rough band), and a
delivery with no no-data value read its fill values as measurements without a word."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import yaml
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from miso_bench.data.check import check_dataset
from miso_bench.data.chips import ChipSource
from miso_bench.data.features import extract_point_features
from miso_bench.data.manifest import load_manifest
from miso_bench.data.normalization import compute_band_stats

X0, Y0 = 100_000.0, 100_320.0


def tif(path: Path, data: np.ndarray, x0: float, nodata: Any = None, **tags: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "count": 1, "height": data.shape[0], "width": data.shape[1]}
    with rasterio.open(
        path,
        "w",
        **profile,
        dtype=data.dtype,
        crs="EPSG:3338",
        transform=from_origin(x0, Y0, 10, 10),
        nodata=nodata,
        tiled=True,
        blockxsize=16,
        blockysize=16,
    ) as dst:
        dst.write(data[None])
        if "scale" in tags:
            dst.scales, dst.offsets = [tags["scale"]], [tags["offset"]]


def dataset(root: Path, nodata: Any, px: np.ndarray, py: np.ndarray, dtype: str) -> Path:
    modality: dict[str, Any] = {"folder": "v", "bands": ["v"], "dtype": dtype}
    if nodata is not None:
        modality["nodata"] = nodata
    manifest = {
        "name": "delivery",
        "crs": "EPSG:3338",
        "res_m": 10.0,
        "modalities": {"v": modality},
        "pedons": {
            "file": "pedons.csv",
            "id_column": "id",
            "x_column": "x",
            "y_column": "y",
            "labels": {"lab": {"column": "lab", "classes": [0, 1]}},
        },
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    n = len(px)
    pd.DataFrame({"id": np.arange(n), "x": px, "y": py, "lab": np.arange(n) % 2}).to_csv(
        root / "pedons.csv", index=False
    )
    return root


def test_scale_and_offset_tags_are_applied_on_every_read_path(tmp_path) -> None:
    """Two packed tiles holding -20.0 with different tags, and a third off the grid (warped)."""
    t = -20.0
    tiles = (("a", X0, 0.01, 0.0), ("b", X0 + 320, 0.002, -10.0), ("c", X0 + 645, 0.05, 5.0))
    for name, x0, scale, offset in tiles:
        packed = np.full((32, 32), round((t - offset) / scale), np.int16)
        tif(tmp_path / "v" / f"{name}.tif", packed, x0, -32768, scale=scale, offset=offset)
    px = np.array([X0 + 155, X0 + 475, X0 + 805])
    py = np.full(3, Y0 - 155)
    m = load_manifest(dataset(tmp_path, -32768, px, py, "int16"))
    np.testing.assert_allclose(extract_point_features(m, px, py)["v"], t, atol=1e-9)
    source = ChipSource(m)
    for x in (X0 + 320, X0 + 805):  # across the a/b border; inside the warped tile c
        image, valid, _ = source.window_at(x, Y0 - 160, 4)
        assert valid.all()
        np.testing.assert_allclose(image, t, atol=1e-4)
    stats = compute_band_stats(m)["v"]
    assert abs(stats.p02 - t) < 1e-6 and abs(stats.p98 - t) < 1e-6
    notes = [p for p in check_dataset(tmp_path) if "scale/offset" in p.field]
    assert len(notes) == 3 and not any(p.is_error for p in notes)


def test_infinities_are_missing_values(tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(2.0, 1.0, (32, 32)).astype(np.float32)
    data[::4, ::5] = -np.inf
    tif(tmp_path / "v" / "a.tif", data, X0, float("nan"))
    px, py = np.array([X0 + 5, X0 + 15]), np.full(2, Y0 - 5)  # (0, 0) is -inf, (0, 1) is not
    m = load_manifest(dataset(tmp_path, "nan", px, py, "float32"))
    feats = extract_point_features(m, px, py)["v"].to_numpy()
    assert np.isnan(feats[0]) and feats[1] == data[0, 1]
    image, valid, _ = ChipSource(m).window_at(X0 + 160, Y0 - 160, 32)
    assert (~valid[0]).sum() == np.isinf(data).sum() and np.isfinite(image).all()
    stats = compute_band_stats(m)["v"]
    finite = data[np.isfinite(data)]
    assert np.isfinite([stats.p02, stats.p98, stats.raw_mean]).all()
    assert abs(stats.p98 - np.percentile(finite, 98)) < 0.05
    assert any("inf" in p.problem and not p.is_error for p in check_dataset(tmp_path))


def test_band_statistics_come_from_pixels_not_overviews(tmp_path) -> None:
    """A rough band (curvature-like noise) whose cubic overviews are ~5x smoother."""
    rng = np.random.default_rng(1)
    data = rng.normal(0.0, 1.0, (1024, 1024)).astype(np.float32)
    path = tmp_path / "v" / "a.tif"
    tif(path, data, X0, float("nan"))
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4, 8, 16], Resampling.cubic)
    m = load_manifest(dataset(tmp_path, "nan", np.array([X0 + 5]), np.array([Y0 - 5]), "float32"))
    stats = compute_band_stats(m, max_pixels_per_file=4096)
    truth = np.percentile(data, 98) - np.percentile(data, 2)
    assert abs(stats["v"].scale - truth) / truth < 0.1  # the overviews gave ~0.2 x truth


def test_a_delivery_without_any_no_data_value_gets_a_note(tmp_path) -> None:
    tif(tmp_path / "v" / "a.tif", np.zeros((32, 32), np.float32), X0)
    dataset(tmp_path, None, np.array([X0 + 5]), np.array([Y0 - 5]), "float32")
    notes = [p for p in check_dataset(tmp_path) if p.field == "modalities.v.nodata"]
    assert len(notes) == 1 and not notes[0].is_error and "no no-data value" in notes[0].problem
