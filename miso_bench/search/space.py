"""Declarative search spaces: ``configs/search/<family>.yaml``.

A search space maps dotted config paths to what Optuna may try (the terratorch-iterate
convention)::

    model.params.max_depth: [8, 12, 16, 24, null]          # a list: categorical
    model.params.n_estimators: {low: 100, high: 1000, step: 50}   # an integer range
    model.params.learning_rate: {low: 0.01, high: 0.3, log: true} # a float range

Ranges whose ``low``/``high`` (and ``step``) are integers are integer ranges; otherwise
float. Every path must be a key of the run config, and a ``model.params.<name>`` path a
parameter the model takes; mistakes are one-line errors naming the file, the key and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULTS, configs_dir, read_yaml
from ..errors import MisoBenchError

__all__ = ["Dimension", "SearchSpace", "SearchSpaceError", "load_search_space", "space_file"]


class SearchSpaceError(MisoBenchError):
    """A search-space file is invalid."""


@dataclass(frozen=True)
class Dimension:
    """One searched parameter.

    Attributes:
        path: dotted config path (``model.params.max_depth``).
        kind: ``categorical``, ``int`` or ``float``.
        choices: the values of a categorical dimension.
        low, high: the range (inclusive) of a numeric dimension.
        log: sample the range on a log scale.
        step: the grid step of a numeric range (None: continuous / every integer).
    """

    path: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws for this dimension."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind == "int":
            step = int(self.step) if self.step else 1
            return trial.suggest_int(
                self.path, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """A named set of dimensions (see the module docstring for the file format)."""

    name: str
    dimensions: tuple[Dimension, ...]
    source: str = ""

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Dotted path -> value for one trial."""
        return {d.path: d.suggest(trial) for d in self.dimensions}


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model.params.max_depth": 8}`` -> ``{"model": {"params": {"max_depth": 8}}}``."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


#: Config paths outside ``model.params`` that act inside a trial: the early-stopping split
#: carved from each inner training fold.
SEARCHABLE_OUTSIDE_PARAMS = ("cv.inner_val_fraction", "cv.inner_block_size_m")


def space_file(family: str) -> Path:
    """``configs/search/<family>.yaml``."""
    return configs_dir() / "search" / f"{family}.yaml"


def _check_path(path: str, valid_params: set[str], source: str) -> None:
    parts = path.split(".")
    if parts[:2] == ["model", "params"] and len(parts) >= 3:
        if parts[2] not in valid_params:
            close = difflib.get_close_matches(parts[2], sorted(valid_params), n=1)
            hint = (
                f"did you mean model.params.{close[0]}?"
                if close
                else "see `miso-bench list models`"
            )
            raise SearchSpaceError(
                f"{source}: `{path}`: the model has no parameter `{parts[2]}` ({hint})"
            )
        return
    node: Any = DEFAULTS
    for i, part in enumerate(parts):
        if not isinstance(node, Mapping) or part not in node:
            keys = list(node) if isinstance(node, Mapping) else []
            close = difflib.get_close_matches(part, keys, n=1)
            where = ".".join(parts[:i]) or "the top level"
            hint = f"did you mean `{close[0]}`?" if close else f"keys of {where}: {', '.join(keys)}"
            raise SearchSpaceError(f"{source}: `{path}`: unknown config key ({hint})")
        node = node[part]
    if path in ("model.name", "task", "cv.name", "data.path") or path.startswith("tracking."):
        raise SearchSpaceError(
            f"{source}: `{path}` cannot be searched (it names what is benchmarked, not how)"
        )
    if path not in SEARCHABLE_OUTSIDE_PARAMS:
        # The features, folds and data of a sweep are built once, before its trials: such a
        # dimension would change nothing, and its "best" value would be an arbitrary draw
        # (or, for `seed`, the luckiest seed).
        raise SearchSpaceError(
            f"{source}: `{path}` cannot be searched: a sweep's features, folds, data and "
            "seed are fixed before its trials (search model.params.* or "
            f"{', '.join(SEARCHABLE_OUTSIDE_PARAMS)}; compare other settings with an "
            "ablation suite)"
        )


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SearchSpaceError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _dimension(path: str, spec: Any, source: str) -> Dimension:
    where = f"{source}: `{path}`"
    if isinstance(spec, list):
        if not spec:
            raise SearchSpaceError(f"{where}: an empty list of choices (fix: list at least one)")
        choices = tuple(spec)
        if any(isinstance(c, list | dict) for c in choices):
            raise SearchSpaceError(f"{where}: choices must be plain values (numbers, text, null)")
        return Dimension(path, "categorical", choices=choices)
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"low", "high", "log", "step"})
        if unknown or "low" not in spec or "high" not in spec:
            raise SearchSpaceError(
                f"{where}: a range is {{low, high}} with optional log and step"
                + (
                    f" (unknown: {', '.join(map(str, unknown))})"
                    if unknown
                    else " (fix: give low and high)"
                )
            )
        low, high = _number(spec["low"], where), _number(spec["high"], where)
        if not low < high:
            raise SearchSpaceError(f"{where}: empty range: low {low:g} is not below high {high:g}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise SearchSpaceError(f"{where}: `log` must be true or false, got {log!r}")
        step = spec.get("step")
        if step is not None:
            step = _number(step, where)
            if step <= 0:
                raise SearchSpaceError(f"{where}: `step` must be positive, got {step:g}")
            if log:
                raise SearchSpaceError(f"{where}: `step` and `log: true` cannot go together")
        if log and low <= 0:
            raise SearchSpaceError(f"{where}: a log range needs low > 0, got {low:g}")
        integral = all(
            isinstance(v, int) and not isinstance(v, bool)
            for v in (spec["low"], spec["high"], spec.get("step", 1))
        )
        return Dimension(
            path, "int" if integral else "float", low=low, high=high, log=log, step=step
        )
    raise SearchSpaceError(
        f"{where}: expected a list of choices or a {{low, high}} range, got {spec!r}"
    )


def load_search_space(path: str | Path, valid_params: set[str]) -> SearchSpace:
    """Read and validate a search-space file.

    Args:
        path: the YAML file.
        valid_params: the parameters the model takes (``model.params`` keys).

    Raises:
        SearchSpaceError: unreadable file, unknown key, empty range, wrong type.
    """
    file = Path(path)
    raw = read_yaml(file, "the search space", SearchSpaceError)
    if not isinstance(raw, Mapping) or not raw:
        raise SearchSpaceError(
            f"{file}: a search space maps config paths to choices or ranges, e.g. "
            "`model.params.max_depth: [8, 16]`"
        )
    dims = []
    for key, spec in raw.items():
        _check_path(str(key), valid_params, str(file))
        dims.append(_dimension(str(key), spec, str(file)))
    return SearchSpace(file.stem, tuple(dims), str(file))
