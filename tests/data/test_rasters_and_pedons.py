import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml

from miso_bench.data.manifest import load_manifest
from miso_bench.data.pedons import PedonDataset
from miso_bench.data.rasters import (
    ClimateLayers,
    Sentinel2Composite,
    TerrainDerivatives,
    open_stack,
)
from miso_bench.errors import DatasetError


def test_dataset_classes_return_bands_in_manifest_order(tiny):
    s2, terrain, climate = Sentinel2Composite(tiny), TerrainDerivatives(tiny), ClimateLayers(tiny)
    path = tiny.modality_files("sentinel2")[0]
    with rasterio.open(path) as src:
        b = src.bounds
        direct = src.read(window=src.window(b.left, b.top - 320, b.left + 320, b.top))
    xs, ys = slice(b.left, b.left + 320, 10.0), slice(b.top - 320, b.top, 10.0)
    sample = s2[xs, ys]
    assert sample["image"].shape == (9, 32, 32)
    assert np.array_equal(sample["image"].numpy(), direct.astype(np.float32))
    assert terrain[xs, ys]["image"].shape == (7, 32, 32)
    assert climate[xs, ys]["image"].shape == (3, 32, 32)
    assert s2.bands == tiny.modalities["sentinel2"].bands
    stack, parts = open_stack(tiny)
    assert stack[xs, ys]["image"].shape == (19, 32, 32)
    assert [p.spec.name for p in parts] == ["sentinel2", "terrain", "climate"]


def test_band_subset_and_unknown_band(tiny):
    s2 = Sentinel2Composite(tiny, bands=["B08", "B04"])
    assert s2.bands == ["B08", "B04"]
    with pytest.raises(DatasetError, match="B99"):
        Sentinel2Composite(tiny, bands=["B99"])


def test_missing_rasters_give_a_clear_error(tiny_copy):
    for f in (tiny_copy / "climate").glob("*.tif"):
        f.unlink()
    with pytest.raises(DatasetError, match="no raster matches"):
        ClimateLayers(load_manifest(tiny_copy))


def test_pedon_filtering_counts_missing_and_unknown(tiny):
    pedons = PedonDataset(tiny)
    kept, report = pedons.labelled("tax_order")
    assert report.n_total == len(pedons)
    assert report.n_kept + report.n_missing + report.n_unknown == report.n_total
    assert report.n_unknown == 0
    assert kept["target"].between(0, 6).all()
    kept_pf, report_pf = pedons.labelled("pf1m")
    assert set(kept_pf["target"]) == {0, 1}
    assert report_pf.n_missing > report.n_missing  # pf1m is missing far more often
    with pytest.raises(DatasetError, match="tax_order"):
        pedons.labelled("tax_ordr")


def test_pedon_slice_query_returns_points_inside(tiny):
    pedons = PedonDataset(tiny)
    x0, y0 = pedons.table["x"].iloc[0], pedons.table["y"].iloc[0]
    hit = pedons[x0 - 50 : x0 + 50, y0 - 50 : y0 + 50]
    assert pedons.table["id"].iloc[0] in hit["ids"]
    with pytest.raises(IndexError):
        pedons[0:1, 0:1]


def test_csv_pedons_with_unknown_labels(tiny_copy):
    manifest = load_manifest(tiny_copy)
    table = PedonDataset(manifest).table
    frame = pd.DataFrame(
        {"site_id": table["id"], "X": table["x"], "Y": table["y"], "order": table["tax_order"]}
    )
    frame.loc[:4, "order"] = "Alfisols"
    frame.to_csv(tiny_copy / "pedons.csv", index=False)
    raw = yaml.safe_load((tiny_copy / "dataset.yaml").read_text())
    raw["pedons"] = {
        "file": "pedons.csv",
        "id_column": "site_id",
        "x_column": "X",
        "y_column": "Y",
        "labels": {
            "tax_order": {
                "column": "order",
                "classes": raw["pedons"]["labels"]["tax_order"]["classes"],
            }
        },
    }
    (tiny_copy / "dataset.yaml").write_text(yaml.safe_dump(raw))
    kept, report = PedonDataset(load_manifest(tiny_copy)).labelled("tax_order")
    assert report.n_unknown == 5 and report.unknown_values == {"Alfisols": 5}
    assert len(kept) == report.n_kept


def test_truth_coordinates_are_x_y_and_old_names_still_read(tiny_copy):
    import pandas as pd

    from miso_bench.data.manifest import load_manifest
    from miso_bench.data.pedons import read_truth

    m = load_manifest(tiny_copy)
    truth = read_truth(m)
    assert {"x", "y"} <= set(truth.columns)
    path = tiny_copy / "truth.parquet"
    pd.read_parquet(path).rename(columns={"x": "x_3338", "y": "y_3338"}).to_parquet(path)
    old = read_truth(load_manifest(tiny_copy))
    pd.testing.assert_frame_equal(old[["x", "y"]], truth[["x", "y"]])


def test_info_on_a_geographic_dataset_speaks_degrees_and_metres(tiny_geographic_dir):
    import math

    from miso_bench.data.info import dataset_summary, format_summary
    from miso_bench.data.manifest import load_manifest

    summary = dataset_summary(load_manifest(tiny_geographic_dir))
    text = format_summary(summary)
    assert "grid 0.0001°" in text and "0.0001 m" not in text
    rate = summary["pedons"]["tasks"]["tax_order"]["nn_same_label"]
    assert (
        math.isfinite(rate)
        and rate > summary["pedons"]["tasks"]["tax_order"]["nn_same_label_chance"]
    )
