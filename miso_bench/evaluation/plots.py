"""Figures of a run: confusion matrix, metrics by region with CIs, folds, ECDFs, CV vs truth."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = [
    "confusion_figure",
    "cv_vs_truth_figure",
    "ecdf_figure",
    "fold_map_figure",
    "region_bars_figure",
]


def confusion_figure(cm: np.ndarray, class_names: list[str], title: str) -> Any:
    """Row-normalised confusion matrix with counts."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * k, 1.0 + 0.7 * k))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{cm[i, j]}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("observed")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def region_bars_figure(table: pd.DataFrame, metric: str, layer: str, title: str) -> Any:
    """Horizontal bars of ``metric`` per region of ``layer``, with CIs and the overall line."""
    sub = table[(table["layer"] == layer) & (table["metric"] == metric)].sort_values("value")
    overall = table[(table["layer"] == "overall") & (table["metric"] == metric)]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.35 * max(len(sub), 1)))
    ys = np.arange(len(sub))
    err = np.vstack([sub["value"] - sub["ci_low"], sub["ci_high"] - sub["value"]])
    err = np.where(np.isfinite(err), np.maximum(err, 0), 0)
    ax.barh(ys, sub["value"], xerr=err, color="tab:blue", alpha=0.8, capsize=3)
    ax.set_yticks(ys, [f"{r} (n={n})" for r, n in zip(sub["region"], sub["n"], strict=True)])
    if len(overall):
        ax.axvline(float(overall["value"].iloc[0]), color="k", ls="--", lw=1, label="overall")
        ax.legend(loc="lower right")
    ax.set_xlabel(f"{metric} (95 % blocked-bootstrap CI)")
    ax.set_xlim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def fold_map_figure(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, title: str, crs: str = ""
) -> Any:
    """Pedons coloured by test fold; ``x``/``y`` in metres of the metric CRS ``crs``."""
    fig, ax = plt.subplots(figsize=(7, 6))
    sc = ax.scatter(
        np.asarray(x) / 1000,
        np.asarray(y) / 1000,
        c=folds,
        cmap="tab10",
        s=4,
        vmin=0,
        vmax=max(9, int(np.max(folds))),
    )
    name = "local equal-area" if crs.startswith("+proj") else crs
    ax.set_xlabel(f"x (km{', ' + name if name else ''})")
    ax.set_ylabel("y (km)")
    ax.set_aspect("equal")
    ax.set_title(title)
    fig.colorbar(sc, ax=ax, label="test fold")
    fig.tight_layout()
    return fig


def ecdf_figure(gij: np.ndarray, gj_star: np.ndarray, gj: np.ndarray, w: float, title: str) -> Any:
    """Nearest-neighbour distance ECDFs: prediction->train, CV test->train, pedon->pedon."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for values, label, style in (
        (gij, "prediction → train (G_ij)", "-"),
        (gj_star, "CV test → train (G_j*)", "--"),
        (gj, "pedon → nearest pedon (G_j)", ":"),
    ):
        v = np.sort(np.asarray(values)[np.isfinite(values)])
        if v.size:
            ax.step(
                np.maximum(v, 1.0),
                np.arange(1, v.size + 1) / v.size,
                style,
                label=label,
                where="post",
            )
    ax.set_xscale("log")
    ax.set_xlabel("distance (m)")
    ax.set_ylabel("ECDF")
    ax.set_title(f"{title} — W = {w:,.0f} m")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def cv_vs_truth_figure(
    cv: dict[str, float], truth: dict[str, float], metric: str, title: str
) -> Any:
    """Side-by-side bars: the CV estimate and the true map accuracy, overall and per region."""
    keys = [k for k in cv if k in truth]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(keys) + 2), 4))
    xs = np.arange(len(keys))
    ax.bar(xs - 0.2, [cv[k] for k in keys], 0.4, label="CV estimate")
    ax.bar(xs + 0.2, [truth[k] for k in keys], 0.4, label="true map (truth sample)")
    ax.set_xticks(xs, keys, rotation=45, ha="right")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig
