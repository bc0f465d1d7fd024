"""Splitter properties (scikit-learn's test_group_kfold style): assert properties, not outputs."""

import json
import warnings

import numpy as np
import pytest
from scipy.spatial import cKDTree

from miso_bench.cv import CV, SplitContext, build_splits, inner_validation_split
from miso_bench.cv.diagnostics import fold_diagnostics
from miso_bench.cv.knndm import KNNDMKFold
from miso_bench.cv.splitters import (
    BufferedSplitter,
    ClusterKFold,
    FileSplit,
    RandomKFold,
    SpatialBlockKFold,
    estimate_autocorrelation_range,
)
from miso_bench.errors import MisoBenchError, MisoBenchWarning
from miso_bench.spatial import block_ids


def clustered(n_clusters: int = 40, per: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pedon-like points: tight clusters scattered over a 200 km square."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 200_000, size=(n_clusters, 2))
    X = np.concatenate([c + rng.normal(0, 300, size=(per, 2)) for c in centres])
    y = rng.integers(0, 3, len(X))
    return X, y


def check_partition(splits, n):
    tested = np.concatenate([te for _, te in splits])
    assert np.array_equal(np.sort(tested), np.arange(n))  # every sample tested exactly once
    for train, test in splits:
        assert not set(train) & set(test)


def test_spatial_blocks_never_straddle_folds_and_are_balanced():
    X, y = clustered()
    cv = SpatialBlockKFold(n_splits=5, block_size_m=5000, random_state=1)
    splits = list(cv.split(X, y))
    check_partition(splits, len(X))
    blocks = block_ids(X[:, 0], X[:, 1], 5000)
    for train, test in splits:
        assert not set(blocks[train]) & set(blocks[test])
    sizes = [len(te) for _, te in splits]
    assert max(sizes) - min(sizes) <= max(np.bincount(blocks))  # within one block's size
    assert [list(t) for _, t in splits] == [list(t) for _, t in cv.split(X, y)]  # determinism
    other = [list(t) for _, t in SpatialBlockKFold(5, 5000, random_state=2).split(X, y)]
    assert other != [list(t) for _, t in splits]


def test_too_few_blocks_is_a_clear_error():
    X, y = clustered(n_clusters=3)
    with pytest.raises(MisoBenchError, match="fewer folds"):
        list(SpatialBlockKFold(5, 500_000).split(X, y))


def test_cluster_folds_keep_linked_pedons_together():
    X, y = clustered()
    splits = list(ClusterKFold(n_splits=5, eps_m=1000, random_state=0).split(X, y))
    check_partition(splits, len(X))
    for train, test in splits:
        d, _ = cKDTree(X[train]).query(X[test])
        assert d.min() > 1000  # a train pedon within eps would have joined the test cluster


def test_random_kfold_is_stratified():
    X, y = clustered()
    splits = list(RandomKFold(5, random_state=0).split(X, y))
    check_partition(splits, len(X))
    shares = [np.bincount(y[te], minlength=3) / len(te) for _, te in splits]
    assert np.ptp(np.array(shares), axis=0).max() < 0.05


def test_buffer_removes_nearby_training_pedons():
    X, y = clustered()
    base = SpatialBlockKFold(5, 2000, random_state=0)
    splits = list(BufferedSplitter(base, buffer_m=1500).split(X, y))
    check_partition(splits, len(X))
    for (train, test), (btrain, _) in zip(splits, base.split(X, y), strict=True):
        d, _ = cKDTree(X[test]).query(X[train])
        assert d.min() > 1500
        assert len(train) < len(btrain)


def test_region_and_file_schemes(tmp_path):
    X, y = clustered()
    regions = np.where(X[:, 0] < 100_000, "west", "east")
    ids = np.arange(1000, 1000 + len(X))
    ctx = SplitContext(X, y, ids, {"mlra": regions})
    _, splits = build_splits("region", {"region": "mlra"}, ctx)
    assert len(splits) == 2
    for _, test in splits:
        assert len(set(regions[test])) == 1
    with pytest.raises(MisoBenchError, match="pf_zone"):
        build_splits("region", {"region": "pf_zone"}, ctx)
    folds = {
        f"fold_{k}": {
            "train": [int(i) for i in ids if i % 3 != k],
            "test": [int(i) for i in ids if i % 3 == k],
        }
        for k in range(3)
    }
    path = tmp_path / "split.json"
    path.write_text(json.dumps(folds))
    _, splits = build_splits("file", {"path": str(path)}, ctx)
    check_partition(splits, len(X))
    assert all((ids[te] % 3 == k).all() for k, (_, te) in enumerate(splits))
    path.write_text("{not json")
    with pytest.raises(MisoBenchError, match="split file"):
        FileSplit(path)


def test_a_split_file_tests_each_pedon_once_and_says_what_it_leaves_untested(tmp_path):
    """A pedon in two test lists would get two predictions, the later silently kept; pedons
    in no test list are left out of the pooled metrics: an error and a warning, not silence."""
    path = tmp_path / "split.json"
    two = {"fold_0": {"train": [3, 4], "test": [1, 2]}, "fold_1": {"train": [1], "test": [2, 3]}}
    path.write_text(json.dumps(two))
    with pytest.raises(MisoBenchError, match=r"both fold_0 and fold_1 .*'2'"):
        FileSplit(path)
    gap = {"fold_0": {"train": [3, 4], "test": [1, 2]}, "fold_1": {"train": [1, 2], "test": [3]}}
    path.write_text(json.dumps(gap))
    ids = np.array([1, 2, 3, 4, 5])
    with pytest.warns(MisoBenchWarning, match="2 of 5 pedons are in no test list"):
        splits = list(FileSplit(path).split(np.zeros((5, 2)), groups=ids))
    assert [list(te) for _, te in splits] == [[0, 1], [2]]
    holdout = {"train": [1, 2, 3], "test": [4, 5]}  # one fold: the rest is its training set
    path.write_text(json.dumps(holdout))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MisoBenchWarning)
        assert len(list(FileSplit(path).split(np.zeros((5, 2)), groups=ids))) == 1


