"""Figures of a finished sweep (PNG files drawn with ``derm.figures``; no display needed).

- ``best_so_far.png``: each trial's best-epoch metric in the order the trials started, and
  the best value reached so far (how quickly the search found its best configurations);
- ``metric_vs_<key>.png``: the metric against each searched hyperparameter: a scatter for
  numeric ranges (log x for ``loguniform`` and log ``int`` ranges), a box and the jittered
  points per value for choices;
- ``importance.png``: each searched parameter's share of importance, PED-ANOVA and fANOVA
  side by side (`derm.sweep.importance`);
- ``parallel_coordinates.png``: one line per counted trial through the metric and the
  searched parameters, coloured by the metric (the better, the brighter and the higher
  it is drawn).

The first two read an annotated board (`derm.sweep.table.annotate`), the last two an
`Importance` and the study rebuilt with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.ticker import MaxNLocator, NullFormatter

from derm.figures import new_figure, safe_file_stem, save_figure
from derm.search_space import Distribution, SearchSpace
from derm.search_space.distributions import same_value
from derm.sweep.table import PARAM_PREFIX

if TYPE_CHECKING:
    from derm.sweep.importance import Importance

FIGSIZE = (6, 4)
EVALUATOR_COLOURS = {"PED-ANOVA": "tab:blue", "fANOVA": "tab:orange"}


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


def plot_pareto_front(board: pd.DataFrame, metrics: tuple[str, str], modes: tuple[str, str], path: Path) -> Path:
    """The first two objectives of a multi-objective sweep: every trial, the front joined in order.

    Trials on the front (``pareto_rank`` 1) are drawn larger and joined by a line; the others
    grey. The axes point as the modes do (higher is better for max).
    """
    x, y = (pd.to_numeric(board[m], errors="coerce") if m in board else pd.Series(np.nan, index=board.index)
            for m in metrics)
    on_front = (board["pareto_rank"] == 1) if "pareto_rank" in board else pd.Series(False, index=board.index)
    fig = new_figure(FIGSIZE)
    ax = fig.subplots()
    ax.scatter(x[~on_front], y[~on_front], color="tab:gray", s=18, label="trial (best epoch)")
    front = pd.DataFrame({"x": x[on_front], "y": y[on_front]}).sort_values("x")
    ax.plot(front["x"], front["y"], "o-", color="tab:red", label="Pareto front")
    ax.set_xlabel(f"{metrics[0]} ({modes[0]})")
    ax.set_ylabel(f"{metrics[1]} ({modes[1]})")
    ax.set_title("Pareto front")
    ax.legend(loc="best")
    return save_figure(fig, path, dpi=100)


def plot_metric_vs_parameters(board: pd.DataFrame, space: SearchSpace, out_dir: Path) -> list[Path]:
    """One figure per searched key: the metric against the key's value."""
    metric = space.sweep.primary_metric
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


def plot_importance(importance: Importance, path: Path) -> Path:
    """Horizontal bars: each assessed parameter's share under each evaluator, most important on top."""
    names = importance.parameters
    fig = new_figure((6.5, max(2.6, 0.5 * len(names) + 1.6)))
    ax = fig.subplots()
    height = 0.8 / len(importance.shares)
    for i, (label, shares) in enumerate(importance.shares.items()):
        y = np.arange(len(names)) - 0.4 + height * (i + 0.5)
        values = [shares[name] for name in names]
        bars = ax.barh(y, values, height=height, color=EVALUATOR_COLOURS.get(label), label=label)
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=7)
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, min(1.0, max(max(s.values()) for s in importance.shares.values()) * 1.2 + 0.05))
    ax.set_xlabel("share of importance (each evaluator sums to 1)")
    title = f"What mattered for {importance.metric} ({importance.trials} trials)"
    if importance.left_out:
        title += "\nleft out (not in every trial): " + ", ".join(importance.left_out)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path, dpi=100)


def plot_parallel_coordinates(importance: Importance, path: Path) -> Path:
    """One line per counted trial through the metric, then every searched parameter (assessed
    ones by importance, then the left-out ones); a trial without a parameter has a gap there."""
    trials = importance.study.trials
    values = np.array([t.value for t in trials], dtype=float)
    axes = [importance.metric, *importance.parameters, *importance.left_out]
    distributions = {name: t.distributions[name] for t in trials for name in t.distributions}
    axes = [a for a in axes if a == importance.metric or a in distributions]
    scales = [_metric_scale(values)] + [_parameter_scale(distributions[a]) for a in axes[1:]]
    norm = Normalize(values.min(), values.max())
    cmap = colormaps["viridis" if importance.mode == "max" else "viridis_r"]
    fig = new_figure((max(6.0, 1.3 * len(axes) + 1.5), 4.5))
    ax = fig.subplots()
    x = np.arange(len(axes))
    worst_first = np.argsort(values if importance.mode == "max" else -values, kind="stable")
    for i in worst_first:
        y = [position(trials[i].value) if a == importance.metric else position(trials[i].params.get(a))
             for a, (position, _) in zip(axes, scales)]
        ax.plot(x, y, color=cmap(norm(values[i])), linewidth=1.2, alpha=0.85, marker="o", markersize=2.5)
    for xi, (_, ticks) in zip(x, scales):
        ax.axvline(xi, color="0.35", linewidth=0.8, zorder=0)
        for y, label in ticks:
            ax.text(xi + 0.04, y, label, fontsize=7, va="center", ha="left",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})
    ax.set_xticks(x, [f"{importance.metric} (metric)", *axes[1:]], rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.2, len(axes) - 0.4)
    ax.set_ylim(-0.06, 1.06)
    ax.set_yticks([])
    ax.tick_params(axis="x", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=importance.metric)
    ax.set_title(f"{importance.metric} over the searched parameters ({len(trials)} trials, "
                 f"best brightest)", fontsize=10)
    return save_figure(fig, path, dpi=100)


def _metric_scale(values: np.ndarray):
    low, high = float(values.min()), float(values.max())
    span = high - low or 1.0
    ticks = [((v - low) / span, format(v, ".3g")) for v in (low, (low + high) / 2, high)]
    return (lambda v: (float(v) - low) / span), ticks


def _parameter_scale(distribution):
    """(value -> position in [0, 1] or NaN when absent, [(position, label)]) for an Optuna distribution."""
    if hasattr(distribution, "choices"):
        choices = list(distribution.choices)

        def position(value):
            index = next((i for i, c in enumerate(choices) if same_value(c, value)), None)
            if index is None:
                return np.nan
            return index / (len(choices) - 1) if len(choices) > 1 else 0.5
        return position, [(position(c), str(c)) for c in choices]
    log = distribution.log
    low, high = (np.log10(b) if log else float(b) for b in (distribution.low, distribution.high))
    span = high - low or 1.0

    def position(value):
        if value is None:
            return np.nan
        return ((np.log10(value) if log else float(value)) - low) / span
    middle = 10 ** ((low + high) / 2) if log else (low + high) / 2
    return position, [(position(v), format(v, ".3g")) for v in (distribution.low, middle, distribution.high)]
