"""`data check`: every failure case is reported as one line naming file, field and fix."""

from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from miso_bench.cli import main
from miso_bench.data.check import check_dataset


def rewrite(path: Path, change: Callable[[np.ndarray, dict], tuple[np.ndarray, dict]]) -> None:
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile.copy()
    data, profile = change(data, profile)
    profile["count"] = data.shape[0]
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def edit_pedons(root: Path, change: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]) -> None:
    gdf = gpd.read_file(root / "pedons.gpkg")
    change(gdf).to_file(root / "pedons.gpkg", driver="GPKG", layer="pedons")


def first(root: Path, modality: str) -> Path:
    return sorted((root / modality).glob("*.tif"))[0]


def cloud_point(root: Path) -> tuple[float, float]:
    """A Sentinel-2 no-data pixel (every site has cloud gaps)."""
    for path in sorted((root / "sentinel2").glob("*.tif")):
        with rasterio.open(path) as src:
            a = src.read(1)
            rows, cols = np.nonzero(a == src.nodata)
            if rows.size:
                return src.xy(rows[0], cols[0])
    raise AssertionError("no cloud in tiny dataset")


def move_first_to(xy: tuple[float, float]) -> Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]:
    def change(g: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        geoms = g.geometry.copy()
        geoms.iloc[0] = gpd.points_from_xy([xy[0]], [xy[1]])[0]
        return g.set_geometry(geoms)

    return change


def _missing_files(root: Path) -> None:
    for f in (root / "climate").glob("*.tif"):
        f.unlink()


def _crs(root: Path) -> None:
    rewrite(first(root, "terrain"), lambda d, p: (d, {**p, "crs": "EPSG:32606"}))


def _res(root: Path) -> None:
    def change(d, p):
        t = p["transform"]
        return d, {**p, "transform": Affine(20.0, 0, t.c, 0, -20.0, t.f)}

    rewrite(first(root, "climate"), change)


def _bands(root: Path) -> None:
    rewrite(first(root, "terrain"), lambda d, p: (d[:6], p))


def _outside(root: Path) -> None:
    edit_pedons(root, move_first_to((0.0, 0.0)))


def _nodata(root: Path) -> None:
    edit_pedons(root, move_first_to(cloud_point(root)))


def _all_outside(root: Path) -> None:
    def change(g):
        return g.set_geometry(g.geometry.translate(5e6, 5e6))

    edit_pedons(root, change)


# Facts of the data that runs handle (they drop and count such pedons, or read missing
# values): reported as notes, and the check passes.
NOTES = {
    "some pedons outside all rasters": (_outside, "outside all rasters"),
    "on no-data": (_nodata, "no-data pixels of `sentinel2`"),
}


@pytest.mark.parametrize("case", list(NOTES))
def test_data_facts_are_notes_not_failures(tiny_copy, capsys, case):
    breaker, text = NOTES[case]
    breaker(tiny_copy)
    problems = check_dataset(tiny_copy)
    found = [p for p in problems if text in p.problem]
    assert found and all(not p.is_error for p in found)
    assert main(["data", "check", str(tiny_copy)]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("note: ") and text in line for line in out.splitlines())
    assert "OK" in out and "note(s)" in out


def _unknown(root: Path) -> None:
    def change(g):
        g.loc[g.index[:3], "tax_order"] = "Alfisols"
        return g

    edit_pedons(root, change)


def _dupes(root: Path) -> None:
    def change(g):
        g.loc[g.index[1], "id"] = g["id"].iloc[0]
        return g

    edit_pedons(root, change)


def _unreadable(root: Path) -> None:
    first(root, "sentinel2").write_bytes(b"this is not a GeoTIFF")


def _grid(root: Path) -> None:
    def change(d, p):
        t = p["transform"]
        return d, {**p, "transform": Affine(10.0, 0, t.c + 5.0, 0, -10.0, t.f)}

    rewrite(first(root, "climate"), change)


def _missing_tile(root: Path) -> None:
    first(root, "terrain").unlink()


def _lonlat_csv(root: Path) -> None:
    g = gpd.read_file(root / "pedons.gpkg")
    g.drop(columns="geometry").to_csv(root / "pedons.csv", index=False)
    text = (root / "dataset.yaml").read_text().replace("file: pedons.gpkg", "file: pedons.csv")
    text = text.replace("id_column: id", "id_column: id\n  x_column: lon\n  y_column: lat")
    (root / "dataset.yaml").write_text(text)


def _corrupt(root: Path) -> None:
    path = first(root, "terrain")
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4000] = (
        np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    )
    path.write_bytes(bytes(data))


