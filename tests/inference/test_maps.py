"""Maps: grids, blending, seams, no-data, resume, AOA, Dask, and one inference path."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from mlflow.tracking import MlflowClient

from miso_bench.cli import main
from miso_bench.config import resolve_config
from miso_bench.data.chips import ChipSource
from miso_bench.data.features import feature_table, window_feature_table
from miso_bench.data.manifest import load_manifest
from miso_bench.errors import MisoBenchError
from miso_bench.inference import maps as maps_module
from miso_bench.inference.aoa import AOAReference
from miso_bench.inference.maps import dataset_tiles, predict_map
from miso_bench.models.miso.tiling import blend_weights, lattice_range
from miso_bench.runner import run_benchmark
from tests.helpers import split_tiles_copy, write_point_dataset


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private MISO_BENCH_HOME and tracking store for the module."""
    root = tmp_path_factory.mktemp("maps")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MISO_BENCH_HOME", str(root / "home"))
        yield {"root": root, "uri": f"sqlite:///{root}/t.db"}


def _run(data: Path, env: dict, **sets: object) -> str:
    overrides = [
        f"data.path={data}",
        "eval.n_boot=20",
        f"tracking.uri={env['uri']}",
        *(f"{k}={v}" for k, v in sets.items()),
    ]
    return run_benchmark(resolve_config(None, None, overrides), announce=lambda m: None).run_id


@pytest.fixture(scope="module")
def split_dir(tiny_dir, tmp_path_factory):
    """The tiny dataset with every tile cut into adjacent west and east files."""
    return split_tiles_copy(tiny_dir, tmp_path_factory.mktemp("split") / "tiny_split")


@pytest.fixture(scope="module")
def rf_run(tiny_dir, env):
    return _run(
        tiny_dir, env, **{"model.name": "rf", "task": "pf1m", "model.params.n_estimators": 30}
    )


@pytest.fixture(scope="module")
def miso_run(split_dir, env):
    return _run(
        split_dir,
        env,
        **{
            "model.name": "miso",
            "task": "pf1m",
            "cv.n_splits": 2,
            "model.params.epochs": 1,
            "model.params.preset": "cpu",
            "model.params.device": "cpu",
        },
    )


def _map(run_id: str, out: Path, env: dict, **kw: object) -> maps_module.MapResult:
    kw.setdefault("all_tiles", True)
    return predict_map(
        run_id, out, tracking_uri=env["uri"], say=lambda m: None, show_progress=False, **kw
    )


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), src.profile.copy()


# --- the lattice --------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "stride"), [(32, 16), (32, 8), (32, 32), (256, 128), (9, 4)])
def test_blending_weights_sum_to_one_and_cover_every_pixel(size, stride):
    w = blend_weights(size)
    total = np.zeros(200)
    for k in lattice_range(0, 200, size, stride):
        for u in range(size):
            p = k * stride + u
            if 0 <= p < 200:
                total[p] += w[u]
    assert (total > 0).all()
    normalised = [
        sum(w[p - k * stride] / total[p] for k in lattice_range(p, 1, size, stride))
        for p in range(200)
    ]
    np.testing.assert_allclose(normalised, 1.0, atol=1e-12)
    if stride * 2 == size:  # the default: raw Hann weights already sum to one
        np.testing.assert_allclose(total[size:-size], 1.0, atol=1e-12)


def test_lattice_windows_are_those_that_overlap():
    for start in range(-40, 40):
        got = set(lattice_range(start, 7, 32, 16))
        want = {k for k in range(-10, 10) if k * 16 < start + 7 and k * 16 + 32 > start}
        assert got == want


