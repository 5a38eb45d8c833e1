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
from derm.sweep.pareto import pareto_ranks
from derm.sweep.uncertainty import CI_LOW, CI_HIGH, TIED, method_note

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
    """Which points no other point dominates, both coordinates maximised (`pareto_ranks` 1).

        >>> pareto_front([0.5, 0.7, 0.6, float("nan")], [0.9, 0.8, 0.7, 1.0]).tolist()
        [True, True, False, False]
    """
    return pareto_ranks(np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)]),
                        [True, True]) == 1


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
    if CI_LOW in board and board[CI_LOW].notna().any():
        board["ci95"] = [MISSING if _is_missing(low) else f"[{low:.3f}, {high:.3f}]"
                         for low, high in zip(board[CI_LOW], board[CI_HIGH])]
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
    metric = space.sweep.primary_metric
    metrics = TASK_METRICS[space.task]
    columns = [Column("rank", "#", _integer), Column("model", "Model/Backbone", _text, numeric=False)]
    if "pareto_rank" in board:  # several objectives: the rank that orders the table
        columns.append(Column("pareto_rank", "Pareto rank", _integer))
    if "pareto_front" in board and "pareto_rank" not in board:
        columns.append(Column("pareto_front", "Pareto", lambda v: "*" if v is True or v == 1 else "",
                              numeric=False))
    if "ci95" in board:
        columns.append(Column(TIED, "≈ #1", lambda v: "≈" if v is True or v == 1 else "", numeric=False))
    for objective in space.sweep.metrics:
        if objective not in dict(metrics):
            columns.append(Column(objective, objective.replace("_", " ").capitalize(), _number(".3f")))
    columns += [Column(key, header, _number(".3f")) for key, header in metrics]
    if "ci95" in board:
        columns.append(Column("ci95", f"{metric} 95% CI", _text, numeric=False))
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


# Headers that say what a searched key means; a key without one is shown whole (dotted).
READABLE_HEADERS = {
    "data.image_size": "image size", "data.augment": "augmentation", "data.balanced_sampling": "balanced sampling",
    "model.arch": "architecture", "model.encoder": "encoder", "model.encoder_weights": "encoder weights",
    "model.head": "cls head", "model.head_dropout": "head dropout", "model.cascade": "cascade",
    "model.freeze_encoder": "frozen encoder", "model.encoder_lr_mult": "encoder lr factor",
    "loss.seg": "seg loss", "loss.cls": "cls loss", "loss.seg_weight": "seg loss weight",
    "loss.cls_weight": "cls loss weight", "loss.focal_gamma": "focal gamma", "loss.label_smoothing": "label smoothing",
    "loss.class_weights": "class weights", "loss.attribute_pos_weight": "attribute pos. weight",
    "loss.tversky_alpha": "Tversky alpha", "loss.tversky_beta": "Tversky beta", "loss.task_weighting": "task weighting",
    "optim.name": "optimizer", "optim.lr": "learning rate", "optim.weight_decay": "weight decay",
    "optim.momentum": "momentum", "optim.nesterov": "Nesterov", "optim.scheduler": "lr schedule",
    "optim.warmup_epochs": "warm-up epochs", "optim.min_lr": "min lr", "train.batch_size": "batch size",
    "train.grad_clip": "grad clip", "train.grad_accum_steps": "grad accumulation", "train.epochs": "epochs (max)",
}


def hyperparameter_header(key: str) -> str:
    """What a searched key is called in the tables: its meaning, or the dotted key itself.

    >>> hyperparameter_header("optim.name"), hyperparameter_header("loss.seg"), hyperparameter_header("optim.gamma")
    ('optimizer', 'seg loss', 'optim.gamma')
    """
    return READABLE_HEADERS.get(key, key)


def hyperparameter_headers(space: SearchSpace) -> dict[str, str]:
    """Searched key -> header, for the keys not already in the Model/Backbone column."""
    return {k: hyperparameter_header(k) for k in space.searched_keys if k not in IN_MODEL_LABEL}


def display_table(board: pd.DataFrame, space: SearchSpace) -> pd.DataFrame:
    """The annotated board as text cells under the shown headers (for Markdown and HTML)."""
    columns = display_columns(board, space)
    return pd.DataFrame({c.header: [c.format(v) for v in (board[c.key] if c.key in board else [None] * len(board))]
                         for c in columns}, index=range(len(board)))


def caption(space: SearchSpace, board: pd.DataFrame) -> str:
    """What the table shows, for the line under it."""
    sweep = space.sweep
    if sweep.multi_objective:
        objectives = " and ".join(f"`{m}` ({mode})" for m, mode in zip(sweep.metrics, sweep.modes))
        order = (f"ranked by Pareto rank over {objectives} (1: the front, trials no other trial beats on every "
                 f"objective), then by `{sweep.primary_metric}`,")
    else:
        order = f"ranked by `{sweep.metric}` ({sweep.mode})"
    text = (f"Sweep `{space.name}` ({space.task}), {len(board)} trials, {order} on the validation split. Each "
            f"row holds the values of the trial's best epoch by `{sweep.primary_metric}`, not its last. Epochs: "
            f"trained of {space.max_epochs} (ASHA stops weak trials early). Early-stopped, running and failed "
            f"trials come after the completed ones.")
    if "pareto_front" in board and "pareto_rank" not in board:
        seg = dict(SEGMENTATION_METRICS)[segmentation_quality_key(board)]
        text += f" `*`: on the Pareto front of balanced accuracy vs {seg}."
    note = method_note(space, board)
    return f"{text} {note}" if note else text
