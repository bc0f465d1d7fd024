"""``data init`` drafts manifests that pass ``data check``; Sentinel-2 bands are found by name."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio
import yaml

from miso_bench.cli import main
from miso_bench.data.bands import SATLAS_S2_BANDS, canonical_s2_name, find_s2_bands
from miso_bench.data.check import check_dataset
from miso_bench.data.init import draft_manifest
from miso_bench.data.manifest import load_manifest
from miso_bench.errors import DatasetError, MisoBenchError
from tests.conftest import REALDATA
from tests.helpers import edit_manifest

#: The Satlas bands in Satlas order, spelled without zero padding (as the sen2 scene does).
B4_STYLE = ["B4", "B3", "B2", "B5", "B6", "B7", "B8", "B11", "B12"]


@pytest.mark.parametrize(
    ("name", "canon"),
    [
        ("B4", "B04"),
        ("B04", "B04"),
        ("b04", "B04"),
        ("band_4", "B04"),
        ("S2_B11", "B11"),
        ("B8A", "B8A"),
        ("b8a", "B8A"),
        ("elevation", None),
        ("B13", None),
    ],
)
def test_sentinel2_band_spellings(name, canon):
    assert canonical_s2_name(name) == canon


def _realdata(name: str):
    folder = REALDATA / name
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder} (it ships beside the repo in shared/)")
    return folder


def test_init_drafts_a_passing_manifest_for_eberg(tmp_path, capsys):
    folder = _realdata("eberg")
    out = tmp_path / "eberg" / "dataset.yaml"
    assert main(["data", "init", str(folder), "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "What it guessed" in shown and "What to check" in shown
    data = yaml.safe_load(out.read_text())
    assert data["crs"] == "EPSG:31467" and data["res_m"] == 25.0
    first = next(iter(data["modalities"].values()))
    assert first["glob"] == "eberg_grid25m.tif"  # the grid's modality first
    cats = {b for m in data["modalities"].values() for b in m.get("categorical", [])}
    assert cats == {"HBTSOLx", "PRMGEO6", "LNCCOR6"}  # the three class-code bands
    assert data["pedons"]["id_column"] == "ID"
    assert set(data["pedons"]["labels"]["soiltype"]["classes"]) >= {"B", "L", "S"}
    problems = check_dataset(out)
    assert not [p for p in problems if p.is_error], problems
    assert main(["data", "check", str(out)]) == 0
    # Never overwritten.
    assert main(["data", "init", str(folder), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_init_drafts_a_passing_manifest_for_sen2_with_polygon_labels(tmp_path):
    folder = _realdata("sentinel2_sen2")
    out = tmp_path / "sen2" / "dataset.yaml"
    draft = draft_manifest(folder, out=out)
    data = yaml.safe_load(out.read_text())
    assert data["crs"] == "EPSG:4326"
    s2 = data["modalities"]["sentinel2"]
    assert s2["scale"] == 10000.0 and len(s2["bands"]) == 12
    assert data["pedons"]["labels"]["class"]["classes"] == ["dryout", "forest", "village", "water"]
    points = draft.written[1]
    import geopandas as gpd

    pts = gpd.read_file(points)
    polygons = gpd.read_file(folder / "trainingPolygons_sen2.gpkg")
    # Every point lies inside the polygon it came from and carries its class.
    for pid, group in pts.groupby("polygon_id"):
        poly = polygons.geometry.iloc[pid]
        assert poly.buffer(1e-9).contains(group.geometry).all()
        assert (group["class"] == polygons["class"].iloc[pid]).all()
    assert pts.groupby("polygon_id").size().max() <= 200
    assert not [p for p in check_dataset(out) if p.is_error]
    manifest = load_manifest(out)
    modality, bands = find_s2_bands(manifest)
    assert modality == "sentinel2" and bands == B4_STYLE


def test_init_errors_are_one_line(tmp_path, tiny_dir, capsys):
    assert main(["data", "init", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "init", str(empty)]) == 2
    assert "no GeoTIFF" in capsys.readouterr().err
    rasters = tmp_path / "rasters"
    shutil.copytree(tiny_dir / "sentinel2", rasters / "sentinel2")
    assert main(["data", "init", str(rasters)]) == 2
    assert "no point file" in capsys.readouterr().err


def test_init_on_the_synthetic_layout_finds_sentinel2(tmp_path, tiny_dir):
    copy = tmp_path / ".miso-bench" / "tiny"  # a data folder inside a dot-folder is fine
    shutil.copytree(tiny_dir, copy)
    (copy / "dataset.yaml").unlink()
    (copy / "truth.parquet").unlink()
    shutil.rmtree(copy / "regions")
    # Band names come from the files' descriptions; write them as a delivery would.
    manifest = load_manifest(tiny_dir)
    for name, spec in manifest.modalities.items():
        for path in (copy / name).glob("*.tif"):
            with rasterio.open(path, "r+") as dst:
                for i, band in enumerate(spec.bands, start=1):
                    dst.set_band_description(i, band)
    draft = draft_manifest(copy)
    data = draft.manifest
    assert next(iter(data["modalities"])) == "sentinel2"
    assert data["modalities"]["sentinel2"]["bands"] == list(SATLAS_S2_BANDS)
    assert data["crs"] == "EPSG:3338" and data["res_m"] == 10.0
    assert {"tax_order", "pf1m"} <= set(data["pedons"]["labels"])
    assert not [p for p in check_dataset(copy) if p.is_error]


def test_miso_reads_sentinel2_by_name_in_any_order(tiny_dir, tmp_path):
    """Bands renamed B4-style and stacked in another order, with an extra band: MISO picks
    the same nine bands in Satlas order; a missing band is a one-line error."""
    from miso_bench.data.chips import ChipSource
    from miso_bench.models import build_model

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_dir, copy)
    order = [8, 0, 1, 2, 3, 4, 5, 6, 7]  # B12 first
    for path in (copy / "sentinel2").glob("*.tif"):
        with rasterio.open(path) as src:
            data, profile = src.read(), src.profile
        extra = data[:1] // 2  # a tenth band the model must ignore
        profile["count"] = 10
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.concatenate([data[order], extra]))
    names = ["B12", "B4", "B3", "B2", "B5", "B6", "B7", "B8", "B11", "B1"]

    def rename(d):
        d["modalities"]["sentinel2"]["bands"] = names

    edit_manifest(copy, rename)
    manifest = load_manifest(copy)
    src_a, src_b = ChipSource(load_manifest(tiny_dir)), ChipSource(manifest)
    a = build_model("miso", {"preset": "cpu", "device": "cpu"}, 2, 0).attach(src_a)
    b = build_model("miso", {"preset": "cpu", "device": "cpu"}, 2, 0).attach(src_b)
    region = (-167246 + 20, 29739 + 20, 32, 32)
    img_a, _val_a = src_a.window(*region)
    img_b, _val_b = src_b.window(*region)
    np.testing.assert_array_equal(img_a[a._s2_idx], img_b[b._s2_idx])
    assert [src_b.band_names[i] for i in b._s2_idx] == B4_STYLE
    assert "B1" not in [src_b.band_names[i] for i in b._cov_idx]

    def drop_b5(d):
        d["modalities"]["sentinel2"]["bands"] = [n if n != "B5" else "X5" for n in names]

    edit_manifest(copy, drop_b5)
    with pytest.raises(DatasetError, match="B05 missing"):
        build_model("miso", {"preset": "cpu"}, 2, 0).attach(ChipSource(load_manifest(copy)))


def test_a_dataset_without_imagery_names_the_models_that_run():
    from miso_bench.data.chips import ChipSource
    from miso_bench.models import build_model
    from tests.conftest import eberg_dir

    source = ChipSource(load_manifest(eberg_dir()))
    with pytest.raises(MisoBenchError, match="rf, xgboost, majority, coords_only, geo_only"):
        build_model("miso", {"preset": "cpu"}, 13, 0).attach(source)
    # The location-only ablation needs no imagery.
    build_model("geo_only", {"preset": "cpu"}, 13, 0).attach(source)
