"""MLflow tracking: the only package that imports mlflow.

Layout: one experiment per dataset and task (``<dataset>/<task>``); one parent run per
command; one nested run per fold. Metric keys are stable across models so the MLflow compare
view lines them up (``test/overall/macro_f1``, ``test/mlra/<slug>/macro_f1``,
``truth/overall/macro_f1``...). The default store is SQLite under ``$MISO_BENCH_HOME`` with
artifacts next to it; ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` point elsewhere.

Every call goes through :class:`mlflow.tracking.MlflowClient` with an explicit run id: nothing
uses MLflow's global active run, so several runs, studies or trials in one process (or thread)
never share state.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import home_dir
from ..errors import MisoBenchError, MisoBenchWarning
from ..provenance import process_alive, process_identity

__all__ = [
    "Heartbeat",
    "RunInProgressError",
    "Tracker",
    "WarningLog",
    "default_tracking_uri",
    "download_run_artifact",
    "find_model_run",
    "flatten",
    "headline_metrics",
    "open_client",
    "serve_ui",
]

# mlflow logs database migrations and progress bars we do not want in a CLI's output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

#: The MLflow UI opens experiments with this tag as classic model training, not GenAI traces.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def headline_metrics(metrics: Mapping[str, float], primary: str) -> dict[str, float]:
    """A handful of ``headline/...`` copies of the metrics people compare first, so that the
    MLflow run table shows them as columns without picking among a thousand keys: the primary
    metric under the outer CV with its CI, its value against the truth sample, and the worst
    region of each region layer. Rounded to four decimals so the run table's columns read
    at a glance (the full values stay under their own keys)."""
    picks = {
        primary: f"test/overall/{primary}",
        f"{primary}_ci_low": f"test/overall/{primary}_ci_low",
        f"{primary}_ci_high": f"test/overall/{primary}_ci_high",
        f"truth_{primary}": f"truth/overall/{primary}",
    }
    for key in sorted(metrics):
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == "test" and parts[2:] == ["worst", primary]:
            picks[f"worst_{parts[1]}_{primary}"] = key
    return {
        f"headline/{name}": round(float(metrics[key]), 4)
        for name, key in picks.items()
        if key in metrics
    }


class RunInProgressError(MisoBenchError):
    """A run with the same configuration is still running in a live process."""


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
    """MLflow for one experiment, through an explicit client and run ids.

    Args:
        experiment: experiment name.
        uri: tracking URI (default: :func:`default_tracking_uri`).
    """

    def __init__(self, experiment: str, uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        _quiet()
        self.uri = uri or default_tracking_uri()
        self.client = MlflowClient(self.uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            artifact_location = None
            if self.uri.startswith("sqlite:"):
                # Without an explicit location, SQLite-tracked artifacts land in ./mlruns.
                root = home_dir() / "mlartifacts"
                root.mkdir(parents=True, exist_ok=True)
                artifact_location = (root / experiment.replace("/", "__")).as_uri()
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=artifact_location, tags=dict([EXPERIMENT_KIND])
                )
            except Exception:  # created meanwhile by another process: use that one
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                self.experiment_id = found.experiment_id
        else:
            self.experiment_id = found.experiment_id
        self.experiment = experiment

    # --- runs ---------------------------------------------------------------------------
    def start_run(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        parent_id: str | None = None,
    ) -> str:
        """Create a RUNNING run (nested under ``parent_id`` when given); its id."""
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        return str(run.info.run_id)

    @contextmanager
    def run(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        parent_id: str | None = None,
        run_id: str | None = None,
    ) -> Iterator[str]:
        """A run (new, or resumed with ``run_id``) that ends FINISHED, KILLED (interrupted:
        Ctrl-C, SIGTERM) or FAILED."""
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            if tags:
                self.set_tags(run_id, tags)
        else:
            run_id = self.start_run(name, tags, parent_id)
        try:
            yield run_id
        except KeyboardInterrupt:
            self.client.set_terminated(run_id, status="KILLED")
            raise
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def find_resumable(self, config_hash: str) -> tuple[str, dict[str, str]] | None:
        """An unfinished parent run with the same config hash and its finished fold runs
        (fold name -> run id).

        A RUNNING run whose process died (SIGKILL, a lost machine) is taken over; its
        unfinished fold runs are marked KILLED.

        Raises:
            RunInProgressError: that run is still running in a live process.
        """
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.config_hash = '{config_hash}' and tags.run_level = 'parent'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs or runs[0].info.status == "FINISHED":
            return None
        parent = runs[0]
        # A run created without its process's identity (an older version, or caught between
        # creation and tagging) counts as alive for its first ten minutes.
        young = time.time() * 1000 - (parent.info.start_time or 0) < 600_000
        unknown = "host" not in parent.data.tags
        if parent.info.status == "RUNNING" and (
            process_alive(parent.data.tags) if not unknown else young
        ):
            t = parent.data.tags
            raise RunInProgressError(
                f"the same run is in progress: MLflow run {parent.info.run_id} in process "
                f"{t.get('pid', '?')} on {t.get('host', '?')} (fix: wait for it to finish, "
                "or stop it; a rerun then resumes its finished folds)"
            )
        children = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        done: dict[str, str] = {}
        for child in children:
            fold = child.data.tags.get("fold")
            if child.info.status == "FINISHED" and fold is not None:
                done[fold] = child.info.run_id
            elif child.info.status == "RUNNING":
                self.client.set_terminated(child.info.run_id, status="KILLED")
        return parent.info.run_id, done

    def find_finished(self, config_hash: str) -> str | None:
        """The latest FINISHED parent run with this config hash, if any."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.config_hash = '{config_hash}' and tags.run_level = 'parent' "
            "and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return str(runs[0].info.run_id) if runs else None

    # --- logging ------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log parameters (flattened, batched)."""
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), 90):
            self.client.log_batch(run_id, params=items[start : start + 90])

    def log_metrics(
        self, run_id: str, metrics: Mapping[str, float], step: int | None = None
    ) -> list[str]:
        """Log the finite metrics (batched); return the keys left out as NaN or infinite."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items, dropped = [], []
        for key, value in metrics.items():
            v = None if value is None else float(value)
            if v is None or not np.isfinite(v):
                dropped.append(key)
                continue
            items.append(Metric(key, v, now, step or 0))
        for start in range(0, len(items), 900):
            self.client.log_batch(run_id, metrics=items[start : start + 900])
        return dropped

    def log_dataset(
        self,
        run_id: str,
        table: Any,
        *,
        name: str,
        source: str,
        digest: str,
        targets: str | None = None,
        context: str = "training",
    ) -> None:
        """Record the table a run learned from as an MLflow dataset input (the run table's
        Dataset column; name, digest, source, schema and row count, not the rows)."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # mlflow's hints on source kinds and integer columns
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]
                table, source=source, targets=targets, name=name, digest=digest[:16]
            )
        entity = DatasetInput(
            dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]
        )
        self.client.log_inputs(run_id, datasets=[entity])

    def log_pedons(self, run_id: str, inputs: Any) -> None:
        """The run's pedons (id, x, y, target and region of each) as its training dataset,
        named ``<dataset>/<task>`` with the dataset's content fingerprint as digest."""
        self.log_dataset(
            run_id,
            inputs.table.assign(**{k: v for k, v in inputs.regions.items()}),
            name=f"{inputs.manifest.name}/{inputs.task.name}",
            source=str(inputs.manifest.path),
            digest=inputs.fingerprint,
            targets="target",
        )

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set tags on a run (batched)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for start in range(0, len(items), 90):
            self.client.log_batch(run_id, tags=items[start : start + 90])

    def log_artifact(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        """Upload a file."""
        self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def log_folder(self, run_id: str, path: str | Path, folder: str) -> None:
        """Upload a folder's files under ``folder``."""
        self.client.log_artifacts(run_id, str(path), artifact_path=folder)

    def local_artifact_dir(self, run_id: str, folder: str) -> Path | None:
        """Where a run's artifacts under ``folder`` live, when the artifact store is a local
        folder (large files are then written in place instead of copied); None otherwise."""
        from urllib.parse import unquote, urlparse

        uri = self.client.get_run(run_id).info.artifact_uri or ""
        parsed = urlparse(uri)
        if parsed.scheme not in ("file", ""):
            return None
        target = Path(unquote(parsed.path)) / folder
        target.mkdir(parents=True, exist_ok=True)
        return target

    def log_yaml(self, run_id: str, data: Mapping[str, Any], name: str) -> None:
        """Upload a mapping as YAML."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
            self.log_artifact(run_id, path)

    def log_figure(self, run_id: str, fig: Any, name: str) -> None:
        """Upload a matplotlib figure as PNG under ``figures/``."""
        self.client.log_figure(run_id, fig, f"figures/{name}")

    def download(self, run_id: str, path: str, dst: str | Path | None = None) -> Path:
        """Download an artifact (file or folder) of a run; to a temporary folder by default."""
        target = str(dst) if dst is not None else tempfile.mkdtemp(prefix="miso-bench-")
        return Path(self.client.download_artifacts(run_id, path, target))

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """Latest metrics of a run."""
        return dict(self.client.get_run(run_id).data.metrics)

    def run_tags(self, run_id: str) -> dict[str, str]:
        """Tags of a run."""
        return dict(self.client.get_run(run_id).data.tags)


def _client(uri: str | None) -> Any:
    from mlflow.tracking import MlflowClient

    _quiet()
    return MlflowClient(uri or default_tracking_uri())


def open_client(uri: str | None = None) -> Any:
    """An :class:`mlflow.tracking.MlflowClient` on ``uri`` (default: the local store)."""
    return _client(uri)


def run_tags(run_id: str, uri: str | None = None) -> dict[str, str]:
    """The tags of a run.

    Raises:
        MisoBenchError: no such run in the store.
    """
    return dict(_get_run(_client(uri), run_id, uri).data.tags)


def _get_run(client: Any, run_id: str, uri: str | None) -> Any:
    """``client.get_run`` with the one-line error of an unknown run id."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise MisoBenchError(
            f"no MLflow run {run_id!r} in {uri or default_tracking_uri()} (fix: copy the run "
            "id from `miso-bench run`'s output or the MLflow UI; pass --tracking-uri for "
            "another store)"
        ) from exc


