"""The synthetic Alaska generator: layout, determinism and physical sanity."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio

from miso_bench.data.cache import dataset_fingerprint
from miso_bench.data.manifest import load_manifest
from miso_bench.data.synthetic import PRESETS, generate_synthetic_alaska
from miso_bench.data.synthetic.landscape import S2_BANDS, TAX_ORDERS
from miso_bench.data.tiles import tile_bounds


def read_all(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for path in sorted(folder.rglob("*.tif")):
        with rasterio.open(path) as src:
            arrays[str(path.relative_to(folder))] = src.read()
    return arrays


def test_layout_matches_the_real_data_model(tiny):
    assert tiny.crs == "EPSG:3338" and tiny.res_m == 10.0
    assert list(tiny.modalities) == ["sentinel2", "terrain", "climate"]
    assert tiny.modalities["sentinel2"].bands == S2_BANDS
    assert len(tiny.modalities["terrain"].bands) == 7
    assert len(tiny.modalities["climate"].bands) == 3
    assert tiny.pedons.labels["tax_order"].classes == TAX_ORDERS
    files = tiny.modality_files("sentinel2")
    assert len(files) == len(PRESETS["tiny"].sites)
    for path in files:
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 3338
            assert src.res == (10.0, 10.0)
            assert src.descriptions == S2_BANDS
            # The file is a window inside the AK050 tile it is named after.
            xmin, ymin, xmax, ymax = tile_bounds(path.stem)
            b = src.bounds
            assert xmin <= b.left < b.right <= xmax and ymin <= b.bottom < b.top <= ymax
            assert b.left % 10 == 0 and b.top % 10 == 0


def test_pedons_labels_regions_and_truth(tiny):
    pedons = gpd.read_file(tiny.resolve("pedons.gpkg"))
    assert len(pedons) == PRESETS["tiny"].n_pedons
    assert pedons["id"].is_unique
    assert pedons["tax_order"].isna().mean() == pytest.approx(0.14, abs=0.06)
    assert 0.2 < pedons["pf1m"].notna().mean() < 0.8
    assert set(pedons["tax_order"].dropna()) <= set(TAX_ORDERS)
    truth = pd.read_parquet(tiny.resolve("truth.parquet"))
    assert len(truth) == PRESETS["tiny"].n_truth
    assert truth[["pf1m", "tax_order"]].notna().all().all()
    zones = gpd.read_file(tiny.resolve("regions/permafrost_zones.gpkg"))
    mlra = gpd.read_file(tiny.resolve("regions/mlra.gpkg"))
    assert len(zones) >= 2 and len(mlra) == 4


def test_same_seed_gives_identical_arrays(tiny_dir, tmp_path):
    again = tmp_path / "again"
    generate_synthetic_alaska(again, preset="tiny", seed=0, workers=2)  # parallel build
    a, b = read_all(tiny_dir), read_all(again)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    pa = gpd.read_file(tiny_dir / "pedons.gpkg")
    pb = gpd.read_file(again / "pedons.gpkg")
    pd.testing.assert_frame_equal(pd.DataFrame(pa), pd.DataFrame(pb))
    pd.testing.assert_frame_equal(
        pd.read_parquet(tiny_dir / "truth.parquet"), pd.read_parquet(again / "truth.parquet")
    )
    # Byte-identical files, so the dataset fingerprint recorded by runs is reproducible too.
    assert dataset_fingerprint(load_manifest(tiny_dir)) == dataset_fingerprint(load_manifest(again))


def test_another_seed_gives_another_dataset(tiny_dir, tmp_path):
    other = tmp_path / "other"
    generate_synthetic_alaska(other, preset="tiny", seed=1, workers=1)
    a, b = read_all(tiny_dir), read_all(other)
    assert not np.array_equal(
        a["sentinel2/" + sorted(a)[0].split("/")[-1]], b["sentinel2/" + sorted(b)[0].split("/")[-1]]
    )


def test_climate_drives_permafrost(tiny):
    truth = pd.read_parquet(tiny.resolve("truth.parquet"))
    pf = truth.groupby("site")["pf1m"].mean()
    # North Slope (continuous) > Interior (discontinuous) > maritime sites (none).
    assert pf["prudhoe_bay"] > 0.95
    assert 0.2 < pf["fairbanks"] < 0.95
    assert pf["cold_bay"] < 0.05 and pf["juneau"] < 0.05
    orders = truth.groupby("site")["tax_order"].agg(lambda s: s.value_counts().index[0])
    assert orders["prudhoe_bay"] == "Gelisols"
    assert orders["cold_bay"] == "Andisols"
    assert orders["juneau"] == "Spodosols"


def test_label_is_not_a_lookup_of_the_centre_pixel(tiny):
    """Pixels with near-identical spectra carry different soil orders (neighbourhood matters)."""
    truth = pd.read_parquet(tiny.resolve("truth.parquet"))
    # Within one land-cover class, several soil orders occur.
    mixed = truth.groupby("cover")["tax_order"].nunique()
    assert (mixed >= 2).sum() >= 3


def test_no_data_present_and_masked_in_sentinel2(tiny):
    nodata = tiny.modalities["sentinel2"].nodata
    total = masked = 0
    for path in tiny.modality_files("sentinel2"):
        with rasterio.open(path) as src:
            a = src.read(1)
            assert src.nodata == nodata
        masked += int((a == nodata).sum())
        total += a.size
    assert 0 < masked / total < 0.1


def test_manifest_round_trip(tiny, tmp_path):
    out = tiny.write(tmp_path / "dataset.yaml")
    again = load_manifest(out)
    assert again.to_dict() == tiny.to_dict()


@pytest.mark.slow
def test_default_preset_meets_its_promises(tmp_path):
    m = generate_synthetic_alaska(tmp_path / "default", preset="default", seed=0)
    pedons = gpd.read_file(m.resolve("pedons.gpkg"))
    assert len(m.modality_files("sentinel2")) >= 12
    with rasterio.open(m.modality_files("sentinel2")[0]) as src:
        assert src.width >= 512 and src.height >= 512
    assert len(pedons) >= 3000
    assert set(pedons["tax_order"].dropna()) == set(TAX_ORDERS)
    zones = gpd.read_file(m.resolve("regions/permafrost_zones.gpkg"))
    mlra = gpd.read_file(m.resolve("regions/mlra.gpkg"))
    assert zones["zone"].nunique() >= 4 and mlra["mlra"].nunique() >= 5
    assert len(pd.read_parquet(m.resolve("truth.parquet"))) >= 50_000
