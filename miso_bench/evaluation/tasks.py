"""Prediction tasks: which label, which classes, which loss, which primary metric.

Adding a task is a registry entry. A dataset label that no entry names (for example
``soiltype`` of a user's dataset) becomes a generic task: binary when it has two classes,
multi-class otherwise.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Any

from ..registry import Registry, UnknownNameError

__all__ = ["TASKS", "Task", "resolve_task"]


@dataclass(frozen=True)
class Task:
    """A classification task on one pedon label.

    Attributes:
        name: registry key (``pf1m``, ``tax_order``).
        label: label name in the dataset manifest.
        kind: ``binary`` or ``multiclass``.
        loss: training loss of deep models (``bce`` or ``ce``).
        primary_metric: metric used for model selection and headline results.
        positive_class: for binary tasks, the class whose F1/precision/recall is reported.
        classes: class values (filled from the manifest at run time).
    """

    name: str
    label: str
    kind: str
    loss: str
    primary_metric: str
    positive_class: Any = 1
    classes: tuple[Any, ...] = ()

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def positive_index(self) -> int:
        """Index of the positive class in ``classes`` (binary tasks)."""
        return self.classes.index(self.positive_class)

    @property
    def class_names(self) -> list[str]:
        """Class values as strings (for metric keys and plots)."""
        return [str(c) for c in self.classes]


#: Registered tasks. Entries are :class:`Task` templates; classes come from the manifest.
TASKS: Registry[Task] = Registry("task")
TASKS.register("pf1m")(Task("pf1m", "pf1m", "binary", "bce", "f1_pos", positive_class=1))
TASKS.register("tax_order")(Task("tax_order", "tax_order", "multiclass", "ce", "macro_f1"))


def resolve_task(name: str, manifest_labels: dict[str, tuple[Any, ...]]) -> Task:
    """The task ``name`` with its classes from the manifest.

    Args:
        name: a registered task or a label name of the dataset.
        manifest_labels: label name -> class values, from the dataset manifest.

    Raises:
        UnknownNameError: neither a registered task nor a label of the dataset.
    """
    if name in TASKS:
        task = TASKS.get(name)
        if task.label not in manifest_labels:
            from ..errors import MisoBenchError

            raise MisoBenchError(
                f"task {name!r} needs the label {task.label!r}, which the dataset does not "
                f"have (its labels: {', '.join(sorted(manifest_labels))})"
            )
        classes = tuple(manifest_labels[task.label])
        if task.kind == "binary" and (len(classes) != 2 or task.positive_class not in classes):
            from ..errors import MisoBenchError

            raise MisoBenchError(
                f"task {name!r} is binary with positive class {task.positive_class!r}, but the "
                f"dataset's label {task.label!r} lists classes {list(classes)} (fix: recode the "
                f"label to two classes [0, 1] with {task.positive_class!r} for the class its "
                "F1 should score, in the file and under `classes:`)"
            )
        return replace(task, classes=classes)
    if name in manifest_labels:
        classes = tuple(manifest_labels[name])
        # Two classes: binary, scoring the second class listed (its F1, `p/<class>`).
        if len(classes) == 2:
            return Task(
                name, name, "binary", "bce", "f1_pos", positive_class=classes[1], classes=classes
            )
        return Task(name, name, "multiclass", "ce", "macro_f1", classes=classes)
    valid = sorted(set(TASKS.list()) | set(manifest_labels))
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(f"unknown task {name!r}.{hint} Valid: {', '.join(valid)}")