# --- trees: pixel features equal point features --------------------------------------------
@pytest.mark.parametrize("window", [1, 3, 5])
def test_pixel_features_equal_point_features(tiny_nan_dir, window):
    manifest = load_manifest(tiny_nan_dir)
    source = ChipSource(manifest)
    region = dataset_tiles(source)[0]
    k = window // 2
    r0, c0, h, w = region.r0 + 50, region.c0 + 30, 20, 24
    raw = source.raw_window(r0 - k, c0 - k, h + 2 * k, w + 2 * k)
    g = source.grid
    xs = g.x0 + (c0 + np.arange(w) + 0.5) * g.res
    ys = g.y0 - (r0 + np.arange(h) + 0.5) * g.res
    grid = window_feature_table(manifest, raw, list(source.band_names), window, xs, ys)
    gx, gy = np.meshgrid(xs, ys)
    points = feature_table(manifest, gx.ravel(), gy.ravel(), window_px=window)
    assert list(grid.columns) == list(points.columns)
    np.testing.assert_allclose(grid.to_numpy(), points.to_numpy(), rtol=1e-12, equal_nan=True)


# --- AOA ----------------------------------------------------------------------------------
def test_aoa_is_one_inside_the_training_range_and_zero_far_outside():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    folds = np.arange(300) % 5
    ref = AOAReference.fit(X, folds)
    assert 0 < ref.threshold < 2
    inside = ref.di(np.zeros((1, 4)))
    outside = ref.di(np.full((1, 4), 25.0))
    assert inside[0] <= ref.threshold < outside[0]
    # A predictor weighted zero does not move the DI.
    zero = AOAReference.fit(X, folds, weights=np.array([1.0, 1.0, 1.0, 0.0]))
    far_in_ignored = np.array([[0.0, 0.0, 0.0, 1e6]])
    assert zero.di(far_in_ignored)[0] <= zero.threshold
    assert np.isnan(ref.di(np.array([[np.nan, 0, 0, 0]])))[0]
    # A holdout (one test fold) gives no cross-validated DI: no threshold, DI still defined.
    holdout = AOAReference.fit(X, np.zeros(300))
    assert np.isnan(holdout.threshold) and np.isfinite(holdout.di(np.zeros((1, 4))))[0]
    with pytest.raises(MisoBenchError, match="two training pedons"):
        AOAReference.fit(X[:1], np.zeros(1))


# --- tree maps ----------------------------------------------------------------------------
@pytest.mark.slow
def test_rf_map_grid_nodata_truth_and_logging(tiny_dir, rf_run, env, tmp_path):
    out = tmp_path / "rf"
    result = _map(rf_run, out, env)
    manifest = load_manifest(tiny_dir)
    assert sorted(result.tiles) == sorted(p.stem for p in manifest.modality_files("sentinel2"))
    for path in manifest.modality_files("sentinel2"):
        cls, prof = _read(out / f"{path.stem}.class.tif")
        stats, sprof = _read(out / f"{path.stem}.stats.tif")
        with rasterio.open(path) as src:
            s2 = src.read(masked=True)
            # Output grid, CRS and transform are the input's.
            assert (prof["crs"], prof["transform"]) == (src.crs, src.transform)
            assert (prof["width"], prof["height"]) == (src.width, src.height)
        assert sprof["transform"] == prof["transform"]
        # No-data stays no-data: declared values, not 0.
        assert prof["nodata"] == 255 and np.isnan(sprof["nodata"])
        hole = np.ma.getmaskarray(s2).any(axis=0)
        for other in ("terrain", "climate"):  # the model reads every modality
            with rasterio.open(tiny_dir / other / path.name) as src:
                hole |= np.ma.getmaskarray(src.read(masked=True)).any(axis=0)
        assert hole.any()
        assert (cls[0][hole] == 255).all() and (cls[0][~hole] < 2).all()
        assert np.isnan(stats[:, hole]).all() and np.isfinite(stats[:3, ~hole]).all()
        assert set(np.unique(stats[3][~hole])) <= {0.0, 1.0}
        with rasterio.open(out / f"{path.stem}.class.tif") as src:
            assert src.descriptions == ("class",)
            assert src.colormap(1)[1][:3] == (44, 102, 190)
            assert src.tags()["CLASS_1"] == "1"
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        with rasterio.open(out / f"{path.stem}.stats.tif") as src:
            assert src.descriptions == ("p_1", "uncertainty", "di", "aoa")
        assert (out / f"{path.stem}.png").stat().st_size > 10_000
    with rasterio.open(out / "class.vrt") as vrt:
        assert vrt.crs == prof["crs"] and vrt.res == (10.0, 10.0)
    assert (out / "quicklook.png").is_file()
    # The truth sample, read back from the written maps, equals the run's own truth path
    # (the same features at the same pixels): one inference path.
    client = MlflowClient(env["uri"])
    final = client.get_run(result.logged_to)
    assert final.data.tags["fold"] == "final"
    assert final.data.metrics["map/overall/f1_pos"] == pytest.approx(
        result.truth.query("layer == 'overall' and metric == 'f1_pos'")["value"].iloc[0]
    )
    fold0 = _map(rf_run, tmp_path / "fold0", env, fold="0", quicklooks=False, log=False)
    runs = client.search_runs(
        [final.info.experiment_id], f"tags.mlflow.parentRunId = '{rf_run}' and tags.fold = '0'"
    )
    truth = runs[0].data.metrics
    got = fold0.truth.query("layer == 'overall' and metric == 'f1_pos'")["value"].iloc[0]
    assert got == pytest.approx(truth["truth/overall/f1_pos"], abs=1e-12)
    artifacts = {a.path for a in client.list_artifacts(final.info.run_id, "maps/rf")}
    assert "maps/rf/quicklook.png" in artifacts and "maps/rf/summary.json" in artifacts


