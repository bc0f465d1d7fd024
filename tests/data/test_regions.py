"""Pedons in no region: counted and said, never the worst region, never a region CV fold.
A region layer without a CRS is read in the dataset's, with a warning. Each of these once
changed a regional figure without a word."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import yaml
from shapely.geometry import box

from miso_bench.config import resolve_config
from miso_bench.cv.splitters import LeaveOneRegionOut
from miso_bench.data.check import check_dataset
from miso_bench.data.manifest import load_manifest
from miso_bench.data.regions import OUTSIDE, load_regions
from miso_bench.engine import build_inputs
from miso_bench.errors import MisoBenchWarning
from miso_bench.evaluation.regional import evaluate_by_region
from miso_bench.evaluation.tasks import resolve_task
from tests.data.test_delivery_pixels import X0, Y0, write_tif
from tests.helpers import write_point_dataset

N = 20
PX = X0 + 5.0 + 10.0 * np.arange(N)  # one pedon per pixel along a row
PY = np.full(N, Y0 - 5.0)


def dataset(root: Path, *, prj: bool = True) -> Path:
    """A 1 x 20 px raster, 20 pedons, and a zone layer covering the first 15 of them."""
    write_tif(root / "r" / "a.tif", np.arange(N, dtype=np.float32)[None, :])
    write_point_dataset(root, {"r": {"folder": "r", "bands": ["v"]}}, PX, PY)
    zones = gpd.GeoDataFrame(
        {"name": ["west", "east"]},
        geometry=[box(X0, Y0 - 10, X0 + 80, Y0), box(X0 + 80, Y0 - 10, X0 + 150, Y0)],
        crs="EPSG:3338",
    )
    zones.to_file(root / "zones.shp")
    if not prj:
        (root / "zones.prj").unlink()
    manifest = yaml.safe_load((root / "dataset.yaml").read_text())
    manifest["regions"] = {"zone": {"file": "zones.shp", "field": "name"}}
    (root / "dataset.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return root


def test_pedons_in_no_region_are_counted_and_said(tmp_path, home):
    root = dataset(tmp_path)
    names = load_regions(load_manifest(root))["zone"].assign(PX, PY)
    assert (names == OUTSIDE).sum() == 5 and set(names[:15]) == {"west", "east"}
    config = resolve_config(
        None, None, [f"data.path={root}", "task=lab", "model.name=rf", "model.features=[r]"]
    )
    with pytest.warns(MisoBenchWarning, match="5 of 20 pedons lie in no polygon .* zone"):
        inputs = build_inputs(config, load_manifest(root))
    assert (inputs.regions["zone"] == OUTSIDE).sum() == 5


def test_a_region_layer_without_a_crs_is_read_in_the_datasets_and_said(tmp_path):
    root = dataset(tmp_path, prj=False)
    with pytest.warns(MisoBenchWarning, match="zones.shp: the region layer has no CRS"):
        layers = load_regions(load_manifest(root))
    assert (layers["zone"].assign(PX, PY) == OUTSIDE).sum() == 5


def test_outside_is_never_a_region_cv_fold():
    groups = np.array(["a"] * 4 + ["b"] * 4 + [OUTSIDE] * 3, dtype=object)
    with pytest.warns(MisoBenchWarning, match="3 pedons in no region are never tested"):
        splits = list(LeaveOneRegionOut().split(np.zeros((11, 2)), groups=groups))
    assert [sorted(set(groups[te])) for _, te in splits] == [["a"], ["b"]]
    assert all(set(range(8, 11)) <= set(tr) for tr, _ in splits)  # they train every fold
    assert LeaveOneRegionOut().get_n_splits(groups=groups) == 2


def test_outside_is_never_the_worst_region():
    task = resolve_task("pf1m", {"pf1m": (0, 1)})
    y = np.array([1, 0] * 20 + [1] * 40)
    proba = np.zeros((80, 2))
    proba[np.arange(40), y[:40]] = 1.0  # "a" right everywhere
    proba[40:, 0] = 1.0  # the pedons in no region all wrong
    regions = {"zone": np.array(["a"] * 40 + [OUTSIDE] * 40, dtype=object)}
    x, yy = np.arange(80) * 2000.0, np.zeros(80)
    result = evaluate_by_region(y, proba, task, x, yy, regions, n_boot=0, min_n=10)
    table = result.table
    outside = table[(table["region"] == OUTSIDE) & (table["metric"] == "f1_pos")]
    assert outside["value"].iloc[0] == 0.0  # still reported
    assert result.worst["zone"][0] == "a"


def test_data_check_lists_the_pedons_in_no_region(tmp_path):
    said = [p for p in check_dataset(dataset(tmp_path)) if p.field == "regions.zone"]
    assert len(said) == 1 and not said[0].is_error
    assert "5 of 20 pedons lie in no polygon (ids 15, 16, 17, 18, 19)" in said[0].problem


def test_data_check_notes_a_layer_without_a_crs(tmp_path):
    said = [str(p) for p in check_dataset(dataset(tmp_path / "d", prj=False))]
    assert any("regions.zone.file: the layer has no CRS" in s for s in said), said


@pytest.mark.parametrize(
    ("names", "clash"),
    [(["Yukon Flats", "Yukon-Flats"], "yukon_flats"), (["west", "Outside"], "no polygon")],
)
def test_region_names_that_share_a_metric_key_are_refused(tmp_path, names, clash):
    """Their metrics overwrote each other in MLflow, the truth keys and the report."""
    from miso_bench.errors import DatasetError

    root = dataset(tmp_path)
    zones = gpd.read_file(root / "zones.shp")
    zones["name"] = names
    zones.to_file(root / "zones.shp")
    with pytest.raises(DatasetError, match=clash):
        load_regions(load_manifest(root))
    assert any(p.is_error and clash in p.problem for p in check_dataset(root))


def test_region_names_in_other_scripts_keep_their_own_keys():
    from miso_bench.registry import slugify

    assert slugify("Yukon-Kuskokwim Delta") == "yukon_kuskokwim_delta"
    assert slugify("Ebergötzen") == "ebergötzen"
    assert len({slugify("Якутия"), slugify("Магадан"), slugify("北海道")}) == 3


def test_polygons_without_a_name_are_no_region_and_said(tmp_path):
    """They became a region called "None" (or "nan"), reported like any other."""
    root = dataset(tmp_path)
    zones = gpd.read_file(root / "zones.shp")
    zones["name"] = ["west", None]
    zones.to_file(root / "zones.shp")
    with pytest.warns(MisoBenchWarning, match="1 of 2 polygons have no `name`"):
        layer = load_regions(load_manifest(root))["zone"]
    names = layer.assign(PX, PY)
    assert set(names) == {"west", OUTSIDE} and (names == OUTSIDE).sum() == 5 + 7
    notes = [p for p in check_dataset(root) if p.field == "regions.zone.field"]
    assert len(notes) == 1 and not notes[0].is_error and "no `name`" in notes[0].problem