def _text_coordinates(root: Path) -> None:
    g = gpd.read_file(root / "pedons.gpkg")
    frame = g.drop(columns="geometry").astype({"x_3338": str})
    frame.loc[0, "x_3338"] = "-147,70"
    frame.to_csv(root / "pedons.csv", index=False)
    text = (root / "dataset.yaml").read_text().replace("file: pedons.gpkg", "file: pedons.csv")
    text = text.replace("id_column: id", "id_column: id\n  x_column: x_3338\n  y_column: y_3338")
    (root / "dataset.yaml").write_text(text)


def _no_geometry(root: Path) -> None:
    def change(g):
        geoms = g.geometry.copy()
        geoms.iloc[0] = None
        return g.set_geometry(geoms)

    edit_pedons(root, change)


CASES = {
    "missing files": (_missing_files, "climate", "no file matches"),
    "crs mismatch": (_crs, "terrain", "differs from the dataset CRS"),
    "resolution mismatch": (_res, "climate", "resolution 20 x 20"),
    "wrong band count": (_bands, "terrain", "6 bands"),
    "every pedon outside all rasters": (_all_outside, "pedons.gpkg", "outside all rasters"),
    "unknown class labels": (_unknown, "pedons.gpkg", "Alfisols"),
    "duplicate ids": (_dupes, "pedons.gpkg", "duplicate ids"),
    "unreadable file": (_unreadable, "sentinel2", "unreadable raster"),
    "misaligned grid": (_grid, "climate", "not aligned"),
    "missing tile in one modality": (_missing_tile, "pedons.gpkg", "outside the `terrain`"),
    "lon/lat without crs": (_lonlat_csv, "pedons.csv", "look like longitude/latitude"),
    "corrupt raster data": (_corrupt, "terrain", "corrupt raster data"),
    "coordinates as text": (_text_coordinates, "pedons.csv", "no usable coordinates"),
    "pedon without geometry": (_no_geometry, "pedons.gpkg", "no usable coordinates"),
}


def test_clean_dataset_has_no_problem(tiny_dir, capsys):
    assert check_dataset(tiny_dir) == []
    assert main(["data", "check", str(tiny_dir)]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize("case", list(CASES))
def test_each_failure_is_reported(tiny_copy, capsys, case):
    breaker, file_part, text = CASES[case]
    breaker(tiny_copy)
    problems = check_dataset(tiny_copy)
    assert any(file_part in p.file and text in p.problem for p in problems), problems
    assert all(p.fix for p in problems)
    code = main(["data", "check", str(tiny_copy)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in out + err
    lines = [line for line in out.splitlines() if text in line]
    assert lines and all("(fix: " in line for line in lines)


def test_broken_manifest_is_one_problem(tiny_copy, capsys):
    (tiny_copy / "dataset.yaml").write_text("name: x\ncrs: EPSG:3338\n")
    problems = check_dataset(tiny_copy)
    assert len(problems) == 1 and "res_m" in problems[0].field
    assert main(["data", "check", str(tiny_copy)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_float32_nodata_like_the_reference_is_masked(tiny_copy):
    """-3e38 in a float32 file is -3.0000000054977558e38: compare in the file's dtype."""
    from miso_bench.data.chips import ChipSource, PedonChipDataset
    from miso_bench.data.features import extract_point_features
    from miso_bench.data.manifest import load_manifest
    from miso_bench.data.pedons import PedonDataset

    for path in sorted((tiny_copy / "terrain").glob("*.tif")):

        def change(d, p):
            d = d.copy()
            d[:, :8, :8] = np.float32(-3e38)
            return d, {**p, "nodata": -3e38}

        rewrite(path, change)
    text = (tiny_copy / "dataset.yaml").read_text()
    (tiny_copy / "dataset.yaml").write_text(text.replace("nodata: -9999.0", "nodata: -3.0e+38", 1))
    m = load_manifest(tiny_copy)
    assert m.modalities["terrain"].nodata == -3e38
    # The file's -3e38 and the manifest's -3.0e+38 are the same no-data value.
    assert not any("nodata" in p.field for p in check_dataset(tiny_copy))
    with rasterio.open(first(tiny_copy, "terrain")) as src:
        x, y = src.xy(2, 2)
    feats = extract_point_features(m, np.array([x]), np.array([y]), modalities=["terrain"])
    assert feats.isna().all(axis=1).iloc[0]
    table = PedonDataset(m).table.iloc[[0]].copy()
    table["x"], table["y"] = x, y
    sample = PedonChipDataset(ChipSource(m), table, chip_size_px=8)[0]
    terrain = slice(9, 16)
    assert not sample["valid"][terrain][:, 4, 4].any()
