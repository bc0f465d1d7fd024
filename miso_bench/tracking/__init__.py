"""MLflow tracking: the only package that imports mlflow.

Layout: one experiment per dataset and task (``<dataset>/<task>``); one parent run per
command; one nested run per fold. Metric keys are stable across models so the MLflow compare
view lines them up (``test/overall/macro_f1``, ``test/mlra/<slug>/macro_f1``,
``truth/overall/macro_f1``...). The default store is SQLite under ``$MISO_BENCH_HOME`` with
artifacts next to it; ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` point elsewhere.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..config import home_dir

__all__ = ["Tracker", "default_tracking_uri", "flatten", "serve_ui"]

# mlflow logs database migrations and progress bars we do not want in a CLI's output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def _quiet() -> None:
    """mlflow configures its loggers on import; lower them afterwards."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or ``sqlite:///$MISO_BENCH_HOME/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    home = home_dir()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"cv.n_splits": "5", ...}`` (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{path}."))
        else:
            out[path] = str(value)[:6000]
    return out


class Tracker:
    """Thin wrapper over MLflow for one command's runs.

    Args:
        experiment: experiment name.
        uri: tracking URI (default: :func:`default_tracking_uri`).
    """

    def __init__(self, experiment: str, uri: str | None = None) -> None:
        import mlflow

        _quiet()
        self._mlflow = mlflow
        self.uri = uri or default_tracking_uri()
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        # mlflow exports the URI to the environment; restore the user's own setting so that a
        # later Tracker in this process resolves its default afresh.
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        self.client = mlflow.tracking.MlflowClient(self.uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            artifact_location = None
            if self.uri.startswith("sqlite:"):
                # Without an explicit location, SQLite-tracked artifacts land in ./mlruns.
                root = home_dir() / "mlartifacts"
                root.mkdir(parents=True, exist_ok=True)
                artifact_location = (root / experiment.replace("/", "__")).as_uri()
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_location
            )
        else:
            self.experiment_id = found.experiment_id
        self.experiment = experiment

    # --- runs ---------------------------------------------------------------------------
    @contextmanager
    def run(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        nested: bool = False,
        run_id: str | None = None,
    ) -> Iterator[str]:
        """Start (or resume, with ``run_id``) a run; it ends FINISHED, FAILED or KILLED."""
        mlflow = self._mlflow
        run = mlflow.start_run(
            run_id=run_id,
            run_name=None if run_id else name,
            experiment_id=self.experiment_id,
            nested=nested,
            tags=dict(tags or {}),
        )
        try:
            yield run.info.run_id
        except KeyboardInterrupt:
            mlflow.end_run(status="KILLED")
            raise
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
        mlflow.end_run(status="FINISHED")

    def find_resumable(self, config_hash: str) -> tuple[str, dict[int, str]] | None:
        """An unfinished parent run with the same config hash and its finished fold runs."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.config_hash = '{config_hash}' and tags.run_level = 'parent'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs or runs[0].info.status == "FINISHED":
            return None
        parent = runs[0].info.run_id
        children = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and "
            "attributes.status = 'FINISHED'",
        )
        done = {int(c.data.tags["fold"]): c.info.run_id for c in children if "fold" in c.data.tags}
        return parent, done

    # --- logging ------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (batched)."""
        items = list(flatten(params).items())
        for start in range(0, len(items), 90):
            self._mlflow.log_params(dict(items[start : start + 90]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log finite metrics (batched)."""
        clean = {
            k: float(v)
            for k, v in metrics.items()
            if v is not None and pd.notna(v) and abs(float(v)) != float("inf")
        }
        items = list(clean.items())
        for start in range(0, len(items), 900):
            self._mlflow.log_metrics(dict(items[start : start + 900]), step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the active run."""
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Upload a file."""
        self._mlflow.log_artifact(str(path), artifact_path=folder)

    def log_yaml(self, data: Mapping[str, Any], name: str) -> None:
        """Upload a mapping as YAML."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
            self.log_artifact(path)

    def log_figure(self, fig: Any, name: str) -> None:
        """Upload a matplotlib figure as PNG under ``figures/``."""
        self._mlflow.log_figure(fig, f"figures/{name}")

    def download(self, run_id: str, path: str) -> Path:
        """Download an artifact of a run to a temporary folder."""
        return Path(self._mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """Latest metrics of a run."""
        return dict(self.client.get_run(run_id).data.metrics)

    def run_url(self, run_id: str) -> str:
        """Where to see the run (a UI path relative to the server root)."""
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"


def serve_ui(port: int = 5000, host: str = "127.0.0.1", uri: str | None = None) -> int:
    """Run ``mlflow server`` on the default store (light settings) until interrupted."""
    backend = uri or default_tracking_uri()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if backend.startswith("sqlite:"):
        cmd += ["--default-artifact-root", (home_dir() / "mlartifacts").as_uri()]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow UI: http://{host}:{port}  (store: {backend}; Ctrl-C to stop)", flush=True)
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)
        return 0
