"""Analysis of finished runs from MLflow: paired comparisons and reports."""

from .compare import Comparison, RunRecord, compare_runs, load_run
from .report import build_report

__all__ = ["Comparison", "RunRecord", "build_report", "compare_runs", "load_run"]
