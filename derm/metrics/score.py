"""The one number a sweep maximises: a weighted sum of a task's metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping

from derm.errors import ConfigError
from derm.labels import TASKS

# Default sweep score per task: metric name -> weight, score = sum of weight x metric.
DEFAULT_SCORE_WEIGHTS: dict[str, dict[str, float]] = {
    "multitask": {"balanced_accuracy": 0.5, "dice": 0.5},
    "attributes": {"jaccard_micro": 1.0},
    "segmentation": {"dice": 1.0},
    "classification": {"balanced_accuracy": 1.0},
}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def sweep_score(metrics: Mapping[str, float], task: str, weights: Mapping[str, float] | None = None) -> float:
    """The number a sweep maximises: sum of weight x metric over ``weights``.

    Without ``weights`` the task's default (``DEFAULT_SCORE_WEIGHTS``): multitask is the
    mean of balanced accuracy and dataset Dice, attributes the micro Jaccard (the ISIC
    2018 Task 2 score), segmentation the Dice, classification the balanced accuracy.
    A negative weight rewards a lower value (e.g. ``{"balanced_accuracy": 1, "ece": -0.5}``).

    >>> sweep_score({"balanced_accuracy": 0.6, "dice": 0.8}, "multitask")
    0.7
    """
    _check_task(task)
    weights = DEFAULT_SCORE_WEIGHTS[task] if weights is None else weights
    missing = [name for name in weights if name not in metrics]
    if missing:
        raise ConfigError(f"train.score_weights names {', '.join(map(repr, missing))}, which task "
                          f"{task!r} does not report; available: {', '.join(sorted(metrics))}")
    score = math.fsum(float(weight) * float(metrics[name]) for name, weight in weights.items())
    return score