def log_to_run(
    run_id: str,
    *,
    files: Sequence[tuple[str | Path, str]] = (),
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    uri: str | None = None,
) -> None:
    """Add files (``(path, artifact folder)``), finite metrics and tags to a finished run."""
    from mlflow.entities import Metric, RunTag

    client = _client(uri)
    for path, folder in files:
        client.log_artifact(run_id, str(path), folder)
    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if np.isfinite(float(v))
    ]
    for start in range(0, len(items), 900):
        client.log_batch(run_id, metrics=items[start : start + 900])
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def find_model_run(run_id: str, fold: str, uri: str | None = None) -> str:
    """The run holding the model of ``fold`` (``final`` or a fold number) of a benchmark run.

    ``run_id`` may be the parent run or a fold's own run.

    Raises:
        MisoBenchError: unknown run, no such fold, or no model logged.
    """
    client = _client(uri)
    run = _get_run(client, run_id, uri)
    tags = run.data.tags
    if tags.get("run_level") in ("fold", "final"):
        return run_id
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}' and tags.fold = '{fold}' "
        "and attributes.status = 'FINISHED'",
    )
    if not children:
        hint = (
            "it was run with refit=false (fix: load a fold, e.g. fold=0, or rerun with refit)"
            if fold == "final"
            else f"it has folds 0..{int(tags.get('n_folds', '1')) - 1}"
        )
        raise MisoBenchError(f"run {run_id} has no finished model for fold {fold!r}: {hint}")
    found = children[0].info.run_id
    if not any(a.path == "model" for a in client.list_artifacts(found)):
        raise MisoBenchError(
            f"run {found} (fold {fold}) holds no model: it was logged with "
            "tracking.log_models=false"
        )
    return str(found)


