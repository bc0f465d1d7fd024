from pathlib import Path

import pytest
import yaml

from miso_bench.data.manifest import load_manifest
from miso_bench.errors import ManifestError


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def base() -> dict:
    return {
        "name": "x",
        "crs": "EPSG:3338",
        "res_m": 10,
        "modalities": {"s2": {"folder": "s2", "bands": ["a", "b"], "nodata": 0}},
        "pedons": {
            "file": "p.gpkg",
            "id_column": "id",
            "labels": {"pf1m": {"column": "pf1m", "classes": [0, 1]}},
        },
    }


def test_minimal_manifest_loads_with_defaults(tmp_path):
    m = load_manifest(write(tmp_path, base()))
    assert m.modalities["s2"].glob == "*.tif"
    assert m.modalities["s2"].res_m == 10.0
    assert m.root == tmp_path.resolve()
    assert m.band_names == ["a", "b"]


def test_unknown_key_suggests_the_right_one(tmp_path):
    data = base()
    data["modalities"]["s2"]["nodat"] = 0
    with pytest.raises(ManifestError) as err:
        load_manifest(write(tmp_path, data))
    assert err.value.field == "modalities.s2.nodat"
    assert "nodata" in err.value.fix
    assert str(tmp_path / "dataset.yaml") in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("crs"), "crs"),
        (lambda d: d.__setitem__("res_m", -1), "res_m"),
        (lambda d: d.__setitem__("crs", "EPSG:999999"), "crs"),
        (lambda d: d["modalities"]["s2"].__setitem__("dtype", "int7"), "modalities.s2.dtype"),
        (lambda d: d["modalities"]["s2"].__setitem__("bands", ["a", "a"]), "modalities.s2.bands"),
        (
            lambda d: d["pedons"]["labels"]["pf1m"].__setitem__("classes", [1]),
            "pedons.labels.pf1m.classes",
        ),
        (lambda d: d["pedons"].__setitem__("x_column", "x"), "pedons.y_column"),
    ],
)
def test_invalid_fields_are_named(tmp_path, mutate, field):
    data = base()
    mutate(data)
    with pytest.raises(ManifestError) as err:
        load_manifest(write(tmp_path, data))
    assert err.value.field == field
    assert err.value.fix


def test_missing_manifest_and_bad_yaml(tmp_path):
    with pytest.raises(ManifestError, match="no dataset manifest"):
        load_manifest(tmp_path)
    (tmp_path / "dataset.yaml").write_text("name: [unclosed")
    with pytest.raises(ManifestError, match="YAML"):
        load_manifest(tmp_path)