@pytest.mark.slow
def test_a_constant_model_writes_a_constant_map(tiny_dir, env, tmp_path):
    run = _run(tiny_dir, env, **{"model.name": "majority", "task": "pf1m"})
    result = _map(run, tmp_path / "m", env, tiles=["AK050H50V15"], all_tiles=False)
    stats, _ = _read(tmp_path / "m" / "AK050H50V15.stats.tif")
    cls, _ = _read(tmp_path / "m" / "AK050H50V15.class.tif")
    valid = cls[0] != 255
    assert len(np.unique(cls[0][valid])) == 1
    assert np.ptp(stats[0][valid]) == 0 and np.ptp(stats[1][valid]) == 0
    assert result.records[0]["mapped_pixels"] == int(valid.sum())


@pytest.mark.slow
def test_resume_skips_finished_tiles_and_a_crash_leaves_no_partial_file(
    rf_run, env, tmp_path, monkeypatch
):
    out = tmp_path / "resume"
    real = maps_module.run_tile
    calls: list[str] = []

    def crash_on_second(job, progress=None):
        calls.append(job.region.name)
        if len(calls) == 2:
            original = maps_module.TileWriter.write

            def write_then_die(self, *a, **k):
                original(self, *a, **k)
                raise KeyboardInterrupt

            monkeypatch.setattr(maps_module.TileWriter, "write", write_then_die)
            try:
                return real(job, progress)
            finally:
                monkeypatch.setattr(maps_module.TileWriter, "write", original)
        return real(job, progress)

    monkeypatch.setattr(maps_module, "run_tile", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _map(rf_run, out, env, quicklooks=False, log=False)
    first, second = calls
    assert (out / f"{first}.class.tif").is_file() and (out / f"{first}.json").is_file()
    assert not list(out.glob(f"{second}*")), "a killed tile left a file under its final name"
    assert not list(out.glob(".*.partial*")), "partial files were not removed"
    # A hard kill leaves hidden partial files only: the next start removes them.
    (out / f".{second}.class.tif.partial").write_bytes(b"half")
    calls.clear()
    monkeypatch.setattr(
        maps_module,
        "run_tile",
        lambda job, progress=None: (calls.append(job.region.name), real(job, progress))[1],
    )
    result = _map(rf_run, out, env, quicklooks=False, log=False)
    assert first in result.skipped and first not in calls and second in calls
    assert not list(out.glob(".*.partial*"))
    assert len(result.records) == 4
    # The folder belongs to one request: another fold is refused, not mixed in.
    with pytest.raises(MisoBenchError, match="another request"):
        _map(rf_run, out, env, fold="1", quicklooks=False, log=False)


@pytest.mark.slow
def test_dask_gives_the_same_pixels_as_the_serial_path(rf_run, env, tmp_path):
    serial = _map(rf_run, tmp_path / "serial", env, quicklooks=False, log=False)
    dask = _map(rf_run, tmp_path / "dask", env, quicklooks=False, log=False, workers=2)
    assert sorted(serial.tiles) == sorted(dask.tiles)
    for name in serial.tiles:
        for kind in ("class", "stats"):
            a, _ = _read(tmp_path / "serial" / f"{name}.{kind}.tif")
            b, _ = _read(tmp_path / "dask" / f"{name}.{kind}.tif")
            np.testing.assert_array_equal(a, b)
    # --scheduler ADDRESS: a running cluster (here one started by the test).
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        remote = _map(
            rf_run,
            tmp_path / "remote",
            env,
            quicklooks=False,
            log=False,
            scheduler=cluster.scheduler_address,
            tiles=[serial.tiles[0]],
            all_tiles=False,
        )
    a, _ = _read(tmp_path / "serial" / f"{remote.tiles[0]}.stats.tif")
    b, _ = _read(tmp_path / "remote" / f"{remote.tiles[0]}.stats.tif")
    np.testing.assert_array_equal(a, b)
    with pytest.raises(MisoBenchError, match="no Dask scheduler answers"):
        _map(rf_run, tmp_path / "nowhere", env, log=False, scheduler="tcp://127.0.0.1:9")


# --- MISO maps ----------------------------------------------------------------------------
@pytest.mark.slow
def test_miso_tiles_have_no_seam_and_equal_one_map_of_their_union(
    split_dir, miso_run, env, tmp_path
):
    """Adjacent tiles mapped apart equal one box over both: windows read across the border."""
    from miso_bench import load_model

    manifest = load_manifest(split_dir)
    east, west = sorted(p.stem for p in manifest.modality_files("sentinel2"))[:2]
    assert (west[-1], east[-1]) == ("W", "E")
    tiles = _map(miso_run, tmp_path / "tiles", env, tiles=[west, east], all_tiles=False, log=False)
    assert tiles.truth is not None
    with (
        rasterio.open(tmp_path / "tiles" / f"{west}.stats.tif") as a,
        rasterio.open(tmp_path / "tiles" / f"{east}.stats.tif") as b,
    ):
        left, right = a.read(1), b.read(1)
        assert a.bounds.right == b.bounds.left
        xmin, ymin, xmax, ymax = a.bounds.left, a.bounds.bottom, b.bounds.right, a.bounds.top
    box = _map(
        miso_run, tmp_path / "box", env, bbox=[xmin, ymin, xmax, ymax], all_tiles=False, log=False
    )
    union, _ = _read(next((tmp_path / "box").glob("bbox_*.stats.tif")))
    joined = np.concatenate([left, right], axis=1)
    np.testing.assert_allclose(joined, union[0], atol=1e-6, equal_nan=True)
    assert box.records[0]["pixels"] == joined.size
    # The map's value at a pixel is the model's point prediction there (the CV and truth path).
    predictor = load_model(miso_run, tracking_uri=env["uri"])
    source = ChipSource(manifest)
    predictor.model.attach(source)
    g = source.grid
    rows = np.array([3, 60, 64, 100])
    cols = np.array([63, 63, 64, 0])
    with rasterio.open(tmp_path / "tiles" / f"{west}.stats.tif") as a:
        x, y = rasterio.transform.xy(a.transform, rows, cols)
    at = predictor.predict_points(split_dir, np.array(x), np.array(y))
    r, _c = g.pixel_of(np.array(x), np.array(y))
    assert (r >= 0).all() or (r < 0).all()  # pixels on the grid
    np.testing.assert_allclose(at[:, 1], joined[rows, cols], atol=1e-5)


@pytest.mark.slow
def test_miso_map_path_equals_blended_single_windows(split_dir, miso_run, env):
    """decode_region equals the straightforward formulation: each lattice window decoded on
    its own (decode_window), weighted and normalised."""
    from miso_bench import load_model

    predictor = load_model(miso_run, tracking_uri=env["uri"])
    manifest = load_manifest(split_dir)
    source = ChipSource(manifest)
    model = predictor.model.attach(source)
    region = dataset_tiles(source)[0]
    r0, c0, h, w = region.r0 + 20, region.c0 + 50, 24, 30
    fast, emb = model.decode_region(r0, c0, h, w, embed=True)
    size, stride = model._size, model.map_stride()
    wt = blend_weights(size)
    acc = np.zeros((2, h, w))
    total = np.zeros((h, w))
    for i in lattice_range(r0, h, size, stride):
        for j in lattice_range(c0, w, size, stride):
            wr, wc = i * stride, j * stride
            image, valid = source.window(wr, wc, size, size)
            probs = model.decode_window(image, valid, source.grid.bounds_of(wr, wc, size, size))
            for rr in range(max(wr, r0), min(wr + size, r0 + h)):
                for cc in range(max(wc, c0), min(wc + size, c0 + w)):
                    weight = wt[rr - wr] * wt[cc - wc]
                    acc[:, rr - r0, cc - c0] += weight * probs[:, rr - wr, cc - wc]
                    total[rr - r0, cc - c0] += weight
    np.testing.assert_allclose(fast, acc / total, atol=1e-5)
    assert emb is not None and emb.shape[1:] == (h, w)


# --- the command line ---------------------------------------------------------------------
@pytest.mark.slow
def test_predict_cli_and_its_errors(rf_run, env, tmp_path, capsys):
    base = ["predict", "--run", rf_run, "--tracking-uri", env["uri"], "--out", str(tmp_path / "c")]
    assert main([*base, "--tile", "AK050H50V15", "--no-log"]) == 0
    shown = capsys.readouterr().out
    assert "Mapped 1 tile(s)" in shown and "truth sample" in shown
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["tiles"] == ["AK050H50V15"]
    assert main([*base, "--tile", "NOPE"]) == 2
    assert "no such tile" in capsys.readouterr().err
    assert main([*base, "--bbox", "1,2,3"]) == 2
    assert "xmin,ymin,xmax,ymax" in capsys.readouterr().err
    assert main([*base, "--bbox", "0,0,10,10"]) == 2
    assert "does not overlap" in capsys.readouterr().err
    assert main([*base, "--bbox", "-10,-10,-5,-5"]) == 2  # a negative value is not an option
    assert "does not overlap" in capsys.readouterr().err
    assert (
        main(["predict", "--run", "nope", "--tracking-uri", env["uri"], "--out", "x", "--all"]) == 2
    )
    assert "no MLflow run" in capsys.readouterr().err
    assert main([*base, "--all", "--fold", "7"]) == 2
    assert "fold" in capsys.readouterr().err
    # A fold's own run id implies its fold; another --fold with it is refused.
    client = MlflowClient(env["uri"])
    parent = client.get_run(rf_run)
    fold1 = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{rf_run}' and tags.fold = '1'"
    )[0].info.run_id
    other = ["predict", "--run", fold1, "--tracking-uri", env["uri"], "--out", str(tmp_path / "f")]
    assert main([*other, "--tile", "AK050H50V15", "--fold", "final"]) == 2
    assert "is the model of fold 1" in capsys.readouterr().err
    assert main([*other, "--tile", "AK050H50V15", "--no-log"]) == 0
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["fold"] == "1"
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.slow
def test_fold_ensemble_uncertainty_is_the_fold_spread(rf_run, env, tmp_path):
    result = _map(
        rf_run,
        tmp_path / "ens",
        env,
        fold="all",
        tiles=["AK050H50V15"],
        all_tiles=False,
        probabilities=True,
        log=False,
        quicklooks=False,
    )
    stats, _ = _read(tmp_path / "ens" / "AK050H50V15.stats.tif")
    with rasterio.open(tmp_path / "ens" / "AK050H50V15.stats.tif") as src:
        assert src.descriptions == ("p_1", "p_0", "p_1", "uncertainty", "di", "aoa")
    valid = np.isfinite(stats[0])
    np.testing.assert_allclose(stats[1][valid] + stats[2][valid], 1.0, atol=1e-6)
    assert (stats[3][valid] >= 0).all() and stats[3][valid].max() > 0
    assert result.records[0]["mapped_pixels"] == int(valid.sum())
    assert pd.notna(result.truth["value"]).any()