def download_run_artifact(run_id: str, path: str, dst: str | Path, uri: str | None = None) -> Path:
    """Download a run's artifact (file or folder) into ``dst``."""
    return Path(_client(uri).download_artifacts(run_id, path, str(dst)))


class WarningLog:
    """Collects the :class:`~miso_bench.errors.MisoBenchWarning` s raised while it is entered,
    tells each once (``tell``) and records them as ``warning.<key>`` tags on a run.

    Args:
        tell: called with the message of each new warning.
    """

    def __init__(self, tell: Callable[[str], None]) -> None:
        self.tell = tell
        self.seen: dict[str, str] = {}
        self.repeats: dict[str, int] = {}
        self._records: list[warnings.WarningMessage] = []
        self._ctx = warnings.catch_warnings(record=True)

    def __enter__(self) -> WarningLog:
        records = self._ctx.__enter__()
        self._records = records if records is not None else []  # record=True: always a list
        warnings.simplefilter("always", MisoBenchWarning)
        return self

    def __exit__(self, *exc: object) -> None:
        self.collect()
        self._ctx.__exit__(*exc)  # type: ignore[arg-type]

    def add(self, key: str, message: str) -> None:
        """Record a warning; the first of each key is told, repeats are counted."""
        if key in self.seen:
            self.repeats[key] = self.repeats.get(key, 1) + 1
            return
        self.seen[key] = message
        self.tell(message)

    def collect(self) -> None:
        """Move newly caught warnings into :attr:`seen` (other warnings are re-emitted)."""
        records, self._records[:] = list(self._records), []
        for record in records:
            if isinstance(record.message, MisoBenchWarning):
                self.add(record.message.key, record.message.message)
            else:
                warnings.showwarning(
                    record.message, record.category, record.filename, record.lineno
                )

    def tag(self, tracker: Tracker, run_id: str) -> None:
        self.collect()
        if self.seen:
            tracker.set_tags(run_id, {f"warning.{k}": v for k, v in self.messages().items()})

    def messages(self) -> dict[str, str]:
        """Each key's first message, with how often it came up when more than once."""
        return {
            k: v + (f" [{self.repeats[k]} times in this run]" if k in self.repeats else "")
            for k, v in self.seen.items()
        }


class Heartbeat:
    """Keeps a run's ``heartbeat`` tag fresh from a background thread (with ``host``/``pid``
    tags it tells other processes that the run is alive; see
    :func:`miso_bench.provenance.process_alive`).

    Args:
        tracker: the tracker.
        run_id: the run.
        every_s: seconds between beats.
    """

    def __init__(self, tracker: Tracker, run_id: str, every_s: float = 30.0) -> None:
        self.tracker, self.run_id, self.every_s = tracker, run_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.tracker.set_tags(self.run_id, {"heartbeat": f"{time.time():.0f}"})
            except Exception:  # a beat lost to a busy store is retried at the next one
                continue

    def __enter__(self) -> Heartbeat:
        self.tracker.set_tags(self.run_id, process_identity())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def serve_ui(port: int = 5000, host: str = "127.0.0.1", uri: str | None = None) -> int:
    """Run ``mlflow server`` on the default store (light settings) until interrupted.

    Ctrl-C or SIGTERM stops the server and its workers (its own process group) before
    returning.
    """
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
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into it by the CLI
        return 0
    finally:
        if proc.poll() is None:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """Terminate a child started in its own session and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
