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
import pytest
import rasterio
import yaml
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from miso_bench.data.check import check_dataset
from miso_bench.data.chips import ChipSource
from miso_bench.data.features import extract_point_features
from miso_bench.data.manifest import load_manifest
from miso_bench.data.normalization import compute_band_stats
from tests.helpers import write_point_dataset

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
    return write_point_dataset(root, {"v": modality}, px, py)


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


def aspect_dataset(root: Path, circular: bool) -> tuple[Path, np.ndarray]:
    """Aspect alternating 350 and 10 degrees (north-facing) on a 32 x 32 grid, and a tile of
    the same values shifted by half a pixel (off the grid: warped)."""
    aspect = np.where((np.indices((32, 32)).sum(0) % 2) == 0, 350.0, 10.0).astype(np.float32)
    tif(root / "v" / "a.tif", aspect, X0, float("nan"))
    tif(root / "v" / "b.tif", aspect, X0 + 325, float("nan"))
    px, py = np.array([X0 + 155, X0 + 485]), np.full(2, Y0 - 155)
    dataset(root, "nan", px, py, "float32")
    if circular:
        manifest = yaml.safe_load((root / "dataset.yaml").read_text())
        manifest["modalities"]["v"]["circular"] = ["v"]
        (root / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return root, np.stack([px, py], 1)


def north(deg: np.ndarray) -> np.ndarray:
    """Angular distance from north, degrees."""
    return np.minimum(np.mod(deg, 360), 360 - np.mod(deg, 360))


def test_circular_bands_are_averaged_as_directions_and_warped_nearest(tmp_path) -> None:
    """Aspect 350 and 10 averaged to 180 (south) in window means, and bilinear warping of an
    off-grid file did the same."""
    from miso_bench.data.features import window_feature_table

    root, xy = aspect_dataset(tmp_path, circular=True)
    m = load_manifest(root)
    feats = extract_point_features(m, xy[:, 0], xy[:, 1], window_px=5)["v"].to_numpy()
    assert (north(feats) < 1).all()  # 13 of 350 and 12 of 10 degrees: 0.4 degrees off north
    raw = np.where((np.indices((9, 9)).sum(0) % 2) == 0, 350.0, 10.0)[None].astype(np.float32)
    table = window_feature_table(m, raw, ["v"], 5, np.arange(5.0), np.arange(5.0))
    assert (north(table["v"].to_numpy()) < 1).all()
    image, valid, _ = ChipSource(m).window_at(X0 + 485, Y0 - 155, 8)  # inside the warped tile
    assert valid.all() and set(np.unique(image)) <= {10.0, 350.0}


def test_an_aspect_band_not_declared_circular_gets_a_note_and_init_declares_it(tmp_path):
    from miso_bench.data.init import draft_manifest

    root, _ = aspect_dataset(tmp_path / "d", circular=False)
    manifest = yaml.safe_load((root / "dataset.yaml").read_text())
    manifest["modalities"]["v"]["bands"] = ["aspect"]
    (root / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    notes = [p for p in check_dataset(root) if p.field == "modalities.v.circular"]
    assert len(notes) == 1 and not notes[0].is_error
    folder = tmp_path / "new"
    rng = np.random.default_rng(0)
    tif(folder / "t" / "a.tif", rng.uniform(0, 360, (32, 32)).astype(np.float32), X0, -9999.0)
    with rasterio.open(folder / "t" / "a.tif", "r+") as dst:
        dst.set_band_description(1, "aspect")
    n = 20
    pd.DataFrame(
        {
            "id": np.arange(n),
            "x": X0 + 5 + 10 * np.arange(n),
            "y": np.full(n, Y0 - 5),
            "lab": np.arange(n) % 2,
        }
    ).to_csv(folder / "points.csv", index=False)
    draft = draft_manifest(folder)
    assert any("aspect" in g and "circular" in g for g in draft.guesses)
    assert load_manifest(folder).modalities["t"].circular == ("aspect",)


def test_circular_bands_must_be_bands_and_not_class_codes(tmp_path) -> None:
    from miso_bench.errors import ManifestError

    root, _ = aspect_dataset(tmp_path, circular=True)
    manifest = yaml.safe_load((root / "dataset.yaml").read_text())
    for circular, categorical, match in ((["w"], [], "not in bands"), (["v"], ["v"], "categ")):
        manifest["modalities"]["v"]["circular"] = circular
        manifest["modalities"]["v"]["categorical"] = categorical
        (root / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        with pytest.raises(ManifestError, match=match):
            load_manifest(root)


def test_a_tile_that_cannot_be_warped_into_the_dataset_crs_is_a_clear_error(tmp_path) -> None:
    """A projected tile across the antimeridian on a longitude/latitude grid: GDAL's
    "Parameterization error" came out as a bare RuntimeError traceback."""
    from pyproj import Transformer

    from miso_bench.errors import DatasetError

    def write(path: Path, data: np.ndarray, crs: str, transform: Any, nodata: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        profile = {"driver": "GTiff", "count": 1, "height": data.shape[0], "width": data.shape[1]}
        with rasterio.open(
            path, "w", **profile, dtype="float32", crs=crs, transform=transform, nodata=nodata
        ) as dst:
            dst.write(data[None])

    write(
        tmp_path / "s2" / "a.tif",
        np.ones((100, 100), np.float32),
        "EPSG:4326",
        from_origin(179.9, 52.0, 0.001, 0.001),
        None,
    )
    tx, ty = Transformer.from_crs("EPSG:4326", "EPSG:3338", always_xy=True).transform(
        [179.9, -179.9], [52.0, 51.9]
    )
    x0, y0 = np.floor(min(tx) / 100) * 100 - 2000, np.ceil(max(ty) / 100) * 100 + 2000
    w, h = int((max(tx) - min(tx) + 4000) / 100), int((max(ty) - min(ty) + 4000) / 100) + 20
    write(
        tmp_path / "t" / "t.tif",
        np.full((h, w), 42.0, np.float32),
        "EPSG:3338",
        from_origin(x0, y0, 100, 100),
        -9999.0,
    )
    modalities = {
        "s2": {"folder": "s2", "bands": ["b"], "nodata": float("nan")},
        "t": {"folder": "t", "bands": ["elev"], "nodata": -9999.0},
    }
    write_point_dataset(
        tmp_path,
        modalities,
        np.array([179.95, 179.96]),
        np.array([51.95, 51.95]),
        crs="EPSG:4326",
        res_m=0.001,
    )
    with pytest.raises(DatasetError, match="cannot be warped into the dataset CRS EPSG:4326"):
        ChipSource(load_manifest(tmp_path))
