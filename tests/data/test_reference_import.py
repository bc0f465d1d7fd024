"""``data import-reference``: the reference's files become a dataset with the same values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from miso_bench.cli import main
from miso_bench.data.check import check_dataset
from miso_bench.data.features import extract_point_features
from miso_bench.data.manifest import load_manifest
from miso_bench.data.pedons import PedonDataset
from miso_bench.data.reference import resolve_label
from tests.reference_layout import write_reference_layout


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    src = write_reference_layout(tmp_path_factory.mktemp("reference"))
    root = src["root"]
    out = root / "dataset"
    code = main(
        [
            "data",
            "import-reference",
            "--points",
            str(root / "points.json"),
            "--s2-dir",
            str(root / "s2"),
            "--cov-dir",
            str(root / "cov"),
            "--splits",
            str(root / "kfold5_split_train_test_indices.json"),
            str(root / "uniform_split_train_test_indices.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return src, out


def test_label_rules():
    assert resolve_label("Gelisols", "unanimous") == ("Gelisols", "single")
    assert resolve_label(["A", "A"], "unanimous") == ("A", "list_kept")
    assert resolve_label(["A", "B"], "unanimous") == (None, "list_dropped")
    assert resolve_label(["A", "B", "A"], "majority") == ("A", "list_kept")
    assert resolve_label(["A", "B"], "majority") == (None, "list_dropped")
    assert resolve_label(["B", "A"], "first") == ("B", "list_kept")
    assert resolve_label(float("nan"), "unanimous") == (None, "missing")
    assert resolve_label([None, float("nan")], "first") == (None, "missing")


def test_import_passes_check_and_counts_every_record(imported):
    _src, out = imported
    problems = check_dataset(out)
    assert not [p for p in problems if p.is_error], problems
    report = json.loads((out / "import_report.json").read_text())
    assert report["records"] == 81 and report["without_coordinates"] == 1
    tax = report["labels"]["tax_order"]
    # 80 records: per 10, one agreeing list (kept), one disagreeing (dropped), one NaN
    # (missing), one Alfisols (outside the classes).
    assert tax["lists_kept"] == 8 and tax["lists_dropped"] == 8
    assert tax["missing"] == 8 and tax["outside_classes"] == 8
    assert tax["kept"] == 80 - 8 - 8 - 8
    pf = report["labels"]["pf1m"]
    assert pf["lists_kept"] == 8 and pf["lists_dropped"] == 8 and pf["kept"] == 72
    assert report["tiles"] == {"sentinel2": 2, "terrain": 2, "climate": 2}
    kept, _rep = PedonDataset(load_manifest(out)).labelled("tax_order")
    assert len(kept) == tax["kept"]


def test_values_at_pedons_equal_the_h5_source(imported):
    src, out = imported
    manifest = load_manifest(out)
    pedons = PedonDataset(manifest).table
    feats = extract_point_features(manifest, pedons["x"].to_numpy(), pedons["y"].to_numpy())
    by_id = {str(r["id"]): r for r in src["records"]}
    for row, (_, f) in zip(pedons.itertuples(), feats.iterrows(), strict=True):
        rec = by_id[str(row.id)]
        s2, cov = src["arrays"][rec["grid_id"]]
        yp, xp = int(rec["y_pixel"]), int(rec["x_pixel"])
        want = np.concatenate([s2[yp, xp].astype(float), cov[yp, xp].astype(float)])
        got = f[manifest.band_names].to_numpy(dtype=float)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # No-data in the source (the first 4 x 4 pixels of Sentinel-2, the last 3 x 3 of the
    # covariates) stays no-data.
    from miso_bench.data.tiles import tile_bounds

    xmin, _ymin, _xmax, ymax = tile_bounds("AK050H36V09")
    corner = extract_point_features(manifest, np.array([xmin + 15.0]), np.array([ymax - 15.0]))
    assert corner[list(manifest.modalities["sentinel2"].bands)].isna().all(axis=None)
    assert corner[list(manifest.modalities["terrain"].bands)].notna().all(axis=None)
    size = src["arrays"]["AK050H36V09"][0].shape[0]
    far = extract_point_features(
        manifest, np.array([xmin + 10 * size - 5.0]), np.array([ymax - 10 * size + 5.0])
    )
    assert far[list(manifest.modalities["climate"].bands)].isna().all(axis=None)


def _run_with_split(data, split, uri) -> int:
    """``miso-bench run`` of the majority null with a reference split file."""
    args = ["run", "--model", "majority", "--task", "pf1m", "--data", str(data)]
    return main([*args, "--cv", f"file:{split}", "--tracking-uri", uri, "--set", "eval.n_boot=10"])


def test_split_files_round_trip(imported, tmp_path):
    _src, out = imported
    uri = f"sqlite:///{tmp_path}/t.db"
    split = out / "splits" / "kfold5_split_train_test_indices.json"
    assert _run_with_split(out, split, uri) == 0
    client = MlflowClient(uri)
    run = client.search_runs(
        [client.get_experiment_by_name("aksdb/pf1m").experiment_id],
        "tags.run_level = 'parent'",
    )[0]
    oof = pd.read_parquet(client.download_artifacts(run.info.run_id, "oof_predictions.parquet"))
    folds = json.loads(split.read_text())
    for k in range(5):
        want = {str(i) for i in folds[f"fold_{k}"]["test"]}
        got = set(oof.loc[oof["fold"] == k, "id"].astype(str))
        assert got == want & set(oof["id"].astype(str))
    uniform = out / "splits" / "uniform_split_train_test_indices.json"
    assert _run_with_split(out, uniform, uri) == 0


def test_an_interrupted_import_resumes_and_bad_input_is_one_line(imported, capsys, tmp_path):
    src, out = imported
    root = src["root"]
    before = {p: p.stat().st_mtime_ns for p in (out / "sentinel2").glob("*.tif")}
    again = ["--points", str(root / "points.json"), "--s2-dir", str(root / "s2")]
    assert main(["data", "import-reference", *again, "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "sentinel2").glob("*.tif")} == before
    assert (
        main(["data", "import-reference", "--points", str(root / "nope.json"), "--out", "x"]) == 2
    )
    assert "cannot read the point JSON" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(
        [
            "data",
            "import-reference",
            "--points",
            str(root / "points.json"),
            "--s2-dir",
            str(empty),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "no AK050HxxVyy.h5 tiles" in capsys.readouterr().err