@pytest.mark.slow
def test_overlapping_tiles_agree_where_they_overlap(tiny_dir, env, tmp_path):
    data = split_tiles_copy(tiny_dir, tmp_path / "overlap", overlap_px=8)
    run = _run(data, env, **{"model.name": "rf", "task": "pf1m", "model.params.n_estimators": 20})
    stems = sorted(p.stem for p in load_manifest(data).modality_files("sentinel2"))[:2]
    result = _map(
        run, tmp_path / "m", env, tiles=stems, all_tiles=False, log=False, quicklooks=False
    )
    east, _ = _read(tmp_path / "m" / f"{stems[0]}.stats.tif")
    west, _ = _read(tmp_path / "m" / f"{stems[1]}.stats.tif")
    half = west.shape[2] - 16  # west spans [0, half + 8), east [half - 8, end)
    np.testing.assert_array_equal(west[:, :, half:], east[:, :, :16])
    # The summary's pixel sums count the 16-column overlap once per tile, and say so.
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["overlap_pixels"] == result.overlap_pixels == 16 * west.shape[1]


def test_overlap_pixels_counts_each_shared_pixel_once():
    from miso_bench.inference.maps import Region, overlap_pixels

    a, b = Region("a", 0, 0, 10, 10), Region("b", 5, 5, 10, 10)
    assert overlap_pixels([a]) == 0
    assert overlap_pixels([a, b]) == 25
    assert overlap_pixels([a, b, Region("a2", 0, 0, 10, 10)]) == 100  # all of a, once
    assert overlap_pixels([a, Region("c", 20, 20, 5, 5)]) == 0


