"""Classification metrics from labels and probabilities, on the task's full label set.

Every metric is computed over all classes of the task (``labels=range(K)``), so a fold or a
region that lacks a class is still comparable: a class absent from the truth of the evaluated
set is left out of the macro averages (the reference counted it as 0), and predictions of it
count as false positives of that class. Binary tasks report the positive class's F1,
precision and recall, and ROC-AUC / PR-AUC from probabilities (never from hard labels).

Confusion-matrix metrics are computed with numpy from the matrix itself, which makes the
blocked bootstrap (thousands of resampled matrices) cheap; they equal scikit-learn's. A
bootstrap fixes the class set of the macro averages to the classes of the evaluated set
(``macro_over``): a replicate that misses one of them has undefined (NaN) macro metrics and
is left out of the CI, as a replicate without positives is for ``f1_pos``. Averaging each
replicate over its own classes instead drops exactly the rare, hard classes that blocks
concentrate, and pushes the interval above the estimate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from .tasks import Task

__all__ = [
    "CM_METRICS",
    "METRIC_DESCRIPTIONS",
    "classification_metrics",
    "confusion",
    "expected_calibration_error",
    "metrics_from_confusion",
]

METRIC_DESCRIPTIONS: dict[str, str] = {
    "accuracy": "share of correct predictions",
    "balanced_accuracy": "mean recall over classes present in the truth",
    "macro_precision": "mean precision over classes present in the truth",
    "macro_recall": "mean recall over classes present in the truth",
    "macro_f1": "mean F1 over classes present in the truth (primary for tax_order)",
    "weighted_precision": "precision averaged with class support as weight",
    "weighted_recall": "recall averaged with class support as weight",
    "weighted_f1": "F1 averaged with class support as weight",
    "kappa": "Cohen's kappa",
    "f1_pos": "F1 of the positive class (binary; primary for pf1m; undefined without positives)",
    "precision_pos": "precision of the positive class (binary; undefined without predictions)",
    "recall_pos": "recall of the positive class (binary; undefined without positives)",
    "roc_auc": "area under the ROC curve from probabilities (binary)",
    "pr_auc": "average precision from probabilities (binary)",
    "log_loss": "cross-entropy of the predicted probabilities",
    "brier": "Brier score (mean squared error of the probability vector)",
    "ece": "expected calibration error of the top-class probability (15 bins)",
    "n": "number of evaluated pedons",
    "precision/<class>, recall/<class>, f1/<class>, support/<class>": "per-class values",
}

#: Metrics computed from the confusion matrix alone (these get bootstrap CIs).
CM_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_f1",
    "kappa",
)
_BINARY_CM = ("f1_pos", "precision_pos", "recall_pos")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix ``C[i, j]`` = count of truth ``i`` predicted as ``j``."""
    idx = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)


