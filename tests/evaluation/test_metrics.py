import numpy as np
import pytest
from sklearn import metrics as skm

from miso_bench.evaluation.metrics import classification_metrics, expected_calibration_error
from miso_bench.evaluation.regional import bootstrap_ci, evaluate_by_region
from miso_bench.evaluation.tasks import Task

MULTI = Task("t", "t", "multiclass", "ce", "macro_f1", classes=("a", "b", "c", "d"))
BINARY = Task("p", "p", "binary", "bce", "f1_pos", positive_class=1, classes=(0, 1))


def random_case(k: int, n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, proba


def test_multiclass_metrics_equal_scikit_learn():
    y, proba = random_case(4)
    pred = proba.argmax(1)
    m = classification_metrics(y, proba, MULTI)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    per_class = skm.recall_score(y, pred, average=None)
    assert [m[f"recall/{c}"] for c in "abcd"] == pytest.approx(per_class)
    assert m["support/b"] == (y == 1).sum()
    onehot = np.eye(4)[y]
    assert m["brier"] == pytest.approx(((proba - onehot) ** 2).sum(1).mean())


def test_absent_class_is_left_out_of_macro_averages():
    y, proba = random_case(4)
    keep = y != 3  # class d absent from the truth, but may still be predicted
    m = classification_metrics(y[keep], proba[keep], MULTI)
    pred = proba[keep].argmax(1)
    expected = skm.f1_score(y[keep], pred, labels=[0, 1, 2], average="macro")
    assert m["macro_f1"] == pytest.approx(expected)
    assert m["support/d"] == 0


def test_binary_metrics_use_probabilities():
    y, proba = random_case(2)
    m = classification_metrics(y, proba, BINARY)
    pred = (proba[:, 1] >= 0.5).astype(int)
    assert m["f1_pos"] == pytest.approx(skm.f1_score(y, pred))
    assert m["recall_pos"] == pytest.approx(skm.recall_score(y, pred))
    assert m["precision_pos"] == pytest.approx(skm.precision_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, proba[:, 1]))
    # AUC from hard labels (the reference's defect) would differ:
    assert m["roc_auc"] != pytest.approx(skm.roc_auc_score(y, pred))


def test_ece_on_a_hand_made_case():
    proba = np.array([[0.9, 0.1]] * 10)
    y = np.array([0] * 8 + [1] * 2)  # confidence 0.9, accuracy 0.8
    assert expected_calibration_error(y, proba) == pytest.approx(0.1)


