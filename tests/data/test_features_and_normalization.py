import numpy as np
import pytest
import rasterio
import torch

from miso_bench.data.features import extract_point_features
from miso_bench.data.normalization import Normalizer, compute_band_stats
from miso_bench.data.pedons import PedonDataset


def rasterio_sample(manifest, x, y):
    out = {}
    for name, spec in manifest.modalities.items():
        vals = np.full((len(x), len(spec.bands)), np.nan)
        for path in manifest.modality_files(name):
            with rasterio.open(path) as src:
                b = src.bounds
                on = (x >= b.left) & (x < b.right) & (y > b.bottom) & (y <= b.top)
                got = np.array(list(src.sample(zip(x[on], y[on], strict=True))), dtype=float)
                if got.size:
                    got[got == src.nodata] = np.nan
                    vals[on] = got
        for j, band in enumerate(spec.bands):
            out[band] = vals[:, j]
    return out


def test_features_equal_direct_rasterio_sampling(tiny):
    table = PedonDataset(tiny).table
    x, y = table["x"].to_numpy(), table["y"].to_numpy()
    # add points outside every raster
    x = np.concatenate([x, [0.0, 1e7]])
    y = np.concatenate([y, [0.0, 1e7]])
    feats = extract_point_features(tiny, x, y)
    direct = rasterio_sample(tiny, x, y)
    assert list(feats.columns) == tiny.band_names
    for band, values in direct.items():
        np.testing.assert_array_equal(feats[band].to_numpy(), values)
    assert feats.iloc[-2:].isna().all().all()


def test_points_read_block_by_block_give_the_same_values(tiny, monkeypatch):
    """Full-size tiles are read in blocks of points, never whole: same values."""
    import miso_bench.data.features as features

    table = PedonDataset(tiny).table
    x, y = table["x"].to_numpy(), table["y"].to_numpy()
    whole = extract_point_features(tiny, x, y, window_px=3)
    monkeypatch.setattr(features, "READ_BLOCK_PX", 16)
    blocks = extract_point_features(tiny, x, y, window_px=3)
    np.testing.assert_array_equal(whole.to_numpy(), blocks.to_numpy())


def test_window_mean_of_valid_pixels(tiny):
    path = tiny.modality_files("terrain")[0]
    with rasterio.open(path) as src:
        data = src.read(2).astype(float)
        b = src.bounds
    x, y = np.array([b.left + 105.0]), np.array([b.top - 205.0])  # pixel (row 20, col 10)
    feats = extract_point_features(tiny, x, y, modalities=["terrain"], window_px=3)
    expected = data[19:22, 9:12].mean()
    assert feats["elevation_full_10m_3338"].iloc[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="odd"):
        extract_point_features(tiny, x, y, window_px=2)


def test_robust_normalisation_keeps_spread_of_skewed_bands(tiny):
    stats = compute_band_stats(tiny)
    assert set(stats) == set(tiny.band_names)
    assert stats["spi"].transform == "asinh"
    norm = Normalizer(stats, tiny.band_names)
    table = PedonDataset(tiny).table
    feats = extract_point_features(tiny, table["x"].to_numpy(), table["y"].to_numpy())
    values = feats.to_numpy()
    valid = ~np.isnan(values)
    out = norm(values, valid, channel_axis=-1)
    stds = dict(zip(tiny.band_names, out.std(axis=0), strict=True))
    # The reference squashed these to std < 0.01; here each keeps a usable spread.
    for band in ("spi", "tpi_4", "maxc_4"):
        assert stds[band] > 0.1, band
    assert np.all(np.abs(out) <= 5.0)
    assert np.all(out[~valid] == 0.0)


def test_normalizer_on_chips_and_json_round_trip(tiny, tmp_path):
    stats = compute_band_stats(tiny)
    norm = Normalizer(stats, tiny.band_names)
    image = torch.rand(2, 19, 4, 4) * 1000
    valid = torch.ones_like(image, dtype=torch.bool)
    valid[0, 0, 0, 0] = False
    out = norm(image, valid)
    assert isinstance(out, torch.Tensor) and out.shape == image.shape
    assert out[0, 0, 0, 0] == 0
    again = Normalizer.from_json(norm.to_json(tmp_path / "stats.json"))
    assert torch.equal(again(image, valid), out)


