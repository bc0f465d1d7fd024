"""Ablation suites, paired comparisons and reports: known answers, resuming, refusals."""

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from miso_bench.ablation import (
    SuiteResult,
    aggregate_suite,
    format_regions,
    format_suite,
    load_suite,
    run_suite,
)
from miso_bench.analysis import build_report, compare_runs
from miso_bench.errors import MisoBenchError
from miso_bench.evaluation.paired import aggregate, paired_difference, seed_statistic

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "benchmarks" / "ablations" / "smoke.yaml"


# --- the statistics, on hand-made cases with known answers -----------------------------------
def test_paired_difference_of_a_perfect_and_a_constant_model():
    y = np.tile([0, 1], 100)
    blocks = np.repeat(np.arange(20), 10)
    perfect, zeros = y.copy(), np.zeros_like(y)
    d = paired_difference(y, perfect, zeros, blocks, 2, "accuracy", n_boot=500)
    assert d.value == pytest.approx(0.5)
    assert d.low <= 0.5 <= d.high and d.share_le0 == 0.0
    same = paired_difference(y, zeros, zeros, blocks, 2, "accuracy", n_boot=200)
    assert same.value == 0 and same.low == 0 and same.high == 0 and same.share_le0 == 1.0


def test_seeds_are_aggregated_by_their_interquartile_mean_from_five():
    y = np.zeros(10, dtype=int)
    # Five seeds that get 0, 5, 6, 7 and 10 of ten pedons right: accuracies 0 ... 1.
    preds = np.ones((5, 10), dtype=int)
    for s, right in enumerate([0, 5, 6, 7, 10]):
        preds[s, :right] = 0
    stat = seed_statistic(y, preds, np.arange(10), 2, "accuracy", n_boot=0)
    assert stat.value == pytest.approx(0.6) and stat.seeds == 5  # mean of 0.5, 0.6, 0.7
    assert stat.per_seed == pytest.approx((0.0, 0.5, 0.6, 0.7, 1.0))  # each seed's value
    assert aggregate(np.array([0.2, 0.4])) == pytest.approx(0.3)  # two seeds: the mean
    # A seed whose value is undefined (NaN) is left out, not trimmed as if it were the largest.
    six = np.array([0.1, 0.5, 0.6, 0.7, 1.0, np.nan])
    assert aggregate(six) == pytest.approx(0.6)  # the IQM of the five defined seeds
    assert aggregate(np.array([0.1, 0.5, 0.6, np.nan, np.nan])) == pytest.approx(0.4)
    columns = np.stack([six, six[::-1]], axis=1)  # seeds x replicates
    np.testing.assert_allclose(aggregate(columns), [0.6, 0.6])


# --- suites ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nvariant: [rf]\n", "did you mean `variants`"),
        ("name: x\nvariants: [rff]\n", "did you mean rf"),
        ("name: x\nreference: xgboost\nvariants: [rf, majority]\n", "not a variant"),
        ("name: x\nvariants: [rf, rf]\n", "repeat"),
        ("name: x\nseeds: [a]\nvariants: [rf]\n", "list of integers"),
        ("variants: [rf]\n", "`name` missing"),
    ],
)
def test_suite_mistakes_are_one_line_errors(tmp_path, text, message):
    f = tmp_path / "suite.yaml"
    f.write_text(text)
    with pytest.raises(MisoBenchError, match=message):
        load_suite(f)


