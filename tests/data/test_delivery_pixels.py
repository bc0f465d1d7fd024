"""What a delivery's pixels mean: no-data values the dtype cannot hold, GDAL masks, files
without a CRS, files in another CRS, grids in degrees. Each case once gave wrong numbers
without an error (or a traceback) and is pinned here."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from miso_bench.cli import main
from miso_bench.data.check import check_dataset
from miso_bench.data.chips import ChipSource
from miso_bench.data.features import extract_point_features
from miso_bench.data.init import draft_manifest
from miso_bench.data.manifest import load_manifest, nodata_in_dtype
from miso_bench.data.normalization import compute_band_stats
from miso_bench.errors import DatasetError, ManifestError
from tests.helpers import write_point_dataset

X0, Y0 = 100_000.0, 100_080.0  # top-left corner of every raster here (EPSG:3338 metres)


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:3338",
    res: float = 10.0,
    x0: float = X0,
    y0: float = Y0,
    nodata: float | None = None,
    mask: np.ndarray | None = None,
) -> None:
    data = np.asarray(data)[None] if np.ndim(data) == 2 else np.asarray(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(
            path,
            "w",
            driver="GTiff",
            count=data.shape[0],
            height=data.shape[1],
            width=data.shape[2],
            dtype=data.dtype,
            crs=crs,
            transform=from_origin(x0, y0, res, res),
            nodata=nodata,
        ) as dst,
    ):
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask)


# Pixel centres of row 3 of an 8 x 8 raster at 10 m: columns 0, 3, 4 and 7.
PX = X0 + np.array([5.0, 35.0, 45.0, 75.0])
PY = np.full(4, Y0 - 35.0)


@pytest.mark.parametrize(
    ("value", "dtype", "says"),
    [
        (-9999.0, "uint8", "outside the uint8 range 0..255"),
        (-32767.0, "uint8", "outside the uint8 range"),
        (-3.0e38, "int16", "outside the int16 range"),
        (0.5, "uint16", "not a whole number"),
        (float("nan"), "int16", "NaN cannot occur in int16 pixels"),
        (-1.0e39, "float32", "overflows float32"),
    ],
)
def test_nodata_the_dtype_cannot_hold_is_an_error(value: float, dtype: str, says: str) -> None:
    # Cast into the dtype, -9999 would become 241 and mask the pixels of class 241.
    with pytest.raises(DatasetError, match=says) as err:
        nodata_in_dtype(value, dtype, "a.tif", "modalities.lc.nodata")
    assert err.value.file == "a.tif" and err.value.field == "modalities.lc.nodata"
    assert nodata_in_dtype(-3.0e38, "float32") == float(np.float32(-3.0e38))
    assert nodata_in_dtype(255.0, "uint8") == 255.0
    assert np.isnan(nodata_in_dtype(float("nan"), "float32") or 0.0)


def test_manifest_refuses_nodata_outside_its_dtype(tmp_path: Path) -> None:
    write_tif(tmp_path / "lc" / "a.tif", np.full((8, 8), 1, np.uint8))
    write_point_dataset(
        tmp_path,
        {"lc": {"folder": "lc", "bands": ["lc"], "dtype": "uint8", "nodata": -9999}},
        PX,
        PY,
    )
    with pytest.raises(ManifestError, match=r"modalities\.lc\.nodata: no-data -9999 is outside"):
        load_manifest(tmp_path)


def test_nodata_outside_the_files_dtype_is_an_error_not_a_masked_class(tmp_path: Path) -> None:
    """The manifest's dtype (float32 by default) passes; the file is uint8 and holds 241, the
    value -9999 wraps to: every path refuses to read it, naming the file and field."""
    codes = np.full((8, 8), 241, np.uint8)
    path = tmp_path / "lc" / "a.tif"
    write_tif(path, codes)
    write_point_dataset(
        tmp_path, {"lc": {"folder": "lc", "bands": ["lc"], "nodata": -9999}}, PX, PY
    )
    m = load_manifest(tmp_path)
    with pytest.raises(DatasetError, match="outside the uint8 range") as err:
        extract_point_features(m, PX, PY)
    assert err.value.file == str(path) and err.value.field == "modalities.lc.nodata"
    with pytest.raises(DatasetError, match="outside the uint8 range"):
        compute_band_stats(m)
    with pytest.raises(DatasetError, match="outside the uint8 range"):
        ChipSource(m).window_at(X0 + 40, Y0 - 40, 8)
    problems = [p for p in check_dataset(tmp_path) if p.is_error]
    assert any(p.field == "modalities.lc.nodata" and "uint8" in p.problem for p in problems)


def test_gdal_mask_marks_missing_pixels_for_trees_chips_and_stats(tmp_path: Path) -> None:
    """A file without a no-data value whose missing pixels are marked by a GDAL mask band:
    they held 0 and were read as 0 (a real value) by point features, chips and statistics."""
    data = np.full((8, 8), 5.0, np.float32)
    data[:, 4:] = 0.0
    mask = np.full((8, 8), 255, np.uint8)
    mask[:, 4:] = 0
    write_tif(tmp_path / "r" / "a.tif", data, mask=mask)
    write_point_dataset(tmp_path, {"r": {"folder": "r", "bands": ["v"]}}, PX, PY)
    m = load_manifest(tmp_path)
    assert np.isnan(extract_point_features(m, PX, PY)["v"].to_numpy()[2:]).all()
    assert extract_point_features(m, PX, PY)["v"].to_numpy()[:2].tolist() == [5.0, 5.0]
    values, valid, _ = ChipSource(m).window_at(X0 + 40, Y0 - 40, 8)
    assert valid[0, :, :4].all() and not valid[0, :, 4:].any()
    assert (values[0][valid[0]] == 5.0).all()
    stats = compute_band_stats(m)["v"]
    assert stats.p02 == stats.raw_mean == 5.0  # no zeros among the valid pixels
    notes = [str(p) for p in check_dataset(tmp_path)]
    assert any("2 pedons lie on no-data pixels" in n for n in notes)


def test_file_without_crs_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "r" / "a.tif"
    write_tif(path, np.full((8, 8), 5.0, np.float32), crs=None)
    write_point_dataset(tmp_path, {"r": {"folder": "r", "bands": ["v"]}}, PX, PY)
    m = load_manifest(tmp_path)
    for read in (lambda: extract_point_features(m, PX, PY), lambda: ChipSource(m)):
        with pytest.raises(DatasetError, match="file has no CRS") as err:
            read()
        assert err.value.file == str(path) and "gdal_edit.py -a_srs EPSG:3338" in err.value.fix


def test_file_in_another_crs_passes_check_with_a_note(tmp_path: Path) -> None:
    """Files in another CRS are warped on the fly (README): `data check` says so in a note,
    checks the pedons on them in their own CRS, and does not fail."""
    from pyproj import Transformer

    write_tif(tmp_path / "g" / "g.tif", np.full((8, 8), 1.0, np.float32), nodata=-9999)
    # The same place in UTM zone 6N, at 20 m.
    ux, uy = Transformer.from_crs("EPSG:3338", "EPSG:32606", always_xy=True).transform(
        X0 - 40, Y0 + 40
    )
    write_tif(
        tmp_path / "u" / "u.tif",
        np.full((12, 12), 7.0, np.float32),
        crs="EPSG:32606",
        res=20.0,
        x0=float(np.floor(ux)),
        y0=float(np.ceil(uy)),
        nodata=-9999,
    )
    write_point_dataset(
        tmp_path,
        {
            "g": {"folder": "g", "bands": ["gv"], "nodata": -9999},
            "u": {"folder": "u", "bands": ["uv"], "nodata": -9999, "res_m": 20.0},
        },
        PX,
        PY,
    )
    problems = check_dataset(tmp_path)
    assert not [p for p in problems if p.is_error], [str(p) for p in problems]
    notes = [str(p) for p in problems]
    assert any("u.tif: crs: file CRS EPSG:32606 differs" in n for n in notes)
    assert not any("outside" in n or "no-data" in n for n in notes), notes
    assert main(["data", "check", str(tmp_path)]) == 0
    m = load_manifest(tmp_path)
    assert (extract_point_features(m, PX, PY)["uv"] == 7.0).all()


def test_init_picks_the_finest_grid_on_the_ground(tmp_path: Path) -> None:
    """0.001 degrees (about 50 x 110 m in Alaska) is not finer than 10 m."""
    from pyproj import Transformer

    write_tif(
        tmp_path / "terrain" / "t.tif",
        np.full((8, 8), 1.0, np.float32),
        crs="EPSG:32606",
        x0=500_000.0,
        y0=7_200_000.0,
        nodata=-9999,
    )
    lon, lat = Transformer.from_crs("EPSG:32606", "EPSG:4326", always_xy=True).transform(
        500_000.0, 7_200_000.0
    )
    write_tif(
        tmp_path / "climate" / "c.tif",
        np.full((4, 4), 2.0, np.float32),
        crs="EPSG:4326",
        res=0.001,
        x0=lon - 0.001,
        y0=lat + 0.001,
        nodata=-9999,
    )
    x, y = 500_005.0 + 10 * (np.arange(30) % 8), 7_199_995.0 - 10 * (np.arange(30) // 8)
    gpd.GeoDataFrame(
        {"id": np.arange(30), "soil": ["a", "b", "b"] * 10},
        geometry=gpd.points_from_xy(x, y),
        crs="EPSG:32606",
    ).to_file(tmp_path / "points.gpkg")
    draft_manifest(tmp_path)
    manifest = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    assert manifest["crs"] == "EPSG:32606" and manifest["res_m"] == 10.0


def test_pedons_crs_contradicting_the_files_own_is_an_error(tmp_path: Path) -> None:
    """A GeoPackage stores its CRS; a different `pedons.crs` was silently ignored."""
    write_tif(tmp_path / "r" / "a.tif", np.full((8, 8), 5.0, np.float32))
    write_point_dataset(tmp_path, {"r": {"folder": "r", "bands": ["v"]}}, PX, PY)
    gpd.GeoDataFrame(
        {"id": [0, 1], "lab": [0, 1]}, geometry=gpd.points_from_xy(PX[:2], PY[:2]), crs="EPSG:3338"
    ).to_file(tmp_path / "pedons.gpkg")
    manifest = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    manifest["pedons"].update(file="pedons.gpkg", crs="EPSG:4326")
    del manifest["pedons"]["x_column"], manifest["pedons"]["y_column"]
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    problems = [str(p) for p in check_dataset(tmp_path) if p.is_error]
    assert any("pedons.crs: the manifest says EPSG:4326" in p for p in problems), problems
    manifest["pedons"]["crs"] = "EPSG:3338"  # the same CRS, said twice: fine
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    assert not [p for p in check_dataset(tmp_path) if p.is_error]
