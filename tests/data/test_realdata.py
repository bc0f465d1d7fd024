"""The bring-your-own-data path on real files (eberg, EPSG:31467, categorical covariates)."""

import numpy as np
import pytest

from miso_bench.cli import main
from miso_bench.data.check import check_dataset
from miso_bench.data.chips import ChipSource, PedonChipDataset
from miso_bench.data.features import extract_point_features
from miso_bench.data.info import dataset_summary
from miso_bench.data.manifest import load_manifest
from miso_bench.data.pedons import PedonDataset
from miso_bench.data.rasters import open_stack

from ..conftest import eberg_dir

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def eberg():
    return load_manifest(eberg_dir())


def test_eberg_loads_through_the_same_classes(eberg):
    stack, parts = open_stack(eberg)
    assert stack.res == (25.0, 25.0)
    assert [len(p.bands) for p in parts] == [4, 5]
    kept, report = PedonDataset(eberg).labelled("soiltype")
    assert report.n_total == 3670 and report.n_missing == 458 and report.n_kept == 3212
    feats = extract_point_features(eberg, kept["x"].to_numpy(), kept["y"].to_numpy())
    on_grid = feats["DEMTOPx"].notna()
    assert on_grid.sum() > 2000
    # Categorical 100 m codes stay integral codes.
    codes = feats.loc[on_grid, "PRMGEO6"].dropna()
    assert np.allclose(codes, np.round(codes))
    source = ChipSource(eberg)  # the 100 m grid is warped onto the 25 m grid (nearest)
    outside = PedonChipDataset(source, kept[~on_grid.to_numpy()].iloc[:3], chip_size_px=8)
    assert not outside[0]["valid"].any()  # off the grids: fully masked, no exception
    inside = kept[on_grid.to_numpy()]
    ds = PedonChipDataset(source, inside, chip_size_px=8)
    sample = ds[0]
    assert sample["image"].shape == (9, 8, 8)
    # The 100 m categorical bands are upsampled by nearest neighbour: still codes.
    geology = sample["image"][7][sample["valid"][7]]
    assert np.allclose(geology.numpy(), np.round(geology.numpy()))
    expected = feats.iloc[int(np.flatnonzero(on_grid)[0])][
        ["DEMTOPx", "TWITOPx", "NVILANx", "HBTSOLx"]
    ].to_numpy(dtype=np.float32)
    valid = sample["valid"][:4, 4, 4].numpy()
    np.testing.assert_array_equal(valid, ~np.isnan(expected))
    np.testing.assert_array_equal(sample["image"][:4, 4, 4].numpy()[valid], expected[valid])


def test_window_means_keep_class_codes(eberg):
    kept, _ = PedonDataset(eberg).labelled("soiltype")
    feats = extract_point_features(eberg, kept["x"].to_numpy(), kept["y"].to_numpy(), window_px=3)
    codes = feats["PRMGEO6"].dropna().to_numpy()
    assert np.allclose(codes, np.round(codes))  # categorical: centre pixel, not a mean
    dem = feats["DEMSRT6"].dropna().to_numpy()
    assert not np.allclose(dem, np.round(dem))  # continuous: a real window mean


def test_eberg_info_and_check(eberg, capsys):
    summary = dataset_summary(eberg)
    task = summary["pedons"]["tasks"]["soiltype"]
    assert task["classes"]["B"] == 790
    assert task["nn_same_label"] > 2 * task["nn_same_label_chance"]
    problems = check_dataset(eberg.path)
    texts = sorted(p.problem for p in problems)
    assert len(problems) == 2
    assert any("892 pedons lie outside all rasters" in t for t in texts)
    assert any("no-data of band `HBTSOLx` only" in t for t in texts)
    assert all(not p.is_error for p in problems)  # facts of the data, which runs handle
    assert main(["data", "check", str(eberg_dir())]) == 0
    assert main(["data", "info", str(eberg_dir())]) == 0
    assert "soiltype" in capsys.readouterr().out