def test_knndm_matches_the_prediction_distances_better_than_random():
    X, y = clustered(n_clusters=30, per=30)
    rng = np.random.default_rng(5)
    domain = rng.uniform(0, 200_000, size=(3000, 2))  # maps must predict far from clusters
    knndm = KNNDMKFold(domain, n_splits=5, random_state=0)
    k_splits = list(knndm.split(X, y))
    check_partition(k_splits, len(X))
    r_splits = list(RandomKFold(5, 0).split(X, y))
    w_knndm = fold_diagnostics(X, y, k_splits, domain, ["a", "b", "c"]).w
    w_random = fold_diagnostics(X, y, r_splits, domain, ["a", "b", "c"]).w
    assert w_knndm < w_random
    assert knndm.w_ == pytest.approx(w_knndm, rel=1e-6)
    assert knndm.q_ is not None  # clustered data: a cluster-based candidate wins


def test_knndm_chooses_random_folds_when_pedons_cover_the_domain():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 10_000, size=(600, 2))
    domain = rng.uniform(0, 10_000, size=(2000, 2))
    knndm = KNNDMKFold(domain, n_splits=5, random_state=0)
    list(knndm.split(X, rng.integers(0, 2, len(X))))
    random_w = dict(knndm.candidates_)[None]
    assert knndm.w_ <= random_w


def test_autocorrelation_range_tracks_the_patch_size():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 60_000, size=(2500, 2))
    ranges = []
    for patch_m in (500, 4000):
        y = (block_ids(X[:, 0], X[:, 1], patch_m) * 7919 % 3).astype(int)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ranges.append(estimate_autocorrelation_range(X, y))
        # The 4 km patches reach the 10 km cap of the fit: that is said, not silent.
        assert bool(caught) == (patch_m == 4000)
    assert ranges[0] < ranges[1]
    assert 100 <= ranges[0] <= 2500 and 1500 <= ranges[1] <= 10_000


