"""The chip-per-pedon sampler and dataset."""

import numpy as np
import pytest
import rasterio
import torch

from miso_bench.data.chips import PedonChipDataset, PedonSampler
from miso_bench.data.pedons import PedonDataset
from miso_bench.data.rasters import open_stack


def direct_values(manifest, x: float, y: float) -> np.ndarray:
    """All 19 band values at a point, read straight from the files with rasterio."""
    values = []
    for name in manifest.modalities:
        for path in manifest.modality_files(name):
            with rasterio.open(path) as src:
                b = src.bounds
                if b.left <= x < b.right and b.bottom < y <= b.top:
                    values.extend(next(src.sample([(x, y)])))
    return np.array(values, dtype=np.float32)


@pytest.fixture(scope="module")
def labelled(tiny):
    kept, _ = PedonDataset(tiny).labelled("tax_order")
    return kept


@pytest.mark.parametrize("preload", [False, True])
def test_centre_pixel_equals_raster_value_at_the_pedon(tiny, labelled, preload):
    stack, parts = open_stack(tiny)
    ds = PedonChipDataset(stack, parts, labelled, chip_size_px=16, preload=preload)
    for i in range(0, len(ds), max(1, len(ds) // 25)):
        sample = ds[i]
        row = labelled.iloc[i]
        expected = direct_values(tiny, row["x"], row["y"])
        assert np.array_equal(sample["image"][:, 8, 8].numpy(), expected)
        assert sample["id"] == row["id"]
        assert int(sample["label"]) == row["target"]
        assert sample["coords"].tolist() == [row["x"], row["y"]]
        # The query point lies inside the centre pixel, in grid_sample coordinates.
        qx, qy = sample["query_xy"].tolist()
        assert 2 * 8 / 16 - 1 <= qx < 2 * 9 / 16 - 1
        assert 2 * 8 / 16 - 1 <= qy < 2 * 9 / 16 - 1


def test_preload_matches_torchgeo_queries(tiny, labelled):
    stack, parts = open_stack(tiny)
    slow = PedonChipDataset(stack, parts, labelled, chip_size_px=24)
    fast = PedonChipDataset(stack, parts, labelled, chip_size_px=24, preload=True)
    for i in range(0, len(slow), 37):
        a, b = slow[i], fast[i]
        assert torch.equal(a["valid"], b["valid"])
        assert torch.equal(a["image"][a["valid"]], b["image"][b["valid"]])


def test_nodata_and_outside_pixels_are_masked_not_zero_filled(tiny, labelled):
    stack, parts = open_stack(tiny)
    # Put a chip on a window corner so that three quarters of it lie outside every raster.
    path = tiny.modality_files("sentinel2")[0]
    with rasterio.open(path) as src:
        b = src.bounds
    corner = labelled.iloc[[0]].copy()
    corner["x"], corner["y"] = b.left + 5.0, b.top - 5.0
    for preload in (False, True):
        sample = PedonChipDataset(stack, parts, corner, chip_size_px=16, preload=preload)[0]
        valid = sample["valid"]
        assert valid[:, 8:, 8:].all()
        assert not valid[:, :8, :].any() and not valid[:, :, :8].any()
    # Cloud no-data in Sentinel-2 is masked band by band: terrain stays valid under clouds.
    nodata = tiny.modalities["sentinel2"].nodata
    ds = PedonChipDataset(stack, parts, labelled, chip_size_px=64, preload=True)
    found = False
    for i in range(len(ds)):
        s = ds[i]
        cloud_only = ~s["valid"][0] & s["valid"][9]
        if cloud_only.any():
            assert (s["image"][:9][:, cloud_only] == nodata).all()
            assert not s["valid"][:9][:, cloud_only].any()
            found = True
            break
    assert found, "expected a chip touching cloud no-data in the tiny dataset"


def test_jitter_is_bounded_and_deterministic(tiny, labelled):
    stack, _ = open_stack(tiny)
    x, y = labelled["x"].to_numpy(), labelled["y"].to_numpy()
    sampler = PedonSampler(stack, x, y, chip_size_px=32, jitter_px=5, seed=3)
    still = PedonSampler(stack, x, y, chip_size_px=32)
    windows = list(sampler)
    assert len(windows) == len(labelled) == len(sampler)
    assert windows == list(PedonSampler(stack, x, y, chip_size_px=32, jitter_px=5, seed=3))
    shifts = np.array(
        [
            [w[0].start - s[0].start, w[1].start - s[1].start]
            for w, s in zip(windows, still, strict=True)
        ]
    )
    assert np.abs(shifts).max() <= 5 * 10.0 and np.abs(shifts).max() > 0
    sampler.set_epoch(1)
    assert list(sampler) != windows
    for w in windows[:10]:
        assert w[0].stop - w[0].start == 320.0 and w[0].step == 10.0


def test_chips_work_with_a_dataloader(tiny, labelled):
    stack, parts = open_stack(tiny)
    ds = PedonChipDataset(stack, parts, labelled, chip_size_px=16, preload=True, region_columns=[])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch["image"].shape == (8, 19, 16, 16)
    assert batch["valid"].dtype == torch.bool
    assert batch["query_xy"].shape == (8, 2)
    assert batch["label"].shape == (8,)


@pytest.mark.parametrize("size", [7, 8])
def test_jitter_never_moves_the_pedon_out_of_its_chip(tiny, labelled, size):
    stack, parts = open_stack(tiny)
    with pytest.raises(ValueError, match="jitter_px"):
        PedonChipDataset(
            stack,
            parts,
            labelled,
            chip_size_px=size,
            jitter_px=size // 2 + 1 if size % 2 else size // 2,
        )
    ds = PedonChipDataset(
        stack, parts, labelled, chip_size_px=size, jitter_px=(size - 1) // 2, preload=True
    )
    q = np.stack([ds[i]["query_xy"].numpy() for i in range(len(ds))])
    assert (q >= -1).all() and (q < 1).all()
