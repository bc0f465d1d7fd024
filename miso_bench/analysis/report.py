"""A report of an MLflow store (``miso-bench report``): a self-contained HTML page and a
Markdown summary.

For every experiment (dataset / task): a leaderboard of its finished runs (the primary
metric with its CI, the true map accuracy where a truth sample exists, the worst region), a
heat map of the primary metric by region, per-class recall, the CV estimate against the true
map accuracy, the fold diagnostics, and the sweeps (trial counts, optimisation history); and
the tables of ablation suites. Figures are PNG files beside the Markdown, embedded in the
HTML, and logged to MLflow with both documents in a ``report`` run.
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import MisoBenchError
from ..registry import slugify
from ..tracking import Tracker, open_client

__all__ = ["ReportResult", "build_report"]


@dataclass
class ReportResult:
    """Where the report went.

    Attributes:
        html: the HTML file; markdown: the Markdown file; figures: the PNG files.
        run_id: the MLflow run holding them (``reports`` experiment).
    """

    html: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    run_id: str = ""


def _primary(metrics: dict[str, float]) -> str:
    return "f1_pos" if "test/overall/f1_pos" in metrics else "macro_f1"


def _label(run: Any) -> str:
    t = run.data.tags
    label = t.get("variant") or t.get("model", "?")
    seed = t.get("seed", "0")
    return f"{label} · {t.get('cv', '?')}" + (f" · seed {seed}" if seed != "0" else "")


def _latest(runs: list[Any]) -> list[Any]:
    """The newest finished run of each (label, cv, seed, level)."""
    seen: dict[tuple, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
        t = run.data.tags
        key = (t.get("variant") or t.get("model"), t.get("cv"), t.get("seed"), t.get("run_level"))
        seen.setdefault(key, run)
    return list(seen.values())


def _fmt(v: float | None, digits: int = 3) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _ci(m: dict[str, float], key: str) -> str:
    if f"{key}_ci_low" not in m:
        return _fmt(m.get(key))
    return f"{_fmt(m.get(key))} [{_fmt(m[f'{key}_ci_low'])}, {_fmt(m[f'{key}_ci_high'])}]"


@dataclass
class _Section:
    title: str
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _heatmap(frame: pd.DataFrame, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    values = frame.to_numpy(dtype=float)
    fig, ax = plt.subplots(
        figsize=(1.2 * frame.shape[1] + 3.5, 0.38 * frame.shape[0] + 1.8), layout="constrained"
    )
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(frame.shape[1]), frame.columns, rotation=30, ha="right")
    ax.set_yticks(range(frame.shape[0]), frame.index)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(
                    j,
                    i,
                    f"{values[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if values[i, j] < 0.6 else "black",
                )
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cv_vs_truth(points: list[tuple[str, float, float]], metric: str, path: Path) -> Path:
    """CV estimate against truth, one numbered point per run (the key beside the plot:
    labels written at the points overlap where runs agree), axes zoomed on the points."""
    import matplotlib.pyplot as plt

    fig, (ax, key) = plt.subplots(
        1, 2, figsize=(9.5, 5), layout="constrained", gridspec_kw={"width_ratios": [5, 3]}
    )
    # Zoom on where most runs are: a run far from the others (a null model) is drawn at the
    # edge, marked off scale, rather than squeezing the rest into a corner.
    values = np.array([v for _, cv, truth in points for v in (cv, truth)])
    centre = float(np.median(values))
    spread = max(0.15, 4.0 * float(np.median(np.abs(values - centre))))
    kept = values[np.abs(values - centre) <= spread]
    low, high = float(kept.min()), float(kept.max())
    pad = max(0.02, 0.08 * (high - low))
    low, high = max(0.0, low - pad), min(1.0, high + pad)
    ax.plot([low, high], [low, high], color="grey", lw=1, ls="--", label="CV = truth")
    lines = []
    for i, (label, cv, truth) in enumerate(points, start=1):
        x, y = min(max(cv, low), high), min(max(truth, low), high)
        off = (x, y) != (cv, truth)
        ax.scatter(x, y, s=40, marker="x" if off else "o")
        ax.annotate(str(i), (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
        note = "  off scale" if off else ""
        lines.append(f"{i:>2}  {label}  (CV {cv:.3f}, truth {truth:.3f}){note}")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal")
    ax.set_xlabel(f"cross-validation estimate ({metric})")
    ax.set_ylabel(f"true map accuracy ({metric})")
    ax.set_title("CV estimate against the truth sample")
    ax.legend(loc="lower right")
    key.axis("off")
    key.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7.5)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _experiment_section(client: Any, experiment: Any, out: Path) -> _Section | None:
    runs = []
    for level in ("parent", "sweep"):
        runs += client.search_runs(
            [experiment.experiment_id],
            f"attributes.status = 'FINISHED' and tags.run_level = '{level}'",
            max_results=500,
        )
    runs = _latest(runs)
    if not runs:
        return None
    section = _Section(experiment.name)
    slug = slugify(experiment.name)
    rows, heat, recall, points = [], {}, {}, []
    metric = _primary(runs[0].data.metrics)
    for run in sorted(runs, key=lambda r: -r.data.metrics.get(f"test/overall/{metric}", -1)):
        m, t = run.data.metrics, run.data.tags
        label = _label(run) + (" (tuned)" if t.get("run_level") == "sweep" else "")
        if "warning.tuned_on_these_pedons" in t:  # its CV figures are optimistic
            label += " (tuned on its own pedons: optimistic)"
        worst = {k.split("/")[1]: v for k, v in m.items() if k.endswith(f"/worst/{metric}")}
        rows.append(
            {
                "run": label,
                metric: _ci(m, f"test/overall/{metric}"),
                "truth": _fmt(m.get(f"truth/overall/{metric}")),
                "accuracy": _fmt(m.get("test/overall/accuracy")),
                "kappa": _fmt(m.get("test/overall/kappa")),
                **{f"worst {layer}": _fmt(v) for layer, v in sorted(worst.items())},
                "pedons": _fmt(m.get("test/overall/n"), 0),
                "W (m)": _fmt(m.get("cv/w_statistic_m"), 0),
                "block (m)": t.get("cv_block_size_m", ""),
                "MLflow run": run.info.run_id[:8],
            }
        )
        regions = {}
        for key, value in m.items():
            parts = key.split("/")
            if (
                len(parts) == 4
                and parts[0] == "test"
                and parts[3] == metric
                and parts[2] != "worst"
                and parts[1] != "overall"
            ):
                regions[f"{parts[1]}: {parts[2].replace('_', ' ')}"] = value
        heat[label] = regions
        recall[label] = {
            k.split("/", 3)[3]: v for k, v in m.items() if k.startswith("test/overall/recall/")
        }
        if f"truth/overall/{metric}" in m:
            points.append((label, m[f"test/overall/{metric}"], m[f"truth/overall/{metric}"]))
    section.tables.append(("Leaderboard", pd.DataFrame(rows)))
    heat_frame = pd.DataFrame(heat).sort_index()
    if not heat_frame.empty:
        fig = _heatmap(heat_frame, f"{metric} by region", out / f"{slug}_regions.png")
        section.figures.append((f"{metric} by region (pooled out-of-fold)", fig))
    recall_frame = pd.DataFrame(recall).T
    if not recall_frame.empty:
        section.tables.append(
            ("Recall per class", recall_frame.map(lambda v: _fmt(v)).reset_index(names="run"))
        )
    if points:
        fig = _cv_vs_truth(points, metric, out / f"{slug}_cv_vs_truth.png")
        section.figures.append(("CV estimate against the true map accuracy", fig))
        section.notes.append(
            "Points above the dashed line: the CV estimate is pessimistic; below: optimistic."
        )
    sweeps = [r for r in runs if r.data.tags.get("run_level") == "sweep"]
    if sweeps:
        sweep_rows = []
        for run in sweeps:
            m, t = run.data.metrics, run.data.tags
            sweep_rows.append(
                {
                    "sweep": t.get("optuna_study", ""),
                    "model": t.get("model", ""),
                    f"outer-CV {metric}": _ci(m, f"test/overall/{metric}"),
                    "best inner": _fmt(m.get("sweep/best_inner_value")),
                    "complete": _fmt(m.get("sweep/trials_complete"), 0),
                    "pruned": _fmt(m.get("sweep/trials_pruned"), 0),
                    "failed": _fmt(m.get("sweep/trials_failed"), 0),
                }
            )
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    src = client.download_artifacts(
                        run.info.run_id, "figures/optimization_history.png", tmp
                    )
                except Exception:  # a sweep logged before its final study finished
                    continue
                target = out / f"{slug}_{slugify(t.get('optuna_study', 'sweep'))}_history.png"
                target.write_bytes(Path(src).read_bytes())
                section.figures.append((f"Sweep {t.get('optuna_study', '')}: history", target))
        section.tables.append(("Sweeps", pd.DataFrame(sweep_rows)))
    return section


def _ablation_sections(client: Any) -> list[_Section]:
    sections = []
    for experiment in client.search_experiments():
        runs = client.search_runs(
            [experiment.experiment_id],
            "attributes.status = 'FINISHED' and tags.run_level = 'ablation'",
        )
        newest: dict[tuple, Any] = {}  # per suite and the tasks and schemes it ran
        for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
            t = run.data.tags
            newest.setdefault((t.get("ablation"), t.get("tasks"), t.get("cvs")), run)
        for run in newest.values():
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    path = client.download_artifacts(run.info.run_id, "ablation_table.csv", tmp)
                except Exception:  # an ablation run without its table
                    continue
                table = pd.read_csv(path)
            section = _Section(f"Ablation suite {run.data.tags.get('ablation', '')}")
            for (task, cv), sub in table.groupby(["task", "cv"], sort=False):
                overall = sub[sub["layer"] == "overall"].sort_values("value", ascending=False)
                metric = overall["metric"].iloc[0]
                frame = pd.DataFrame(
                    {
                        "variant": overall["variant"],
                        metric: [
                            f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
                            for v, lo, hi in zip(
                                overall["value"], overall["low"], overall["high"], strict=True
                            )
                        ],
                        "difference vs reference": [
                            "" if pd.isna(d) else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                            for d, lo, hi in zip(
                                overall.get("diff", pd.Series(np.nan, overall.index)),
                                overall.get("diff_low", pd.Series(np.nan, overall.index)),
                                overall.get("diff_high", pd.Series(np.nan, overall.index)),
                                strict=True,
                            )
                        ],
                    }
                )
                title = f"{task}, {cv} CV"
                seeds = int(sub["seeds"].max())
                fold_sets = int(sub["fold_sets"].max()) if "fold_sets" in sub else seeds
                if seeds > 1:
                    title += f" ({seeds} seeds"
                    if fold_sets < seeds:  # some seeds cut the same folds: say so
                        title += f" on {fold_sets} different fold set{'s' * (fold_sets > 1)}"
                    title += ")"
                cpus = str(sub["cpus"].iloc[0]) if "cpus" in sub else ""
                if "; " in cpus:  # chip models' numbers differ between CPUs: say so
                    title += f" — runs from {cpus.count('; ') + 1} different CPUs: {cpus}"
                section.tables.append((title, frame))
            sections.append(section)
    return sections


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;color:#222;padding:0 1em}
h1{border-bottom:2px solid #1b9e77}h2{margin-top:2em;color:#1b6e57}
table{border-collapse:collapse;margin:0.6em 0 1.4em;font-size:0.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#eef5f2}
tr:nth-child(even){background:#fafafa}figure{margin:1em 0}img{max-width:100%}
figcaption{font-size:0.9em;color:#555}.note{color:#555;font-size:0.9em}
"""


