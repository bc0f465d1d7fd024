from pathlib import Path

import pytest

from miso_bench.config import DEFAULTS, ConfigError, config_hash, parse_set, resolve_config
from miso_bench.data.features import resolve_feature_columns

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_resolve_to_the_documented_values():
    cfg = resolve_config()
    assert cfg == resolve_config(None, {}, [])
    assert cfg["cv"]["name"] == "spatial" and cfg["model"]["name"] == "rf"
    assert cfg["cv"]["block_size_m"] == "auto"


def test_merge_order(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / "rf.yaml").write_text(
        "model: {params: {n_estimators: 10, max_depth: 4}}\ncv: {n_splits: 3}\n"
    )
    monkeypatch.setenv("MISO_BENCH_CONFIGS", str(tmp_path))
    exp = tmp_path / "exp.yaml"
    exp.write_text("model: {params: {max_depth: 6}}\ncv: {n_splits: 4, name: cluster}\n")
    cfg = resolve_config(exp, {"cv": {"name": "knndm"}}, ["cv.n_splits=7", "seed=3"])
    assert cfg["model"]["params"] == {"n_estimators": 10, "max_depth": 6}  # model < experiment
    assert cfg["cv"]["name"] == "knndm"  # experiment < flags
    assert cfg["cv"]["n_splits"] == 7  # flags < --set
    assert cfg["seed"] == 3
    assert cfg["eval"] == DEFAULTS["eval"]


def test_nested_model_parameters_merge_in_every_layer(tmp_path, monkeypatch):
    from miso_bench.models import build_model
    from miso_bench.models.miso.losses import merged_aux

    models = tmp_path / "models"
    models.mkdir()
    (models / "miso.yaml").write_text("model: {params: {aux: {geo: 0.5}}}\n")
    monkeypatch.setenv("MISO_BENCH_CONFIGS", str(tmp_path))
    cfg = resolve_config(None, {"model": {"name": "miso"}}, ["model.params.aux.visual_geo_nce=0.2"])
    assert cfg["model"]["params"] == {"aux": {"geo": 0.5, "visual_geo_nce": 0.2}}
    model = build_model("miso", cfg["model"]["params"], n_classes=2, seed=0)
    assert merged_aux(model.aux) == {"geo": 0.5, "sat_cov_nce": 0.1, "visual_geo_nce": 0.2}


def test_the_model_layer_is_documented_where_it_lives():
    assert (CONFIGS / "models" / "README.md").is_file()


def test_unknown_keys_are_rejected_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean `cv\.n_splits`"):
        resolve_config(None, None, ["cv.n_split=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: {name: rf}\n")
    with pytest.raises(ConfigError, match="did you mean `model`"):
        resolve_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["cv.n_splits"])
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_config(tmp_path / "missing.yaml")


def test_set_values_are_parsed_as_yaml():
    assert parse_set(["a.b=3", "c=[s2, coords]", "d=null", "e=auto"]) == {
        "a": {"b": 3},
        "c": ["s2", "coords"],
        "d": None,
        "e": "auto",
    }


def test_config_hash_is_stable_and_sensitive():
    a, b = resolve_config(), resolve_config()
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(resolve_config(None, None, ["seed=1"]))


# configs/search holds search spaces, not experiment configs; tests/search/test_space.py
# loads every one of those.
EXPERIMENT_CONFIGS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if "search" not in p.relative_to(CONFIGS).parts
)


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_resolves(path, tiny):
    cfg = resolve_config(path)
    if cfg["model"]["features"]:
        assert resolve_feature_columns(tiny, cfg["model"]["features"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cv.n_splits=abc", "cv.n_splits"),
        ("cv.n_splits=1", "cv.n_splits"),
        ("cv.block_size_m=-5", "cv.block_size_m"),
        ("eval.ci=2", "eval.ci"),
        ("model.window_px=2", "odd"),
        ("model.features=s2", "model.features"),
        ("seed=-1", "seed"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(None, None, [override])


def test_tests_never_write_into_the_repository_or_the_users_home():
    """Tests that name only a tracking store once left MLflow artifacts, caches and locks in
    the clone's ./.miso-bench; every test now runs under the session's own home."""
    from miso_bench.config import home_dir
    from tests.conftest import REPO

    home = home_dir()
    assert home != REPO / ".miso-bench" and REPO not in home.parents
