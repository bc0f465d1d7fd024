"""A small name -> factory registry with glob listing and helpful unknown-name errors.

Used for models, cross-validation schemes, tasks and metrics, following timm's
``register_model``/``list_models`` and torchgeo's ``get_model`` API.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

from .errors import MisoBenchError

__all__ = ["Registry", "UnknownNameError", "slugify"]

T = TypeVar("T")


class UnknownNameError(MisoBenchError, KeyError):
    """A name is not in a registry; the message lists close matches and the valid names."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry[T]:
    """Entries registered by name (lower snake case).

    Args:
        kind: what the entries are (``model``, ``cv``), used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator that registers an entry under ``name`` (default: its ``__name__``)."""

        def wrap(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key or key != key.lower() or " " in key:
                raise ValueError(f"{self.kind} names are lower snake case, got {key!r}")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = obj
            return obj

        return wrap

    def unregister(self, name: str) -> None:
        """Remove an entry (plugins and tests that register temporary entries)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry called ``name``.

        Raises:
            UnknownNameError: listing close matches and every valid name.
        """
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a glob pattern."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)


def slugify(name: str) -> str:
    """Lower snake-case key for metric names and registry keys.

    ``Yukon-Kuskokwim Delta`` becomes ``yukon_kuskokwim_delta``; letters of any script are
    kept (``Ебергётцен`` is ``ебергётцен``, not ``unnamed``), as MLflow keys allow them.
    """
    return re.sub(r"[\W_]+", "_", str(name).lower()).strip("_") or "unnamed"
