"""The leaderboard as a results table: which columns a task shows, their headers and precision.

`annotate` adds to a ranked board (`derm.leaderboard.rank_trials`) what the exports show
beside Ray's numbers: the Model/Backbone label, each searched key's value (``param.<key>``)
and, for multitask sweeps, whether the trial is on the Pareto front of classification vs
segmentation quality. `display_table` picks and formats the columns the way the seed
projects' README tables read: model first, then the task's metrics, the searched
hyperparameters, epochs trained (ASHA), parameters, inference time and status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from derm.errors import DermError
from derm.labels import ATTRIBUTES
from derm.search_space import SearchSpace, resolve_trial_config, trial_overrides

MISSING = "–"
PARAM_PREFIX = "param."
# Already in the Model/Backbone column; a separate column would repeat it.
IN_MODEL_LABEL = ("model.arch", "model.encoder")

CLASSIFICATION_METRICS = (
    ("accuracy", "Accuracy"), ("balanced_accuracy", "Bal. acc."), ("precision_weighted", "Precision (w)"),
    ("recall_weighted", "Recall (w)"), ("f1_weighted", "F1 (w)"), ("f1_macro", "F1 (macro)"), ("auroc", "AUROC"),
)
SEGMENTATION_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("isic_task1_jaccard", "Jaccard (thr. 0.65)"))
ATTRIBUTE_METRICS = (
    *((f"jaccard_{name}", f"Jaccard {name.replace('_', ' ')}") for name in ATTRIBUTES),
    ("jaccard_micro", "Jaccard (micro)"), ("dice_micro", "Dice (micro)"),
)
TASK_METRICS = {
    "multitask": CLASSIFICATION_METRICS + SEGMENTATION_METRICS,
    "classification": CLASSIFICATION_METRICS,
    "segmentation": SEGMENTATION_METRICS,
    "attributes": ATTRIBUTE_METRICS,
}


@dataclass(frozen=True)
class Column:
    """One shown column: the board's key, its header and how a value is written."""

    key: str
    header: str
    format: Callable[[Any], str]
    numeric: bool = True


