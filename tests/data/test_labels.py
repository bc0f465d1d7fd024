"""Pedon labels as users' files hold them: booleans against 0/1 classes, codes stored as text,
missing-value markers, label names that clash with the table's own columns, binary tasks and
their positive class. Each case once crashed with a traceback or scored the wrong thing."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from miso_bench.data.check import check_dataset
from miso_bench.data.init import draft_manifest
from miso_bench.data.manifest import load_manifest
from miso_bench.data.pedons import PedonDataset, truth_targets
from miso_bench.engine import identity_tags
from miso_bench.errors import ManifestError, MisoBenchError
from miso_bench.evaluation.tasks import resolve_task


def write_raster(path: Path) -> None:
    """A 4 x 4 float raster of ones at (100 km, 100 km) in EPSG:3338."""
    profile = {"driver": "GTiff", "count": 1, "height": 4, "width": 4, "dtype": "float32"}
    transform = from_origin(1e5, 1e5 + 40, 10, 10)
    with rasterio.open(
        path, "w", **profile, crs="EPSG:3338", transform=transform, nodata=-9999
    ) as dst:
        dst.write(np.ones((1, 4, 4), np.float32))


def dataset(root: Path, labels: Any, classes: list[Any], name: str = "lab") -> Path:
    """A 4 x 4 raster and one pedon per label value, in a CSV or (labels as a GeoDataFrame
    column) a GeoPackage."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "r").mkdir(exist_ok=True)
    write_raster(root / "r" / "a.tif")
    n = len(labels)
    x, y = 1e5 + 5 + 10 * (np.arange(n) % 4), 1e5 + 35 - 10 * (np.arange(n) // 4 % 4)
    pedons: dict[str, Any] = {"id_column": "id", "labels": {name: {"column": "lab"}}}
    pedons["labels"][name]["classes"] = classes
    if isinstance(labels, pd.Series):  # a typed column (text) kept by a GeoPackage
        gpd.GeoDataFrame(
            {"id": np.arange(n), "lab": labels}, geometry=gpd.points_from_xy(x, y), crs=3338
        ).to_file(root / "pedons.gpkg")
        pedons["file"] = "pedons.gpkg"
    else:
        pd.DataFrame({"id": np.arange(n), "x": x, "y": y, "lab": labels}).to_csv(
            root / "pedons.csv", index=False
        )
        pedons.update(file="pedons.csv", x_column="x", y_column="y")
    manifest = {
        "name": "labels",
        "crs": "EPSG:3338",
        "res_m": 10.0,
        "modalities": {"r": {"folder": "r", "bands": ["v"], "nodata": -9999}},
        "pedons": pedons,
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return root


@pytest.mark.parametrize(
    ("labels", "classes", "targets"),
    [
        ([True, False, True, False], [0, 1], [1, 0, 1, 0]),  # a boolean column, 0/1 classes
        ([1, 0, 1, 0], [False, True], [1, 0, 1, 0]),  # 0/1 codes, boolean classes
    ],
)
def test_booleans_match_zero_one_classes(tmp_path, labels, classes, targets) -> None:
    """`in` matched True with 1, pandas' map did not: IntCastingNaNError, a traceback."""
    m = load_manifest(dataset(tmp_path, labels, classes))
    kept, report = PedonDataset(m).labelled("lab")
    assert kept["target"].tolist() == targets and report.n_kept == 4
    assert not [p for p in check_dataset(tmp_path) if p.is_error]


def test_codes_stored_as_text_match_numeric_classes_and_markers_are_missing(tmp_path) -> None:
    """A GeoPackage text column "1"/"0" with "-" and "NA" for missing values: every pedon was
    dropped as 'unknown' against classes [0, 1]."""
    labels = pd.Series(["1", "0", "-", "1", "NA", " 0 "], dtype=object)
    m = load_manifest(dataset(tmp_path, labels, [0, 1]))
    kept, report = PedonDataset(m).labelled("lab")
    assert kept["target"].tolist() == [1, 0, 1, 0]
    assert (report.n_missing, report.n_unknown) == (2, 0)


@pytest.mark.parametrize("name", ["x", "y", "id", "geometry", "target"])
def test_a_label_named_like_the_tables_own_columns_is_refused(tmp_path, name) -> None:
    """A label named `x` overwrote the pedons' x coordinates with its values."""
    dataset(tmp_path, [0, 1, 0, 1], [0, 1], name=name)
    with pytest.raises(ManifestError, match=f"the label name `{name}` is a column"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("classes", [[0, 1, 1.0], ["a", "b", " a"], [0, "1", 1]])
def test_the_same_class_listed_twice_is_refused(tmp_path, classes) -> None:
    dataset(tmp_path, [0, 1, 0, 1], classes)
    with pytest.raises(ManifestError, match="are the same value"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("classes", [("absent", "present"), ("0", "1", "2"), (0, 1, 2)])
def test_pf1m_needs_two_classes_with_1_among_them(classes) -> None:
    """['absent', 'present'] crashed after the first fold's training; [0, 1, 2] stayed binary
    and could never predict class 2."""
    with pytest.raises(MisoBenchError, match="task 'pf1m' is binary with positive class 1"):
        resolve_task("pf1m", {"pf1m": classes})


def test_the_positive_class_tag_spells_the_class_as_its_prediction_column() -> None:
    """pf1m with classes [0.0, 1.0] was tagged "1" while its column is p/1.0, so `compare`
    refused the run."""
    task = resolve_task("pf1m", {"pf1m": (0.0, 1.0)})
    inputs = SimpleNamespace(
        model="rf",
        task=task,
        manifest=SimpleNamespace(name="d", crs="EPSG:3338"),
        fingerprint="f",
        frame=SimpleNamespace(metric_crs="EPSG:3338"),
    )
    config = {"cv": {"name": "spatial"}, "seed": 0}
    assert identity_tags(config, inputs)["positive_class"] == "1.0"  # type: ignore[arg-type]
    other = resolve_task("frozen", {"frozen": ("frozen", "unfrozen")})
    assert other.class_names[other.positive_index] == "unfrozen"  # the second one listed


def test_init_keeps_markers_out_of_the_classes_and_says_which_class_is_scored(
    tmp_path,
) -> None:
    """A 0/1 column with "-" for missing values became a 3-class task ('-', '0', '1')."""
    folder = tmp_path / "site"
    (folder / "r").mkdir(parents=True)
    write_raster(folder / "r" / "a.tif")
    n = 24
    pd.DataFrame(
        {
            "id": np.arange(n),
            "x": 1e5 + 5 + 10 * (np.arange(n) % 4),
            "y": 1e5 + 35 - 10 * (np.arange(n) % 4),
            "pf": (["0", "1", "-"] * 8)[:n],
        }
    ).to_csv(folder / "points.csv", index=False)
    draft = draft_manifest(folder)
    manifest = yaml.safe_load((folder / "dataset.yaml").read_text())
    assert [str(c) for c in manifest["pedons"]["labels"]["pf"]["classes"]] == ["0", "1"]
    assert any("scored on its second class '1'" in c for c in draft.checks)


def test_truth_labels_are_read_as_pedon_labels_are() -> None:
    """The map scores and the runs' truth metrics share one reading of the truth sample's
    labels (the map scores once dropped text codes and padded text without a word)."""
    truth = pd.DataFrame(
        {"x": np.arange(6.0), "y": 0.0, "pf1m": ["1", " 0", 1.0, "NA", 2, "0"]}, dtype=object
    )
    kept, target = truth_targets(truth, "pf1m", (0, 1))
    assert kept["x"].tolist() == [0.0, 1.0, 2.0, 5.0]
    assert target.tolist() == [1, 0, 1, 0]
    flags = pd.DataFrame({"x": [0.0, 1.0], "y": 0.0, "pf1m": [True, False]})
    assert truth_targets(flags, "pf1m", (0, 1))[1].tolist() == [1, 0]


def test_csv_pedon_ids_keep_their_leading_zeros(tmp_path) -> None:
    """CSV ids "007" were read as the number 7, so a split file listing "007" matched no
    pedon: its pedons were neither trained on nor tested, with only a warning."""
    from miso_bench.cv.splitters import FileSplit

    root = dataset(tmp_path / "d", [0, 1, 0, 1], [0, 1])
    frame = pd.read_csv(root / "pedons.csv")
    frame["id"] = ["007", "08", "010", "9"]
    frame.to_csv(root / "pedons.csv", index=False)
    ids = PedonDataset(load_manifest(root)).table["id"].tolist()
    assert ids == ["007", "08", "010", "9"]
    split = tmp_path / "split.json"
    split.write_text(
        '{"fold_0": {"train": ["007", "08"], "test": ["010", "9"]},'
        ' "fold_1": {"train": ["010", "9"], "test": ["007", "08"]}}'
    )
    folds = list(FileSplit(split).split(np.zeros((4, 1)), groups=np.asarray(ids, dtype=object)))
    assert [sorted(test.tolist()) for _, test in folds] == [[2, 3], [0, 1]]
    assert [sorted(train.tolist()) for train, _ in folds] == [[0, 1], [2, 3]]


def test_manifest_classes_spelled_like_yaml_11_booleans_stay_text(tmp_path) -> None:
    """PyYAML reads `classes: [ON, OFF]` (or yes/no) as True/False and 010 as 8, which
    matched none of the label's values: those pedons were dropped as unknown."""
    codes = ["ON", "OFF", "yes", "no", "010"]
    root = dataset(tmp_path, codes * 3, codes)
    text = (root / "dataset.yaml").read_text()
    for code in codes:
        text = text.replace(f"'{code}'", code)  # unquoted, as a user would write them
    (root / "dataset.yaml").write_text(text)
    m = load_manifest(root)
    assert m.pedons.labels["lab"].classes == tuple(codes)  # 010 was the octal 8
    _, report = PedonDataset(m).labelled("lab")
    assert report.n_unknown == 0 and report.n_kept == 15
    assert not [p for p in check_dataset(root) if p.is_error]
