"""Figures of a finished sweep (PNG files drawn with ``derm.figures``; no display needed).

- ``best_so_far.png``: each trial's best-epoch metric in the order the trials started, and
  the best value reached so far (how quickly the search found its best configurations);
- ``metric_vs_<key>.png``: the metric against each searched hyperparameter: a scatter for
  numeric ranges (log x for ``loguniform`` and log ``int`` ranges), a box and the jittered
  points per value for choices.

Both read an annotated board (`derm.sweep.table.annotate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator, NullFormatter

from derm.figures import new_figure, safe_file_stem, save_figure
from derm.search_space import Distribution, SearchSpace
from derm.sweep.table import PARAM_PREFIX

FIGSIZE = (6, 4)


def start_order(board: pd.DataFrame) -> pd.DataFrame:
    """The board's rows in the order the trials started (trials with no start time last)."""
    if "started" not in board:
        return board
    started = pd.to_numeric(board["started"], errors="coerce")
    return board.iloc[np.argsort(started.fillna(np.inf).to_numpy(), kind="stable")]


def best_so_far(values, mode: str) -> np.ndarray:
    """The running best of ``values`` (NaN, e.g. a failed trial, keeps the best before it).

        >>> best_so_far([0.2, float("nan"), 0.5, 0.3], "max").tolist()
        [0.2, 0.2, 0.5, 0.5]
    """
    series = pd.Series(values, dtype=float)
    best = series.cummax() if mode == "max" else series.cummin()
    return best.ffill().to_numpy()


def plot_best_so_far(board: pd.DataFrame, metric: str, mode: str, path: Path) -> Path:
    """Each trial's metric (dots) and the best so far (steps), trials in start order."""
    ordered = start_order(board)
    values = pd.to_numeric(ordered[metric], errors="coerce") if metric in ordered else pd.Series(
        np.nan, index=ordered.index)
    number = np.arange(1, len(ordered) + 1)
    fig = new_figure(FIGSIZE)
    ax = fig.subplots()
    ax.scatter(number, values, color="tab:gray", s=18, label="trial (best epoch)")
    ax.step(number, best_so_far(values, mode), where="post", color="tab:blue", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: best so far ({mode})")
    ax.legend(loc="best")
    return save_figure(fig, path, dpi=100)


def plot_metric_vs_parameters(board: pd.DataFrame, space: SearchSpace, out_dir: Path) -> list[Path]:
    """One figure per searched key: the metric against the key's value."""
    metric = space.sweep.metric
    paths = []
    for parameter in space.parameters:
        column = PARAM_PREFIX + parameter.key
        if column not in board or metric not in board:
            continue
        data = pd.DataFrame({"value": board[column],
                             "metric": pd.to_numeric(board[metric], errors="coerce")}).dropna()
        fig = new_figure(FIGSIZE)
        ax = fig.subplots()
        if _is_choice(parameter):
            _strip_and_box(ax, data, parameter.possible_values() or ())
        else:
            ax.scatter(data["value"].astype(float), data["metric"], color="tab:blue", s=20)
            if _is_log(parameter):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
        ax.set_xlabel(parameter.key)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs {parameter.key}")
        paths.append(save_figure(fig, out_dir / f"metric_vs_{safe_file_stem(parameter.key, 'parameter')}.png", dpi=100))
    return paths


def _strip_and_box(ax, data: pd.DataFrame, choices: tuple) -> None:
    labels = [str(c) for c in choices] or sorted(data["value"].astype(str).unique())
    labels += sorted(set(data["value"].astype(str)) - set(labels))
    groups = [data.loc[data["value"].astype(str) == label, "metric"].to_numpy() for label in labels]
    positions = np.arange(1, len(labels) + 1)
    shown = [i for i, g in enumerate(groups) if len(g)]
    if shown:
        ax.boxplot([groups[i] for i in shown], positions=positions[shown], widths=0.5, showfliers=False)
    jitter = np.random.default_rng(0)
    for position, group in zip(positions, groups):
        ax.scatter(position + jitter.uniform(-0.12, 0.12, len(group)), group, color="tab:blue", s=18, zorder=3)
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=20 if len(labels) > 3 else 0)


def _specs(parameter) -> list:
    return [spec for _, spec in parameter.specs()]


def _is_choice(parameter) -> bool:
    return all(not isinstance(s, Distribution) or s.kind == "choice" for s in _specs(parameter))


def _is_log(parameter) -> bool:
    return any(isinstance(s, Distribution) and (s.kind == "loguniform" or s.log) for s in _specs(parameter))