@pytest.mark.parametrize("channels", [None, [3, 0, 18, 11]])
def test_tensors_are_normalised_in_torch_like_arrays_in_numpy(tiny, channels):
    """The torch path (chips) and the numpy path (point features) give the same values,
    asinh, categorical and invalid pixels included; ``channels`` picks bands of either."""
    from dataclasses import replace

    stats = compute_band_stats(tiny)
    stats[tiny.band_names[11]] = replace(stats[tiny.band_names[11]], categorical=True)
    norm = Normalizer(stats, tiny.band_names)
    assert norm.asinh.any() and norm.categorical.any()
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(3, 19, 5, 5, generator=g) - 0.3) * 3000
    image[0, 2, 1, 1] = float("nan")
    valid = torch.rand(3, 19, 5, 5, generator=g) > 0.1
    out = norm(image, valid, channels=channels)
    want = norm(image.numpy(), valid.numpy(), channels=channels)
    assert isinstance(out, torch.Tensor) and not isinstance(want, torch.Tensor)
    picked = list(range(19)) if channels is None else channels
    assert out.shape == (3, len(picked), 5, 5)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-6)
    full = norm(image.numpy(), valid.numpy())
    np.testing.assert_array_equal(want, full[:, picked])


def test_band_statistics_are_cached_per_dataset(tiny, home, monkeypatch):
    """Computed once per dataset (the same values, bit for bit, read back); a damaged cache
    file or another dataset's fingerprint computes them again."""
    from miso_bench.data import cache

    first = cache.cached_band_stats(tiny, "f" * 16)
    assert first == compute_band_stats(tiny)
    calls = []

    def counted(manifest, *args, **kwargs):
        calls.append(manifest)
        return compute_band_stats(manifest, *args, **kwargs)

    monkeypatch.setattr("miso_bench.data.normalization.compute_band_stats", counted)
    assert cache.cached_band_stats(tiny, "f" * 16) == first and calls == []
    (path,) = (home / "cache" / "band_stats" / ("f" * 16)).glob("*.json")
    path.write_text("{not json")
    assert cache.cached_band_stats(tiny, "f" * 16) == first and len(calls) == 1
    assert cache.cached_band_stats(tiny, "e" * 16) == first and len(calls) == 2


@pytest.mark.parametrize("shape, axis", [((3, 19, 7, 9), -3), ((41, 19), -1), ((2, 5, 19), -1)])
def test_asinh_on_its_bands_alone_gives_the_same_values(tiny, shape, axis):
    """asinh is computed on the bands that use it (spi: one of 19), not on every band and then
    selected: the values are those of the every-band formula, bit for bit, in torch and numpy,
    NaN and negative values included."""
    stats = compute_band_stats(tiny)
    norm = Normalizer(stats, tiny.band_names)
    assert 0 < norm.asinh.sum() < len(tiny.band_names)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(*shape, generator=g) - 0.3) * 3000
    x.view(-1)[::13] = float("nan")
    bshape = [1] * len(shape)
    bshape[axis] = -1
    mask = torch.from_numpy(norm.asinh).reshape(bshape)
    center = torch.from_numpy(norm.center).reshape(bshape)
    scale = torch.from_numpy(norm.scale).reshape(bshape)
    cat = torch.from_numpy(norm.categorical).reshape(bshape)
    t = torch.where(mask, torch.asinh(x), x)  # the every-band formula
    want = torch.where(cat, t, ((t - center) / scale).clamp(-5, 5)).nan_to_num(nan=0.0)
    assert torch.equal(norm(x, channel_axis=axis), want)
    a = x.numpy()
    ta = np.where(norm.asinh.reshape(bshape), np.arcsinh(a), a)
    wa = np.clip((ta - norm.center.reshape(bshape)) / norm.scale.reshape(bshape), -5, 5)
    wa = np.nan_to_num(np.where(norm.categorical.reshape(bshape), ta, wa), nan=0.0)
    np.testing.assert_array_equal(norm(a, channel_axis=axis), wa.astype(np.float32))
    assert not np.shares_memory(norm(a, channel_axis=axis), a)  # the input is left alone
    before = x.clone()
    norm(x, channel_axis=axis)
    assert torch.equal(x.nan_to_num(nan=-1), before.nan_to_num(nan=-1))