@pytest.mark.slow
def test_smoke_suite_runs_resumes_and_aggregates(tiny_dir, home):
    suite = load_suite(SMOKE)
    uri = f"sqlite:///{home}/t.db"
    first = run_suite(suite, data=str(tiny_dir), tracking_uri=uri)
    assert len(first.runs) == 8 and first.skipped == 0
    again = run_suite(suite, data=str(tiny_dir), tracking_uri=uri)
    assert again.skipped == 8 and again.runs == first.runs  # nothing redone
    table = first.table
    overall = table[table["layer"] == "overall"].set_index("variant")
    assert set(overall.index) == {"rf_small", "rf_shallow", "majority", "coords_only"}
    assert np.isnan(overall.loc["rf_small"].get("diff", np.nan))  # the reference
    assert overall.loc["majority", "diff"] < 0 < overall.loc["rf_small", "value"]
    assert (overall["seeds"] == 2).all()
    assert (overall["fold_sets"] == 2).all()  # 500 m blocks: each seed cuts its own folds
    assert "different fold set" not in format_suite(first)
    each = [float(v) for v in overall.loc["rf_small", "per_seed"].split(";")]
    assert len(each) == 2 and overall.loc["rf_small", "value"] == pytest.approx(
        np.mean(each), abs=1e-6
    )
    assert "| each seed |" in format_suite(first)
    assert {"pf_zone", "mlra"} <= set(table["layer"])  # by region
    regions = format_regions(first)
    assert "tax_order — spatial CV — macro_f1 by pf_zone" in regions and "by mlra" in regions
    assert regions.count("| rf_small |") == 2  # a row per region layer
    client = MlflowClient(uri)
    artifacts = {a.path for a in client.list_artifacts(first.summary_run)}
    assert {"ablation_table.csv", "ablation_summary.md", "figures"} <= artifacts
    # compare: same folds work; another seed's folds are refused with one line
    by = {(v, s): r for (_, _, s, v), r in first.runs.items()}
    c = compare_runs([by[("rf_small", 0)], by[("majority", 0)]], tracking_uri=uri, n_boot=100)
    assert c.table.loc[c.table["layer"] == "overall", "diff"].iloc[0] < 0
    with pytest.raises(MisoBenchError, match="different folds"):
        compare_runs([by[("rf_small", 0)], by[("rf_small", 1)]], tracking_uri=uri)
    # Seeds that cut the same folds are named as such (here seed 1's runs are seed 0's).
    same = {(t, cv, s, v): first.runs[(t, cv, 0, v)] for (t, cv, s, v) in first.runs}
    twins = aggregate_suite(suite, same, ("tax_order",), uri, n_boot=50)
    assert (twins["fold_sets"] == 1).all() and (twins["seeds"] == 2).all()
    assert "the 2 seeds cut only 1 different fold set" in format_suite(
        SuiteResult(suite, same, table=twins)
    )
    # The CPUs the runs computed on: one here; a run tagged with another CPU is named.
    from miso_bench.provenance import hardware_tags

    here = hardware_tags()
    assert (overall["cpus"] == f"{here['cpu']} [{here['cpu_capability']}]").all()
    assert "different CPUs" not in format_suite(first)
    client.set_tag(by[("majority", 1)], "cpu", "Another CPU")
    client.set_tag(by[("majority", 1)], "cpu_capability", "AVX2")
    mixed = aggregate_suite(suite, first.runs, ("tax_order",), uri, n_boot=50)
    assert "Another CPU [AVX2]" in mixed["cpus"].iloc[0]
    text = format_suite(SuiteResult(suite, first.runs, table=mixed))
    assert "computed on 2 different CPUs (" in text and "Another CPU [AVX2]" in text
    # The same suite run later on another task: the report shows both, not only the newest.
    from miso_bench.tracking import Tracker

    summary = client.get_run(first.summary_run)
    tracker = Tracker(client.get_experiment(summary.info.experiment_id).name, uri)
    tags = {**summary.data.tags, "tasks": "other_task"}
    tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
    with tracker.run("ablation-smoke", tags=tags) as later:
        # (its runs from two CPUs: the report's table title says so)
        mixed.assign(task="other_task").to_csv(home / "ablation_table.csv", index=False)
        tracker.log_artifact(later, home / "ablation_table.csv")
    # the report: HTML that parses and holds its figures
    report = build_report(home / "report", tracking_uri=uri)
    parser = _Images()
    parser.feed(report.html.read_text())
    assert parser.images == len(report.figures) > 0
    assert all(f.is_file() for f in report.figures)
    markdown = report.markdown.read_text()
    assert "Ablation suite smoke" in markdown
    assert "other_task, spatial CV (2 seeds)" in markdown and "tax_order, spatial CV" in markdown
    assert "(2 seeds) — runs from 2 different CPUs" in markdown
    assert markdown.count("different CPUs") == markdown.count("other_task, spatial CV")


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img" and dict(attrs).get("src", "").startswith("data:image/png;base64,"):
            self.images += 1


