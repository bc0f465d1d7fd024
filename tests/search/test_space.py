"""Search spaces: parsing, and one-line errors for every kind of mistake."""

from pathlib import Path

import optuna
import pytest

from miso_bench.models import MODELS
from miso_bench.search import SearchSpaceError, load_search_space, space_file

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "search"


def params(name: str) -> set[str]:
    return set(MODELS.get(name).cls().get_params()) - {"n_classes", "random_state"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_spaces_parse_and_sample(path):
    family = path.stem
    assert space_file(family) == path
    space = load_search_space(path, params(family))
    assert space.dimensions
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for _ in range(5):
        values = space.suggest(study.ask())
        assert set(values) == {d.path for d in space.dimensions}


def test_kinds_are_read_from_the_values(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "model.params.max_depth: [4, 8, null]\n"
        "model.params.n_estimators: {low: 10, high: 100, step: 10}\n"
        "model.params.max_samples: {low: 0.5, high: 1.0}\n"
        "model.params.min_samples_leaf: {low: 1, high: 64, log: true}\n"
        "cv.inner_val_fraction: {low: 0.1, high: 0.3}\n"
    )
    dims = {d.path: d for d in load_search_space(f, params("rf")).dimensions}
    assert dims["model.params.max_depth"].choices == (4, 8, None)
    assert dims["model.params.n_estimators"].kind == "int"
    assert dims["model.params.max_samples"].kind == "float"
    assert dims["model.params.min_samples_leaf"].log
    assert dims["cv.inner_val_fraction"].kind == "float"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model.params.max_dept: [4, 8]\n", "did you mean model.params.max_depth"),
        ("model.param.max_depth: [4, 8]\n", "unknown config key"),
        ("model.params.max_depth: []\n", "empty list"),
        ("model.params.n_estimators: {low: 100, high: 10}\n", "empty range"),
        ("model.params.n_estimators: {low: ten, high: 100}\n", "expected a number"),
        ("model.params.n_estimators: {low: 1, high: 9, log: yes please}\n", "true or false"),
        ("model.params.max_samples: {low: 0.0, high: 1.0, log: true}\n", "low > 0"),
        ("model.params.n_estimators: {low: 1, high: 9, step: 2, log: true}\n", "cannot go"),
        ("model.params.n_estimators: {low: 1}\n", "give low and high"),
        ("model.params.n_estimators: 5\n", "expected a list of choices"),
        ("model.name: [rf, xgboost]\n", "cannot be searched"),
        ("model.window_px: [1, 3]\n", "fixed before its trials"),
        ("cv.n_splits: [3, 5]\n", "fixed before its trials"),
        ("seed: [0, 1, 2]\n", "fixed before its trials"),
        ("[1, 2]\n", "maps config paths"),
        ("model.params.max_depth: [4, 8\n", "invalid YAML"),
    ],
)
def test_mistakes_are_one_line_errors(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(SearchSpaceError, match=message) as info:
        load_search_space(f, params("rf"))
    assert "\n" not in str(info.value) and str(f) in str(info.value)


def test_the_cli_names_a_missing_space_and_bad_values(home, tiny_dir, capsys):
    from miso_bench.cli import main

    assert main(["sweep", "--model", "majority", "--data", str(tiny_dir)]) == 2
    assert "no search space for model 'majority'" in capsys.readouterr().err
    bad = CONFIGS.parent.parent / "nothing.yaml"
    assert main(["sweep", "--model", "rf", "--space", str(bad), "--data", str(tiny_dir)]) == 2
    assert "--space" in capsys.readouterr().err