def test_autocorrelation_fallbacks_are_warnings():
    X = np.random.default_rng(0).uniform(0, 5000, size=(200, 2))
    with pytest.warns(MisoBenchWarning, match="cannot be estimated"):
        assert estimate_autocorrelation_range(X, np.zeros(200, dtype=int)) == 10_000


def test_inner_validation_split_stays_inside_the_training_fold():
    X, y = clustered()
    fit, val = inner_validation_split(X, y, block_size_m=2000, seed=0)
    assert not set(fit) & set(val)
    assert len(fit) + len(val) == len(X)
    assert 0.1 < len(val) / len(X) < 0.35
    blocks = block_ids(X[:, 0], X[:, 1], 2000)
    assert not set(blocks[fit]) & set(blocks[val])


@pytest.mark.parametrize("name", CV.list())
def test_every_registered_scheme_partitions_the_pedons(name, tmp_path):
    X, y = clustered()
    ids = np.arange(len(X))
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps({f"fold_{k}": {"train": [], "test": ids[k::4].tolist()} for k in range(4)})
    )
    regions = {"mlra": np.where(X[:, 1] < 100_000, "south", "north")}
    domain = np.random.default_rng(0).uniform(0, 200_000, (500, 2))
    ctx = SplitContext(X, y, ids, regions, domain, seed=0)
    params = {
        "n_splits": 4,
        "block_size_m": "auto",
        "eps_m": 1000,
        "region": "mlra",
        "base": "spatial",
        "buffer_m": 500,
        "path": str(path),
    }
    _, splits = build_splits(name, params, ctx)
    check_partition(splits, len(X))


def test_auto_blocks_are_the_same_on_every_machine(monkeypatch):
    """The semivariogram fit's last digits depend on the CPU's BLAS kernels (the default
    dataset's pf1m range: 300.49077 m with one kernel, 300.49014 m with another), and folds
    cut from blocks that differ in their sixth digit deal most pedons elsewhere: ``auto`` is
    rounded to whole metres, and the run's tag holds the size used."""
    import miso_bench.cv as cv

    rng = np.random.default_rng(0)
    X = rng.uniform(0, 20_000, size=(4000, 2))
    # Pedons between the k-th multiples of the two fitted sizes (in another block under each).
    X[:40, 0] = np.arange(10, 50) * 300.4905
    y = rng.integers(0, 2, len(X))
    ctx = SplitContext(X, y, np.arange(len(X)), {})
    folds = []
    for fitted in (300.49076869738917, 300.4901354866962):
        monkeypatch.setattr(cv, "estimate_autocorrelation_range", lambda *a, f=fitted, **k: f)
        splitter, splits = build_splits("spatial", {"n_splits": 5, "block_size_m": "auto"}, ctx)
        assert splitter.block_size_m == 300.0
        folds.append([test.tolist() for _, test in splits])
    assert folds[0] == folds[1]
    # ... where the unrounded sizes put pedons in other folds.
    sizes = (300.49076869738917, 300.4901354866962)
    raw = [SpatialBlockKFold(5, f, 0)._folds(X, y, None) for f in sizes]
    assert (raw[0] != raw[1]).any()


def test_shrunk_auto_blocks_are_reported_at_the_size_used(monkeypatch):
    import miso_bench.cv as cv

    X = np.random.default_rng(0).uniform(0, 2000, size=(400, 2))
    ctx = SplitContext(X, np.arange(400) % 2, np.arange(400), {})
    monkeypatch.setattr(cv, "estimate_autocorrelation_range", lambda *a, **k: 1902.0)
    with pytest.warns(MisoBenchWarning, match=r"range \(1902 m\).*shrunk to 475\.5 m"):
        splitter, _ = build_splits("spatial", {"n_splits": 5, "block_size_m": "auto"}, ctx)
    assert splitter.block_size_m == 475.5
