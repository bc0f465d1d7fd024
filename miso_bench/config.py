"""Run configuration: defaults, YAML merging, ``--set`` overrides and validation; locations.

A run's config is merged in a fixed order: built-in defaults < model file
(``configs/models/<model>.yaml``, when present) < experiment file (``--config``) < command-line
flags and ``--set key=value`` overrides. Unknown keys are rejected with a suggestion. The
fully resolved config is logged with every run and hashed into its ``config_hash`` tag.

``MISO_BENCH_HOME`` (default ``./.miso-bench``) holds everything the suite generates: the
synthetic datasets under ``data/``, the MLflow store (``mlflow.db``) and run artifacts.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import MisoBenchError

__all__ = [
    "DEFAULTS",
    "DEFAULT_PRESET",
    "DEFAULT_SEED",
    "ConfigError",
    "config_hash",
    "configs_dir",
    "default_dataset_dir",
    "home_dir",
    "parse_set",
    "resolve_config",
    "validate_config",
]

#: Preset of the embedded default dataset.
DEFAULT_PRESET = "default"
#: Seed of the embedded default dataset.
DEFAULT_SEED = 0

#: Every key a run config may hold, with its default. ``model.params`` is free-form (checked
#: against the model's own parameters).
DEFAULTS: dict[str, Any] = {
    "task": "tax_order",
    "seed": 0,
    "refit": True,  # after CV, refit the model on every labelled pedon and log it
    "data": {
        "path": None,  # a dataset folder; None = the embedded synthetic default
        "preset": DEFAULT_PRESET,  # synthetic preset used when path is None
        "seed": DEFAULT_SEED,  # synthetic seed used when path is None
        "cache_mb": 1024.0,  # chip models: memory of the raster block cache
    },
    "model": {
        "name": "rf",
        "params": {},
        "features": None,  # feature groups / names; None = the model's defaults
        "window_px": 1,  # point features: 1 = pixel under the pedon, k = k x k mean
    },
    "cv": {
        "name": "spatial",
        "n_splits": 5,
        "block_size_m": "auto",  # spatial: metres, or auto = labels' autocorrelation range
        "eps_m": 1000.0,  # cluster: DBSCAN linkage distance
        "region": "mlra",  # region: layer for leave-one-region-out
        "base": "spatial",  # buffered: the scheme to buffer
        "buffer_m": 1000.0,  # buffered: exclusion distance
        "path": None,  # file: split JSON in the reference format
        "inner_val_fraction": 0.2,  # share of the training fold used for early stopping
        "inner_block_size_m": 2000.0,  # block size of the inner spatial validation split
    },
    "eval": {
        "n_boot": 200,  # blocked-bootstrap replicates for CIs (0 = none)
        "ci": 0.95,
        "block_size_m": 1000.0,  # bootstrap block side
        "min_region_n": 30,  # smallest region eligible as "worst region"
        "truth": True,  # evaluate every fold's model on the truth sample, if any
        "domain_points": 5000,  # prediction-domain sample for kNNDM and diagnostics
    },
    "tracking": {
        "uri": None,  # MLflow tracking URI; None = $MLFLOW_TRACKING_URI or local SQLite
        "experiment": None,  # None = "<dataset>/<task>"
        "log_models": True,  # log every fold's model (and the final one) to MLflow
        "tags": {},  # extra tags of the run (e.g. the ablation suite and variant)
    },
}
_FREE_FORM = {"model.params", "tracking.tags"}


class ConfigError(MisoBenchError):
    """A config file or override is invalid."""


def home_dir() -> Path:
    """Root folder of generated data and runs (``$MISO_BENCH_HOME`` or ``./.miso-bench``)."""
    return Path(os.environ.get("MISO_BENCH_HOME", ".miso-bench")).expanduser().resolve()


def default_dataset_dir(preset: str = DEFAULT_PRESET, seed: int = DEFAULT_SEED) -> Path:
    """Cache folder of a generated synthetic Alaska dataset."""
    return home_dir() / "data" / f"synthetic-alaska-{preset}-seed{seed}"


def configs_dir() -> Path:
    """The project's ``configs/`` folder (``$MISO_BENCH_CONFIGS`` overrides it)."""
    env = os.environ.get("MISO_BENCH_CONFIGS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "configs"


def _check_keys(
    data: Mapping[str, Any], schema: Mapping[str, Any], source: str, prefix: str = ""
) -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = (
                f"did you mean `{prefix}{close[0]}`?"
                if close
                else f"valid keys here: {', '.join(schema)}"
            )
            raise ConfigError(f"{source}: unknown key `{path}` ({hint})")
        if path in _FREE_FORM:
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{source}: `{path}` must be a mapping of parameters")
            continue
        if isinstance(schema[key], Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: `{path}` must be a mapping, got {value!r}")
            _check_keys(value, schema[key], source, prefix=f"{path}.")


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on ``base``; nested mappings (``model.params`` included) merge key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: Path, what: str, error: type[MisoBenchError] = MisoBenchError) -> Any:
    """A YAML file's content, or ``error`` in one line naming the file: unreadable (``what``
    says what it should have been) or invalid YAML."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: invalid YAML: {exc}".replace("\n", " ")) from exc


def _load_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, "config file", ConfigError) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a config file must be a mapping of keys")
    return dict(data)


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["cv.n_splits=3", "model.params.max_depth=8"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set cv.n_splits=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: `{part}` is not a section")
        node[parts[-1]] = value
    return out


def resolve_config(
    experiment: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Merge defaults < model file < experiment file < flags < ``--set`` overrides.

    Args:
        experiment: an experiment YAML file.
        flags: nested values from dedicated command-line flags (``--model``, ``--seed``...).
        overrides: ``key=value`` strings.

    Raises:
        ConfigError: unreadable file, unknown key (with a suggestion), wrong shape.
    """
    exp = _load_yaml(Path(experiment)) if experiment else {}
    _check_keys(exp, DEFAULTS, str(experiment))
    flag_values = dict(flags or {})
    _check_keys(flag_values, DEFAULTS, "command line")
    sets = parse_set(overrides)
    _check_keys(sets, DEFAULTS, "--set")
    upper = _merge(_merge(exp, flag_values), sets)
    model_name = upper.get("model", {}).get("name", DEFAULTS["model"]["name"])
    model_file = configs_dir() / "models" / f"{model_name}.yaml"
    model_cfg = _load_yaml(model_file) if model_file.is_file() else {}
    _check_keys(model_cfg, DEFAULTS, str(model_file))
    resolved = _merge(_merge(DEFAULTS, model_cfg), upper)
    validate_config(resolved)
    return resolved


def _number(
    cfg: Mapping[str, Any],
    path: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    allow: tuple = (),
) -> None:
    node: Any = cfg
    for part in path.split("."):
        node = node[part]
    if node in allow:
        return
    ok = isinstance(node, int) if integer else isinstance(node, int | float)
    ok = ok and not isinstance(node, bool)
    if ok and low is not None and node < low:
        ok = False
    if ok and high is not None and node > high:
        ok = False
    if not ok:
        kind = "an integer" if integer else "a number"
        bounds = ""
        if low is not None and high is not None:
            bounds = f" in [{low:g}, {high:g}]"
        elif low is not None:
            bounds = f" >= {low:g}"
        extra = f" or {' / '.join(map(str, allow))}" if allow else ""
        raise ConfigError(
            f"`{path}` must be {kind}{bounds}{extra}, got {node!r} (fix: --set {path}=...)"
        )


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check the types and ranges of a resolved config's values.

    Raises:
        ConfigError: naming the key, the expected value and the fix.
    """
    _number(cfg, "seed", integer=True, low=0)
    _number(cfg, "data.seed", integer=True, low=0)
    _number(cfg, "model.window_px", integer=True, low=1)
    if cfg["model"]["window_px"] % 2 == 0:
        raise ConfigError("`model.window_px` must be odd (a window centred on the pedon)")
    features = cfg["model"]["features"]
    if features is not None and (not isinstance(features, list) or not features):
        raise ConfigError(
            "`model.features` must be a list of feature groups or names, e.g. "
            "[s2, terrain, climate]"
        )
    _number(cfg, "cv.n_splits", integer=True, low=2)
    _number(cfg, "cv.block_size_m", low=1e-9, allow=("auto", None))
    _number(cfg, "cv.eps_m", low=1e-9)
    _number(cfg, "cv.buffer_m", low=0)
    _number(cfg, "cv.inner_val_fraction", low=0.05, high=0.5)
    _number(cfg, "cv.inner_block_size_m", low=1e-9)
    _number(cfg, "eval.n_boot", integer=True, low=0)
    _number(cfg, "eval.ci", low=0.5, high=0.999)
    _number(cfg, "eval.block_size_m", low=1e-9)
    _number(cfg, "eval.min_region_n", integer=True, low=1)
    _number(cfg, "eval.domain_points", integer=True, low=100)
    _number(cfg, "data.cache_mb", low=16)
    for path in ("refit", "eval.truth", "tracking.log_models"):
        section, _, key = path.rpartition(".")
        value = cfg[section][key] if section else cfg[key]
        if not isinstance(value, bool):
            raise ConfigError(f"`{path}` must be true or false, got {value!r}")
    for path in ("task", "model.name", "cv.name"):
        section, _, key = path.rpartition(".")
        value = cfg[section][key] if section else cfg[key]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"`{path}` must be a name, got {value!r}")


def config_hash(config: Mapping[str, Any]) -> str:
    """Short SHA-256 of a resolved config (tracking tags; identifies identical runs)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