def metrics_from_confusion(
    cm: np.ndarray, positive: int | None = None, macro_over: np.ndarray | None = None
) -> dict[str, Any]:
    """Confusion-matrix metrics; works on one matrix ``(K, K)`` or a stack ``(B, K, K)``.

    Args:
        cm: confusion counts, rows the truth.
        positive: the positive class of a binary task.
        macro_over: ``(K,)`` booleans, the classes the macro averages run over (bootstrap
            replicates: the classes of the original set); a matrix without support for one
            of them gets NaN macro metrics. Default: the classes with support in each matrix.

    Returns arrays of shape ``()`` or ``(B,)`` per metric, plus per-class arrays
    (``precision_c``, ``recall_c``, ``f1_c``, ``support_c``) with a trailing class axis.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    n = support.sum(axis=-1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = support > 0
    if macro_over is None:
        members = present
        complete = np.ones(present.shape[:-1], dtype=bool)
    else:
        members = np.broadcast_to(np.asarray(macro_over, dtype=bool), present.shape)
        complete = (present | ~members).all(axis=-1)
    n_members = np.maximum(members.sum(axis=-1), 1)

    def macro(v: np.ndarray) -> np.ndarray:
        return np.where(complete, (v * members).sum(axis=-1) / n_members, np.nan)

    weighted = lambda v: _safe_div((v * support).sum(axis=-1), n)  # noqa: E731
    accuracy = _safe_div(tp.sum(axis=-1), n)
    expected = _safe_div((support * predicted).sum(axis=-1), n**2)
    # Undefined (NaN, as scikit-learn's) where chance agreement is total: truth and
    # predictions all one class. 0 there counted in bootstrap CIs and paired differences.
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(
            (n > 0) & (expected < 1),
            (accuracy - expected) / np.where(expected < 1, 1 - expected, 1),
            np.nan,
        )
    out: dict[str, Any] = {
        "accuracy": accuracy,
        "balanced_accuracy": macro(recall),
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "macro_f1": macro(f1),
        "weighted_precision": weighted(precision),
        "weighted_recall": weighted(recall),
        "weighted_f1": weighted(f1),
        "kappa": kappa,
        "precision_c": precision,
        "recall_c": recall,
        "f1_c": f1,
        "support_c": support,
    }
    if positive is not None:
        # Undefined (NaN), not 0, where the evaluated set has no positive pedon (recall, F1)
        # or the model predicts none (precision): a region without permafrost has no
        # permafrost recall.
        has_pos = support[..., positive] > 0
        out["f1_pos"] = np.where(has_pos, f1[..., positive], np.nan)
        out["recall_pos"] = np.where(has_pos, recall[..., positive], np.nan)
        out["precision_pos"] = np.where(
            predicted[..., positive] > 0, precision[..., positive], np.nan
        )
    return out


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: |accuracy - confidence| averaged over equal-width confidence bins."""
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, task: Task, threshold: float = 0.5
) -> dict[str, float]:
    """All metrics of a task for one evaluated set.

    Args:
        y_true: class indices, shape ``(n,)``.
        proba: class probabilities, shape ``(n, K)``.
        task: the task (its classes define K and the positive class).
        threshold: decision threshold on the positive probability (binary tasks).

    Returns:
        Flat ``{metric: value}`` with stable keys (see :data:`METRIC_DESCRIPTIONS`).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    k = task.n_classes
    if proba.shape != (len(y_true), k):
        raise ValueError(f"proba must have shape ({len(y_true)}, {k}), got {proba.shape}")
    pos = task.positive_index if task.kind == "binary" else None
    if pos is not None:
        y_pred = np.where(proba[:, pos] >= threshold, pos, 1 - pos)
    else:
        y_pred = proba.argmax(axis=1)
    cm = confusion(y_true, y_pred, k)
    raw = metrics_from_confusion(cm, positive=pos)
    out: dict[str, float] = {"n": float(len(y_true))}
    for key, value in raw.items():
        if key.endswith("_c"):
            stem = key[:-2]
            for name, v in zip(task.class_names, value, strict=True):
                out[f"{stem}/{name}"] = float(v)
        else:
            out[key] = float(value)
    clipped = np.clip(proba, 1e-15, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    onehot = np.eye(k)[y_true]
    out["log_loss"] = (
        float(log_loss(y_true, clipped, labels=list(range(k)))) if len(y_true) else float("nan")
    )
    out["brier"] = (
        float(np.mean(np.sum((proba - onehot) ** 2, axis=1))) if len(y_true) else float("nan")
    )
    out["ece"] = expected_calibration_error(y_true, proba) if len(y_true) else float("nan")
    if pos is not None:
        positive = (y_true == pos).astype(int)
        if 0 < positive.sum() < len(positive):
            out["roc_auc"] = float(roc_auc_score(positive, proba[:, pos]))
            out["pr_auc"] = float(average_precision_score(positive, proba[:, pos]))
        else:  # undefined with a single class present
            out["roc_auc"] = float("nan")
            out["pr_auc"] = float("nan")
    return out