@pytest.mark.slow
def test_a_map_in_longitude_latitude_keeps_the_input_grid(tiny_geographic_dir, env, tmp_path):
    run = _run(
        tiny_geographic_dir,
        env,
        **{
            "model.name": "rf",
            "task": "pf1m",
            "model.params.n_estimators": 20,
            "cv.block_size_m": 5000,
        },
    )
    manifest = load_manifest(tiny_geographic_dir)
    first = manifest.modality_files("sentinel2")[0]
    _map(run, tmp_path / "g", env, tiles=[first.stem], all_tiles=False, log=False)
    with (
        rasterio.open(first) as src,
        rasterio.open(tmp_path / "g" / f"{first.stem}.class.tif") as m,
    ):
        assert m.crs == src.crs and m.crs.is_geographic
        assert m.transform.almost_equals(src.transform) and m.shape == src.shape
        assert (m.read(1) != 255).mean() > 0.5
    # GDAL reads the mosaic's longitude/latitude in raster x/y order (latitude is EPSG:4326's
    # first axis): the VRT says so, or QGIS and gdalwarp would swap the axes.
    assert 'dataAxisToSRSAxisMapping="2,1"' in (tmp_path / "g" / "class.vrt").read_text()
    with (
        rasterio.open(tmp_path / "g" / "class.vrt") as vrt,
        rasterio.open(tmp_path / "g" / f"{first.stem}.class.tif") as tile,
    ):
        assert vrt.bounds == tile.bounds
        np.testing.assert_array_equal(vrt.read(1), tile.read(1))