def pareto_front(x, y) -> np.ndarray:
    """Which points no other point dominates, both coordinates maximised.

    A point is dominated when another is at least as good in both coordinates and better
    in one; equal points do not dominate each other, so ties are all on the front. A point
    with NaN in either coordinate is neither on the front nor dominates anything.

        >>> pareto_front([0.5, 0.7, 0.6, float("nan")], [0.9, 0.8, 0.7, 1.0]).tolist()
        [True, True, False, False]
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    valid = ~(np.isnan(x) | np.isnan(y))
    front = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(valid):
        dominates = valid & (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        front[i] = not dominates.any()
    return front


def segmentation_quality_key(board: pd.DataFrame) -> str:
    """The thresholded ISIC Task 1 Jaccard where the trials report it, else Dice."""
    if "isic_task1_jaccard" in board and board["isic_task1_jaccard"].notna().any():
        return "isic_task1_jaccard"
    return "dice"


def annotate(board: pd.DataFrame, space: SearchSpace) -> pd.DataFrame:
    """The ranked board plus ``model``, ``param.<searched key>`` and (multitask) ``pareto_front``."""
    board = board.copy()
    values = [_searched_values(space, row) for _, row in board.iterrows()]
    position = list(board.columns).index("trial_id") + 1 if "trial_id" in board else 0
    board.insert(position, "model", [_model_label(space, v) for v in values])
    for key in space.searched_keys:
        board[PARAM_PREFIX + key] = [v.get(key) for v in values]
    if space.task == "multitask" and not board.empty:
        seg = segmentation_quality_key(board)
        board.insert(position + 1, "pareto_front", pareto_front(
            _column(board, "balanced_accuracy"), _column(board, seg)))
    return board


def _column(board: pd.DataFrame, key: str) -> pd.Series:
    return pd.to_numeric(board[key], errors="coerce") if key in board else pd.Series(np.nan, index=board.index)


def _searched_values(space: SearchSpace, row: pd.Series) -> dict[str, Any]:
    params = {k.removeprefix("config."): v for k, v in row.items()
              if k.startswith("config.") and not _is_missing(v)}
    try:
        return trial_overrides(space, params)
    except DermError:  # a trial from an older version of the space: show what it has
        return {}


def _model_label(space: SearchSpace, values: dict[str, Any]) -> str:
    from derm.models import encoder_label, model_label

    try:
        return model_label(resolve_trial_config(space, values))
    except DermError:  # e.g. an invalid combination the trial failed on: name it anyway
        model = space.base_config.model
        arch, encoder = values.get("model.arch", model.arch), values.get("model.encoder", model.encoder)
        return f"{arch}/{encoder_label(str(encoder))}"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(digits: str) -> Callable[[Any], str]:
    def write(value: Any) -> str:
        return MISSING if _is_missing(value) else format(float(value), digits)
    return write


def _integer(value: Any) -> str:
    return MISSING if _is_missing(value) else str(int(value))


def _value(value: Any) -> str:
    if _is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, ".3g")
    return str(value)


def _text(value: Any) -> str:
    return MISSING if _is_missing(value) else str(value)


def display_columns(board: pd.DataFrame, space: SearchSpace) -> list[Column]:
    """The shown columns, in order, for this sweep's task, metric and searched keys."""
    metric = space.sweep.metric
    metrics = TASK_METRICS[space.task]
    columns = [Column("rank", "#", _integer), Column("model", "Model/Backbone", _text, numeric=False)]
    if "pareto_front" in board:
        columns.append(Column("pareto_front", "Pareto", lambda v: "*" if v is True or v == 1 else "",
                              numeric=False))
    if metric not in dict(metrics):
        columns.append(Column(metric, metric.replace("_", " ").capitalize(), _number(".3f")))
    columns += [Column(key, header, _number(".3f")) for key, header in metrics]
    columns += [Column(PARAM_PREFIX + key, header, _value, numeric=False)
                for key, header in hyperparameter_headers(space).items()]
    columns += [
        Column("epochs_trained", "Epochs", _integer),
        Column("params_m", "Params (M)", _number(".1f")),
        Column("inference_ms_per_image", "ms/image", _number(".1f")),
        Column("status", "Status", _text, numeric=False),
        Column("trial_id", "Trial", _text, numeric=False),
    ]
    return columns


def hyperparameter_headers(space: SearchSpace) -> dict[str, str]:
    """Searched key -> short header (its last part, or the whole key where two would clash)."""
    keys = [k for k in space.searched_keys if k not in IN_MODEL_LABEL]
    short = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if short.count(s) == 1 else k for k, s in zip(keys, short)}


def display_table(board: pd.DataFrame, space: SearchSpace) -> pd.DataFrame:
    """The annotated board as text cells under the shown headers (for Markdown and HTML)."""
    columns = display_columns(board, space)
    return pd.DataFrame({c.header: [c.format(v) for v in (board[c.key] if c.key in board else [None] * len(board))]
                         for c in columns}, index=range(len(board)))


def caption(space: SearchSpace, board: pd.DataFrame) -> str:
    """What the table shows, for the line under it."""
    sweep = space.sweep
    text = (f"Sweep `{space.name}` ({space.task}), {len(board)} trials, ranked by `{sweep.metric}` "
            f"({sweep.mode}) on the validation split. Each row holds the values of the trial's best epoch "
            f"by `{sweep.metric}`, not its last. Epochs: trained of {space.max_epochs} (ASHA stops weak trials "
            f"early). Early-stopped, running and failed trials come after the completed ones.")
    if "pareto_front" in board:
        seg = dict(SEGMENTATION_METRICS)[segmentation_quality_key(board)]
        text += f" `*`: on the Pareto front of balanced accuracy vs {seg}."
    return text
