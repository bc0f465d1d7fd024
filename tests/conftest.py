"""Shared fixtures: a tiny synthetic Alaska generated once per test session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from miso_bench.data.manifest import DatasetManifest, load_manifest
from miso_bench.data.synthetic import generate_synthetic_alaska

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test writes into ``./.miso-bench`` or the user's ``$MISO_BENCH_HOME``: the session has
    its own home (caches, locks, MLflow artifacts of tests that name only a tracking store);
    the ``home`` fixture gives a test a fresh one."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MISO_BENCH_HOME", str(tmp_path_factory.mktemp("session-home")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _one_fit_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs fit their folds one after another unless a test asks for workers
    (``jobs=`` or ``MISO_BENCH_JOBS``): quick and independent of the machine's cores."""
    monkeypatch.setenv("MISO_BENCH_JOBS", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset (read-only by convention: copy it before changing files)."""
    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate_synthetic_alaska(out, preset="tiny", seed=0, workers=1)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path) -> DatasetManifest:
    """The manifest of the tiny synthetic dataset."""
    return load_manifest(tiny_dir)


@pytest.fixture
def tiny_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny dataset."""
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_dir, dst)
    return dst


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated MISO_BENCH_HOME."""
    monkeypatch.setenv("MISO_BENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def eberg_dir() -> Path:
    """The eberg manifest folder, or skip when ../shared/realdata is absent."""
    if not (REALDATA / "eberg" / "eberg_points.gpkg").is_file():
        pytest.skip(
            f"real data not found at {REALDATA / 'eberg'} (it ships beside the repo in "
            "shared/realdata)"
        )
    return REPO / "datasets" / "eberg"


@pytest.fixture(scope="session")
def tiny_geographic_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset in longitude/latitude (EPSG:4326, 0.0001 degree pixels)."""
    from tests.helpers import reproject_dataset

    return reproject_dataset(
        tiny_dir, tmp_path_factory.mktemp("geographic") / "tiny4326", "EPSG:4326", 1e-4
    )


@pytest.fixture(scope="session")
def tiny_nan_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset with Sentinel-2 as float32 and NaN no-data."""
    from tests.helpers import nan_nodata_copy

    return nan_nodata_copy(tiny_dir, tmp_path_factory.mktemp("nan") / "tinynan")