def test_region_metrics_and_blocked_bootstrap_on_a_hand_made_case():
    rng = np.random.default_rng(0)
    n = 400
    x = np.concatenate([rng.uniform(0, 10_000, n // 2), rng.uniform(50_000, 60_000, n // 2)])
    yy = rng.uniform(0, 10_000, n)
    region = np.array(["good"] * (n // 2) + ["bad"] * (n // 2), dtype=object)
    y = rng.integers(0, 2, n)
    proba = np.eye(2)[y].astype(float)
    flip = (region == "bad") & (np.arange(n) % 2 == 0)  # half of "bad" is wrong
    proba[flip] = proba[flip][:, ::-1]
    res = evaluate_by_region(
        y, proba, BINARY, x, yy, {"zone": region}, block_size_m=1000, n_boot=300, seed=0
    )
    t = res.table.set_index(["layer", "region", "metric"])
    assert t.loc[("zone", "good", "accuracy"), "value"] == 1.0
    assert t.loc[("zone", "good", "accuracy"), "ci_low"] == 1.0
    bad = t.loc[("zone", "bad", "accuracy")]
    assert bad["value"] == pytest.approx(0.5, abs=0.01)
    assert bad["ci_low"] < 0.5 < bad["ci_high"]
    assert t.loc[("overall", "all", "accuracy"), "value"] == pytest.approx(0.75, abs=0.01)
    assert res.worst["zone"][0] == "bad"
    flat = res.flat("test")
    assert "test/zone/bad/f1_pos_ci_low" in flat and "test/overall/roc_auc" in flat
    assert "test/zone/worst/f1_pos" in flat


def test_bootstrap_matches_direct_resampling_in_distribution():
    y, proba = random_case(3, n=300, seed=3)
    pred = proba.argmax(1)
    blocks = np.arange(300) // 10
    ci = bootstrap_ci(y, pred, blocks, 3, None, n_boot=2000, rng=np.random.default_rng(0))
    # brute force: resample blocks and recompute with scikit-learn
    rng = np.random.default_rng(1)
    vals = []
    for _ in range(500):
        pick = rng.integers(0, 30, 30)
        idx = np.concatenate([np.flatnonzero(blocks == b) for b in pick])
        vals.append(skm.accuracy_score(y[idx], pred[idx]))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    assert ci["accuracy"][0] == pytest.approx(lo, abs=0.02)
    assert ci["accuracy"][1] == pytest.approx(hi, abs=0.02)


def test_positive_class_metrics_are_undefined_without_positives():
    y = np.zeros(50, dtype=int)
    proba = np.tile([0.3, 0.7], (50, 1))  # predicts permafrost where there is none
    m = classification_metrics(y, proba, BINARY)
    assert np.isnan(m["f1_pos"]) and np.isnan(m["recall_pos"])
    assert m["precision_pos"] == 0.0
    m = classification_metrics(y, np.tile([0.9, 0.1], (50, 1)), BINARY)
    assert np.isnan(m["precision_pos"])


def rare_class_case():
    """Classes 0 and 1 always right; class 2, in 2 of 20 blocks, always called 0."""
    blocks = np.repeat(np.arange(20), 20)
    y = np.repeat(np.arange(20) % 2, 20)
    y[blocks == 3] = 2
    y[blocks == 11] = 2
    pred = np.where(y == 2, 0, y)
    return y, pred, blocks


def test_bootstrap_keeps_the_macro_class_set_of_the_evaluated_pedons():
    # A replicate without the rare blocks would average over classes 0 and 1 only (macro-F1
    # 1.0) and push the interval far above the estimate; such replicates are left out.
    y, pred, blocks = rare_class_case()
    point = skm.f1_score(y, pred, average="macro")
    assert point == pytest.approx(0.6, abs=0.07)
    ci = bootstrap_ci(y, pred, blocks, 3, None, n_boot=2000, rng=np.random.default_rng(0))
    low, high = ci["macro_f1"]
    assert low <= point <= high
    assert high < 0.7  # before the fix: 1.0
    # Metrics that are not macro averages use every replicate, those without the rare
    # blocks (all right) included.
    assert ci["accuracy"][1] == 1.0


def test_paired_and_seed_statistics_keep_the_class_set_too():
    from miso_bench.evaluation.paired import paired_difference, seed_statistic

    y, pred, blocks = rare_class_case()
    stat = seed_statistic(y, pred[None], blocks, 3, "macro_f1", n_boot=2000)
    assert stat.low <= stat.value <= stat.high < 0.7
    better = y.copy()  # B gets the rare class right: A - B is negative in every replicate
    diff = paired_difference(y, pred[None], better[None], blocks, 3, "macro_f1", n_boot=2000)
    assert diff.high < 0 and diff.share_le0 == 1.0


def test_kappa_is_undefined_where_every_label_and_prediction_is_one_class():
    """Kappa read 0 there (scikit-learn: NaN), so a bootstrap sample that missed the rare
    class's blocks scored 0 and a perfect classifier got the CI [0, 1]."""
    y = np.zeros(50, int)
    proba = np.tile([0.9, 0.1], (50, 1))
    with pytest.warns(UserWarning):  # scikit-learn: "undefined", NaN
        expected = skm.cohen_kappa_score(y, proba.argmax(1))
    assert np.isnan(expected) and np.isnan(classification_metrics(y, proba, BINARY)["kappa"])
    blocks = np.repeat(np.arange(20), 20)
    y = np.zeros(400, int)
    y[(blocks == 3) | (blocks == 11)] = 1
    ci = bootstrap_ci(y, y.copy(), blocks, 2, 1, n_boot=500, rng=np.random.default_rng(0))
    assert ci["kappa"] == (1.0, 1.0)