@pytest.mark.slow
def test_a_multi_resolution_map_equals_the_point_path(tiny_dir, env, tmp_path):
    """Climate delivered at 20 m under the 10 m grid. Trees map it by sampling each file at the
    pixel centre, as their training features were read, not through a bilinear-resampled
    chip: the map's probability at a pixel equals the point prediction there."""
    import shutil

    from miso_bench import load_model
    from tests.helpers import edit_manifest

    data = tmp_path / "coarse"
    shutil.copytree(tiny_dir, data)
    for path in sorted((data / "climate").glob("*.tif")):
        with rasterio.open(path) as src:
            arr, profile = src.read(), src.profile.copy()
        c, h, w = arr.shape
        coarse = arr.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        coarse[(arr == profile["nodata"]).reshape(c, h // 2, 2, w // 2, 2).any(axis=(2, 4))] = (
            profile["nodata"]
        )
        t = profile["transform"]
        profile.update(
            width=w // 2, height=h // 2, transform=rasterio.Affine(20.0, 0, t.c, 0, -20.0, t.f)
        )
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        profile["tiled"] = False
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(coarse.astype(np.float32))

    def coarser(d):
        d["modalities"]["climate"]["res_m"] = 20.0

    edit_manifest(data, coarser)
    run = _run(data, env, **{"model.name": "rf", "task": "pf1m", "model.params.n_estimators": 20})
    tile = sorted(p.stem for p in load_manifest(data).modality_files("sentinel2"))[0]
    _map(run, tmp_path / "m", env, tiles=[tile], all_tiles=False, log=False, quicklooks=False)
    with rasterio.open(tmp_path / "m" / f"{tile}.stats.tif") as src:
        p_pos = src.read(1)
        rows = np.arange(3, src.height, 7)
        cols = np.arange(2, src.width, 9)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        x, y = rasterio.transform.xy(src.transform, rr.ravel(), cc.ravel())
    proba = load_model(run, tracking_uri=env["uri"]).predict_points(data, np.array(x), np.array(y))
    got = p_pos[rr.ravel(), cc.ravel()]
    keep = np.isfinite(got)
    assert keep.mean() > 0.8
    np.testing.assert_allclose(got[keep], proba[keep, 1], atol=1e-6)


@pytest.mark.slow
def test_a_folder_mosaics_only_this_requests_tiles(rf_run, env, tmp_path):
    out = tmp_path / "shared"
    tiles = sorted(_map(rf_run, tmp_path / "probe", env, log=False, quicklooks=False).tiles)
    _map(rf_run, out, env, tiles=[tiles[0]], all_tiles=False, log=False, quicklooks=False)
    other = _map(
        rf_run, out, env, fold="0", tiles=[tiles[1]], all_tiles=False, log=False, quicklooks=False
    )
    with (
        rasterio.open(out / "class.vrt") as vrt,
        rasterio.open(out / f"{tiles[1]}.class.tif") as tile,
    ):
        assert vrt.bounds == tile.bounds  # the first request's tile is not in the mosaic
    assert other.truth is not None
    n = other.truth.query("layer == 'overall' and metric == 'accuracy'")["n"].iloc[0]
    unmapped = other.truth.query("metric == 'n_unmapped'")["value"].iloc[0]
    assert n + unmapped == 4000 and unmapped == 3000  # one tile's truth points of four
    with pytest.raises(MisoBenchError, match="another request"):
        _map(rf_run, out, env, fold="0", tiles=[tiles[0]], all_tiles=False, log=False)


@pytest.mark.slow
def test_the_mapped_dataset_must_list_the_models_classes_in_order(tiny_dir, rf_run, env, tmp_path):
    import shutil

    from tests.helpers import edit_manifest

    data = tmp_path / "swapped"
    shutil.copytree(tiny_dir, data)

    def swap(d):
        d["pedons"]["labels"]["pf1m"]["classes"] = [1, 0]

    edit_manifest(data, swap)
    with pytest.raises(MisoBenchError, match="the model predicts"):
        _map(rf_run, tmp_path / "m", env, data=data, log=False)


def test_tree_map_mask_follows_the_features_at_a_geographic_files_edge(env, tmp_path):
    """A modality in longitude/latitude on a metric grid: the map's mask came from GDAL's warp
    (an approximate transform) while the features are sampled at pixel centres, so pixels
    right at the file's no-data edge were mapped from a missing band (or left unmapped
    where it was valid). Mapped pixels are now exactly those whose features are complete."""
    from pyproj import Transformer

    from miso_bench import load_model

    root = tmp_path / "geo_edge"
    cx, cy = Transformer.from_crs("EPSG:4326", "EPSG:3338", always_xy=True).transform(-147.7, 64.85)
    x0, y0 = np.floor(cx / 10) * 10 - 8000, np.floor(cy / 10) * 10 + 8000
    rng = np.random.default_rng(5)

    def write(path: Path, data: np.ndarray, crs: str, transform: rasterio.Affine) -> None:
        path.parent.mkdir(parents=True)
        with rasterio.open(
            path, "w", driver="GTiff", count=1, height=data.shape[0], width=data.shape[1],
            dtype="float32", crs=crs, transform=transform, nodata=-9999,
        ) as dst:  # fmt: skip
            dst.write(data[None])

    write(
        root / "g" / "g.tif",
        rng.normal(size=(1600, 1600)).astype(np.float32),
        "EPSG:3338",
        rasterio.transform.from_origin(x0, y0, 10, 10),
    )
    u = rng.normal(size=(500, 500)).astype(np.float32)
    u[166:250, 166:250] = -9999  # a no-data hole inside the file as well as its edges
    res = 0.0004
    write(
        root / "u" / "u.tif",
        u,
        "EPSG:4326",
        rasterio.transform.from_origin(-147.7 - 250 * res, 64.85 + 250 * res / 2.3, res, res / 2.3),
    )
    n = 200
    write_point_dataset(
        root,
        {
            "g": {"folder": "g", "bands": ["gv"], "nodata": -9999},
            "u": {"folder": "u", "bands": ["uv"], "nodata": -9999, "res_m": 20.0},
        },
        x0 + rng.uniform(8000, 14000, n),
        y0 - rng.uniform(3000, 10000, n),
        labels=rng.integers(0, 2, n),
        name="geo_edge",
    )
    run = _run(
        root,
        env,
        **{"model.name": "rf", "task": "lab", "cv.name": "random", "model.params.n_estimators": 20},
    )
    bbox = (x0 + 9900, y0 - 3300, x0 + 12400, y0 - 2700)  # across the file's northern edge
    result = _map(run, tmp_path / "m", env, bbox=bbox, all_tiles=False, log=False, quicklooks=False)
    with rasterio.open(tmp_path / "m" / f"{result.tiles[0]}.stats.tif") as src:
        p_pos = src.read(1)
        rows, cols = np.meshgrid(np.arange(src.height), np.arange(src.width), indexing="ij")
        x, y = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
    x, y = np.asarray(x), np.asarray(y)
    mapped = np.isfinite(p_pos.ravel())
    complete = feature_table(load_manifest(root), x, y)[["gv", "uv"]].notna().all(axis=1)
    assert 0.3 < mapped.mean() < 0.95  # the box holds both sides of the edge
    np.testing.assert_array_equal(mapped, complete.to_numpy())
    proba = load_model(run, tracking_uri=env["uri"]).predict_points(root, x[mapped], y[mapped])
    np.testing.assert_allclose(p_pos.ravel()[mapped], proba[:, 1], atol=1e-6)


def test_the_same_crs_in_another_spelling_is_the_same(rf_run, env, tiny_copy):
    """`crs: epsg:3338` (or a WKT) is the model's EPSG:3338: it was refused as another CRS."""
    from miso_bench import load_model
    from tests.helpers import edit_manifest

    model = load_model(rf_run, tracking_uri=env["uri"])
    points = pd.read_parquet(tiny_copy / "truth.parquet").head(5)
    x, y = points["x"].to_numpy(), points["y"].to_numpy()
    reference = model.predict_points(tiny_copy, x, y)
    edit_manifest(tiny_copy, lambda d: d.update(crs="epsg:3338"))
    np.testing.assert_array_equal(model.predict_points(tiny_copy, x, y), reference)
    edit_manifest(tiny_copy, lambda d: d.update(crs="EPSG:32606"))
    with pytest.raises(MisoBenchError, match="the model was trained on data in EPSG:3338"):
        model.predict_points(tiny_copy, x, y)


def test_the_scored_class_band_is_spelled_as_the_datasets_class():
    """A pf1m label stored as true/false matches the registered positive class 1 (True == 1);
    its map band must spell the class as the run's metrics do (``p/True``), not as ``p_1``."""
    from miso_bench.evaluation.tasks import TASKS

    task = replace(TASKS.get("pf1m"), classes=(False, True))
    assert maps_module.stat_band_names(task, probabilities=True) == [
        "p_True",
        "p_False",
        "p_True",
        "uncertainty",
        "di",
        "aoa",
    ]
    numeric = replace(task, classes=(0, 1))
    assert maps_module.stat_band_names(numeric, probabilities=False)[0] == "p_1"
