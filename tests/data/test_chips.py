"""The chip source (windowed reads through a bounded block cache), the chip-per-pedon sampler
and dataset, on the synthetic default and on deliveries unlike it: NaN no-data, overlapping
tiles, another CRS."""

import pickle

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from miso_bench.data.chips import ChipSource, PedonChipDataset, PedonSampler
from miso_bench.data.features import extract_point_features
from miso_bench.data.manifest import load_manifest
from miso_bench.data.pedons import PedonDataset


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


@pytest.fixture(scope="module")
def source(tiny):
    return ChipSource(tiny)


def test_centre_pixel_equals_raster_value_at_the_pedon(source, tiny, labelled):
    ds = PedonChipDataset(source, labelled, chip_size_px=16)
    for i in range(0, len(ds), max(1, len(ds) // 25)):
        sample = ds[i]
        row = labelled.iloc[i]
        expected = direct_values(tiny, row["x"], row["y"])
        valid = sample["valid"][:, 8, 8].numpy()
        np.testing.assert_array_equal(sample["image"][:, 8, 8].numpy()[valid], expected[valid])
        assert sample["id"] == row["id"]
        assert int(sample["label"]) == row["target"]
        assert sample["coords"].tolist() == [row["x"], row["y"]]
        # The query point lies inside the centre pixel, in grid_sample coordinates.
        qx, qy = sample["query_xy"].tolist()
        assert 2 * 8 / 16 - 1 <= qx < 2 * 9 / 16 - 1
        assert 2 * 8 / 16 - 1 <= qy < 2 * 9 / 16 - 1


def test_source_equals_torchgeo_slice_queries(source, labelled):
    """The block cache returns what torchgeo's own slice query reads, pixel for pixel."""
    sampler = PedonSampler(
        source.stack, labelled["x"], labelled["y"], chip_size_px=24, grid=source.grid
    )
    fill = np.array(
        [np.nan if p.spec.nodata is None else p.spec.nodata for p in source.parts for _ in p.bands],
        dtype=np.float32,
    )
    for i in range(0, len(labelled), 37):
        xs, ys = sampler.window(i)
        try:
            reference = source.stack[xs, ys]["image"].numpy()
        except IndexError:  # torchgeo refuses queries outside every file
            continue
        r0, c0 = sampler.offset(i)
        image, valid = source.window(r0, c0, 24, 24)
        expected_valid = reference != fill[:, None, None]
        inside = valid.any(axis=0) | expected_valid.any(axis=0)
        np.testing.assert_array_equal(valid[:, inside], expected_valid[:, inside])
        np.testing.assert_array_equal(image[valid], reference[valid])


def test_nodata_and_outside_pixels_are_masked_and_zero(tiny, source, labelled):
    # Put a chip on a window corner so that three quarters of it lie outside every raster.
    path = tiny.modality_files("sentinel2")[0]
    with rasterio.open(path) as src:
        b = src.bounds
    corner = labelled.iloc[[0]].copy()
    corner["x"], corner["y"] = b.left + 5.0, b.top - 5.0
    sample = PedonChipDataset(source, corner, chip_size_px=16)[0]
    valid = sample["valid"]
    assert valid[:, 8:, 8:].all()
    assert not valid[:, :8, :].any() and not valid[:, :, :8].any()
    assert (sample["image"][~valid] == 0).all()
    # Cloud no-data in Sentinel-2 is masked band by band: terrain stays valid under clouds.
    ds = PedonChipDataset(source, labelled, chip_size_px=64)
    for i in range(len(ds)):
        s = ds[i]
        cloud_only = ~s["valid"][0] & s["valid"][9]
        if cloud_only.any():
            assert (s["image"][:9][:, cloud_only] == 0).all()
            assert not s["valid"][:9][:, cloud_only].any()
            break
    else:
        raise AssertionError("expected a chip touching cloud no-data in the tiny dataset")


def test_nan_nodata_is_masked_and_never_reaches_the_image(tiny_nan_dir, tiny, labelled):
    nan = load_manifest(tiny_nan_dir)
    ds = PedonChipDataset(ChipSource(nan), labelled, chip_size_px=64)
    reference = PedonChipDataset(ChipSource(tiny), labelled, chip_size_px=64)
    for i in range(0, len(ds), 11):
        a, b = ds[i], reference[i]
        assert not torch.isnan(a["image"]).any()
        assert torch.equal(a["valid"], b["valid"])
        assert torch.equal(a["image"], b["image"])


def test_block_cache_is_bounded(tiny, labelled):
    small = ChipSource(tiny, block_px=32, cache_mb=0.25)
    assert small.max_blocks == 4  # 19 bands x 32 x 32 x 4 bytes = 76 kB a block: 3, floor 4
    ds = PedonChipDataset(small, labelled, chip_size_px=48)
    first = [ds[i]["image"].clone() for i in range(40)]
    assert len(small._cache) <= small.max_blocks
    assert small.misses > small.max_blocks  # blocks were evicted and read again
    again = [ds[i]["image"] for i in range(40)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_source_pickles_without_its_cache(source, labelled):
    ds = PedonChipDataset(source, labelled, chip_size_px=16)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone.source._cache) == 0
    assert torch.equal(clone[0]["image"], ds[0]["image"])


def test_overlapping_tiles_give_chips_and_point_features_the_same_values(tiny_copy):
    """A tile whose overlap with its neighbour is no-data: both paths take the neighbour's
    value (the first valid value in file-name order), band by band."""
    src_path = sorted((tiny_copy / "terrain").glob("*.tif"))[0]
    with rasterio.open(src_path) as src:
        data, profile, t = src.read(), src.profile.copy(), src.transform
    # A second tile "AAA...", first in file-name order, covering the first tile's left half
    # shifted by 10 px; its own left 30 columns are no-data.
    shifted = data.copy()
    shifted[:, :, :30] = profile["nodata"]
    shifted[:, :, 30:] = data[:, :, 30:] + 1000.0  # distinguishable values
    profile.update(transform=Affine(t.a, 0, t.c + 10 * t.a, 0, t.e, t.f))
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    overlap = tiny_copy / "terrain" / "AAA_overlap.tif"
    with rasterio.open(overlap, "w", **profile) as dst:
        dst.write(shifted)
    text = (tiny_copy / "dataset.yaml").read_text().replace("glob: AK050H*V*.tif", "glob: '*.tif'")
    (tiny_copy / "dataset.yaml").write_text(text)
    m = load_manifest(tiny_copy)
    assert m.modality_files("terrain")[0].name == "AAA_overlap.tif"
    source = ChipSource(m, modalities=["terrain"])
    # Pixels of the original tile's columns 5..60 on row 20: the overlap tile is no-data for
    # its first 30 columns (original columns 10..39) and valid beyond.
    cols = np.arange(5, 60)
    x = t.c + (cols + 0.5) * t.a
    y = np.full(cols.size, t.f + 20.5 * t.e)
    feats = extract_point_features(m, x, y, modalities=["terrain"])
    row0, col0 = source.grid.pixel_of(x[:1], y[:1])
    image, valid = source.window(int(row0[0]), int(col0[0]), 1, cols.size)
    np.testing.assert_array_equal(feats.to_numpy().T, np.where(valid[:, 0], image[:, 0], np.nan))
    original = data[:, 20, cols].astype(np.float64)
    from_overlap = cols >= 40  # overlap tile valid there: first in name order, it wins
    np.testing.assert_array_equal(feats.to_numpy()[~from_overlap].T, original[:, ~from_overlap])
    shifted_source = shifted[:, 20, cols[from_overlap] - 10].astype(np.float64)
    np.testing.assert_array_equal(feats.to_numpy()[from_overlap].T, shifted_source)
    # 3 x 3 window means are taken over the same mosaic as the chips.
    means = extract_point_features(m, x, y, modalities=["terrain"], window_px=3)
    block = source.raw_window(int(row0[0]) - 1, int(col0[0]) - 1, 3, cols.size + 2)
    windows = np.stack([block[:, :, j : j + 3].reshape(7, -1) for j in range(cols.size)])
    expected = np.nanmean(windows, axis=2)
    # Aspect (circular) is averaged as a direction.
    circular = [m.modalities["terrain"].bands.index(b) for b in m.modalities["terrain"].circular]
    assert circular == [0]
    rad = np.deg2rad(windows[:, 0])
    mean_dir = np.arctan2(np.nanmean(np.sin(rad), 1), np.nanmean(np.cos(rad), 1))
    expected[:, 0] = np.mod(np.rad2deg(mean_dir), 360)
    np.testing.assert_allclose(means.to_numpy(), expected, rtol=1e-6)


def test_a_tile_in_another_crs_is_warped_onto_the_grid(tiny_copy, tiny):
    """One terrain tile delivered in UTM: chips read it on the dataset's grid."""
    path = sorted((tiny_copy / "terrain").glob("*.tif"))[1]
    with rasterio.open(path) as src:
        bounds, crs = src.bounds, src.crs
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    utm = "EPSG:32606"
    with rasterio.open(path) as src:
        transform, width, height = calculate_default_transform(
            crs, utm, src.width, src.height, *bounds, resolution=10.0
        )
        profile = src.profile.copy()
        profile.update(crs=utm, transform=transform, width=width, height=height)
        data = np.full((src.count, height, width), src.nodata, dtype=np.float32)
        reproject(
            rasterio.band(src, list(range(1, src.count + 1))),
            data,
            dst_transform=transform,
            dst_crs=utm,
            dst_nodata=src.nodata,
            resampling=Resampling.bilinear,
        )
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    warped = ChipSource(load_manifest(tiny_copy), modalities=["terrain"])
    original = ChipSource(tiny, modalities=["terrain"])
    cx, cy = (bounds.left + bounds.right) / 2, (bounds.bottom + bounds.top) / 2
    a, va, _ = warped.window_at(cx, cy, 32)
    b, vb, _ = original.window_at(cx, cy, 32)
    assert va[1].all() and vb[1].all()
    elevation = 1  # a smooth band: two bilinear resamplings stay close
    assert np.abs(a[elevation] - b[elevation]).mean() < 0.05 * np.abs(b[elevation]).std() + 1.0


def test_jitter_is_bounded_and_deterministic(source, labelled):
    x, y = labelled["x"].to_numpy(), labelled["y"].to_numpy()
    g = source.grid
    sampler = PedonSampler(source.stack, x, y, chip_size_px=32, grid=g, jitter_px=5, seed=3)
    still = PedonSampler(source.stack, x, y, chip_size_px=32, grid=g)
    windows = list(sampler)
    assert len(windows) == len(labelled) == len(sampler)
    assert windows == list(
        PedonSampler(source.stack, x, y, chip_size_px=32, grid=g, jitter_px=5, seed=3)
    )
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


def test_chips_work_with_a_dataloader(source, labelled):
    ds = PedonChipDataset(source, labelled, chip_size_px=16, region_columns=[])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch["image"].shape == (8, 19, 16, 16)
    assert batch["valid"].dtype == torch.bool
    assert batch["query_xy"].shape == (8, 2)
    assert batch["label"].shape == (8,)


@pytest.mark.parametrize("size", [7, 8])
def test_jitter_never_moves_the_pedon_out_of_its_chip(source, labelled, size):
    with pytest.raises(ValueError, match="jitter_px"):
        PedonChipDataset(
            source,
            labelled,
            chip_size_px=size,
            jitter_px=size // 2 + 1 if size % 2 else size // 2,
        )
    ds = PedonChipDataset(source, labelled, chip_size_px=size, jitter_px=(size - 1) // 2)
    q = np.stack([ds[i]["query_xy"].numpy() for i in range(len(ds))])
    assert (q >= -1).all() and (q < 1).all()


def test_geographic_dataset_reads_on_its_degree_grid(tiny_geographic_dir):
    m = load_manifest(tiny_geographic_dir)
    source = ChipSource(m)
    assert source.grid.res == pytest.approx(1e-4)
    kept, _ = PedonDataset(m).labelled("tax_order")
    ds = PedonChipDataset(source, kept, chip_size_px=16)
    sample = ds[0]
    direct = direct_values(m, kept["x"].iloc[0], kept["y"].iloc[0])
    valid = sample["valid"][:, 8, 8].numpy()
    np.testing.assert_array_equal(sample["image"][:, 8, 8].numpy()[valid], direct[valid])