def _html(sections: list[_Section], title: str, generated: str) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(generated)}</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for caption, table in section.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>")
            parts.append(table.to_html(index=False, escape=True, border=0))
        for caption, path in section.figures:
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        for note in section.notes:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _markdown(sections: list[_Section], title: str, generated: str) -> str:
    lines = [f"# {title}", "", generated]
    for section in sections:
        lines += ["", f"## {section.title}"]
        for caption, table in section.tables:
            buf = io.StringIO()
            buf.write(f"| {' | '.join(map(str, table.columns))} |\n")
            buf.write(f"|{'---|' * len(table.columns)}\n")
            for row in table.itertuples(index=False):
                buf.write(f"| {' | '.join(str(v) for v in row)} |\n")
            lines += ["", f"### {caption}", "", buf.getvalue().rstrip()]
        for caption, path in section.figures:
            lines += ["", f"![{caption}]({path.name})"]
        for note in section.notes:
            lines += ["", f"*{note}*"]
    return "\n".join(lines) + "\n"


def build_report(
    out: str | Path,
    experiments: list[str] | None = None,
    tracking_uri: str | None = None,
    log: bool = True,
) -> ReportResult:
    """Write ``report.html`` and ``report.md`` (with figures) into ``out``.

    Args:
        out: output folder.
        experiments: experiment names (default: every experiment with finished runs).
        tracking_uri: the MLflow store.
        log: also log the report to MLflow (experiment ``reports``).

    Raises:
        MisoBenchError: unknown experiment, or nothing to report.
    """
    import time

    client = open_client(tracking_uri)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = []
    if experiments:
        for name in experiments:
            found = client.get_experiment_by_name(name)
            if found is None:
                names = sorted(e.name for e in client.search_experiments())
                raise MisoBenchError(
                    f"no experiment {name!r} (experiments: {', '.join(names) or 'none'})"
                )
            chosen.append(found)
    else:
        chosen = [
            e
            for e in client.search_experiments()
            if e.name not in ("Default", "reports") and not e.name.endswith("/ablations")
        ]
    sections = [
        s
        for e in sorted(chosen, key=lambda e: e.name)
        if (s := _experiment_section(client, e, folder))
    ]
    sections += _ablation_sections(client) if not experiments else []
    if not sections:
        raise MisoBenchError(
            "nothing to report: no finished run in the store (fix: `miso-bench run` first, "
            "or pass --tracking-uri)"
        )
    title = "miso-bench report"
    generated = f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {client.tracking_uri}."
    html_path = folder / "report.html"
    md_path = folder / "report.md"
    html_path.write_text(_html(sections, title, generated))
    md_path.write_text(_markdown(sections, title, generated))
    figures = [p for s in sections for _, p in s.figures]
    result = ReportResult(html_path, md_path, figures)
    if log:
        tracker = Tracker("reports", tracking_uri)
        with tracker.run("report", tags={"run_level": "report"}) as run_id:
            tracker.log_artifact(run_id, html_path)
            tracker.log_artifact(run_id, md_path)
            for fig in figures:
                tracker.log_artifact(run_id, fig, "figures")
        result.run_id = run_id
    return result
