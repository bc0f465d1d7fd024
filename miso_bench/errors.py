"""Exceptions that carry a message meant for the user (the CLI prints them without a traceback)."""

from __future__ import annotations

import os

__all__ = ["DatasetError", "ManifestError", "MisoBenchError", "MisoBenchWarning", "warn"]


class MisoBenchError(Exception):
    """Base class of errors caused by user input: bad files, configs, names or values."""


class ManifestError(MisoBenchError):
    """A dataset manifest (``dataset.yaml``) is missing, unreadable or invalid.

    Args:
        file: the manifest path.
        field: dotted path of the offending field (``modalities.sentinel2.bands``).
        problem: what is wrong.
        fix: what the user should do about it.
    """

    def __init__(self, file: str, field: str, problem: str, fix: str) -> None:
        self.file, self.field, self.problem, self.fix = file, field, problem, fix
        super().__init__(f"{file}: {field}: {problem} (fix: {fix})")


class DatasetError(MisoBenchError):
    """A dataset file is missing, unreadable or does not match its manifest.

    Args:
        file: the offending file (or folder).
        field: the manifest field or file column concerned (``pedons.id_column``).
        problem: what is wrong.
        fix: what the user should do about it.
    """

    def __init__(self, file: str | os.PathLike[str], field: str, problem: str, fix: str) -> None:
        self.file, self.field, self.problem, self.fix = str(file), field, problem, fix
        super().__init__(f"{file}: {field}: {problem} (fix: {fix})")


class MisoBenchWarning(UserWarning):
    """Something changed a result without failing: a fallback, an adjusted setting, dropped
    values. The runner records each on the run (tag ``warning.<key>``) and prints it once.

    Args:
        key: short identifier (``cv_autocorrelation_fallback``).
        message: what happened and what to do about it.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{message}")


def warn(key: str, message: str) -> None:
    """Emit a :class:`MisoBenchWarning` (the runner turns it into a run tag)."""
    import warnings

    warnings.warn(MisoBenchWarning(key, message), stacklevel=2)