def test_compare_refuses_other_tasks(tiny_dir, home):
    from miso_bench.config import resolve_config
    from miso_bench.runner import run_benchmark

    uri = f"sqlite:///{home}/t.db"
    runs = []
    for task in ("pf1m", "tax_order"):
        cfg = resolve_config(
            None,
            None,
            [
                f"data.path={tiny_dir}",
                "model.name=majority",
                f"task={task}",
                "refit=false",
                f"tracking.uri={uri}",
                "eval.n_boot=10",
            ],
        )
        runs.append(run_benchmark(cfg, announce=lambda m: None).run_id)
    with pytest.raises(MisoBenchError, match="different tasks"):
        compare_runs(runs, tracking_uri=uri)
    with pytest.raises(MisoBenchError, match="at least two"):
        compare_runs(runs[:1], tracking_uri=uri)


def test_compare_scores_exactly_what_the_run_reported(tiny_dir, home):
    """The stored predictions follow the run's own rule (binary: positive from p >= 0.5, a
    tie included; a forest of 10 trees ties often), so compare's reference value is the
    run's logged metric."""
    from miso_bench.config import resolve_config
    from miso_bench.runner import run_benchmark

    uri = f"sqlite:///{home}/t.db"
    results = []
    for model in ("rf", "majority"):
        cfg = resolve_config(
            None,
            None,
            [
                f"data.path={tiny_dir}",
                f"model.name={model}",
                "task=pf1m",
                "refit=false",
                f"tracking.uri={uri}",
                "eval.n_boot=10",
                *(["model.params.n_estimators=10"] if model == "rf" else []),
            ],
        )
        results.append(run_benchmark(cfg, announce=lambda m: None))
    c = compare_runs([r.run_id for r in results], tracking_uri=uri, n_boot=20)
    overall = c.table[c.table["layer"] == "overall"].iloc[0]
    assert overall["reference"] == pytest.approx(results[0].metrics["test/overall/f1_pos"])
    assert overall["value"] == pytest.approx(results[1].metrics["test/overall/f1_pos"])


def test_pedons_no_test_fold_held_are_not_compared(tmp_path):
    import pandas as pd

    from miso_bench.analysis.compare import load_run
    from miso_bench.tracking import Tracker

    tracker = Tracker("e", f"sqlite:///{tmp_path}/t.db")
    oof = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "x": [0.0, 1.0, 2.0],
            "y": [0.0, 0.0, 0.0],
            "observed": ["0", "1", "1"],
            "fold": [0, 1, -1],  # "c": in no test fold of a split file
            "p/0": [0.9, 0.2, np.nan],
            "p/1": [0.1, 0.8, np.nan],
            "predicted": ["0", "1", None],
        }
    )
    with tracker.run("r") as run:
        oof.to_parquet(tmp_path / "oof_predictions.parquet", index=False)
        tracker.log_artifact(run, tmp_path / "oof_predictions.parquet")
    assert load_run(run, tracker.uri).oof.index.tolist() == ["a", "b"]


def test_bootstrap_blocks_use_the_run_crs_and_never_assume_one():
    import pandas as pd

    from miso_bench.analysis.compare import RunRecord, bootstrap_blocks

    oof = pd.DataFrame({"x": [9.90, 9.91, 10.5], "y": [51.5, 51.5, 51.5]}, index=["a", "b", "c"])
    record = RunRecord("r", "r", {"dataset_crs": "EPSG:4326"}, {}, oof)
    blocks = bootstrap_blocks(record, 5000.0)  # degrees measured in metres: 0.01° ~ 700 m
    assert blocks[0] == blocks[1] != blocks[2]
    with pytest.raises(MisoBenchError, match="does not record its dataset CRS"):
        bootstrap_blocks(RunRecord("r", "r", {}, {}, oof), 5000.0)
