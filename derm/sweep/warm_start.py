"""Warm start: earlier sweeps' trials told to a new sweep's Optuna study before it suggests.

``python -m derm.sweep SPACE.yaml --warm-start SWEEP_DIR`` adds each earlier trial that fits
the new space to the study as what it was: ``COMPLETE`` (it trained ``train.epochs``) with
its last score, as the searcher tells its own trials, or ``PRUNED`` (ASHA stopped it, or it
did not fit in memory) with its per-epoch scores; TPE starts informed instead of with
random trials. An earlier sweep whose fixed settings differ (task, image size, epochs,
dataset, metric or mode) adds nothing; a trial with a value outside the new space (a
changed range, a removed choice) or a parameter the new space does not search is skipped.
Failed trials add nothing (Optuna's TPE ignores them). The counts are said in one line
per earlier sweep. The new sweep's own leaderboard shows only its own trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from derm.errors import ConfigError
from derm.search_space import Distribution, SearchSpace
from derm.sweep.board import load_trials, rank_sweep_trials
from derm.sweep.plan import load_plan

WARM_START_ATTR = "derm.warm_start"  # user attribute of an added trial: "<sweep folder>#<trial id>"


@dataclass
class WarmStart:
    """The trials to add (Optuna ``FrozenTrial``s) and, per earlier sweep, what was added or skipped."""

    trials: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)  # for sweep.json


def searcher_distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna parameter name -> distribution, as the searcher suggests them (cases named apart)."""
    from derm.sweep.importance import optuna_distribution

    return {name: optuna_distribution(spec) for parameter in space.parameters
            for name, spec in parameter.specs() if isinstance(spec, Distribution)}


def fixed_differences(new: SearchSpace, old: SearchSpace) -> list[str]:
    """The fixed settings that make an earlier sweep's scores incomparable with the new sweep's."""
    def settings(space: SearchSpace) -> dict[str, Any]:
        cfg = space.base_config
        return {"task": space.task, "data.root": str(Path(cfg.data.root).resolve()), "data.layout": cfg.data.layout,
                "data.image_size": cfg.data.image_size, "train.epochs": space.max_epochs,
                "sweep.metric": list(space.sweep.metrics), "sweep.mode": list(space.sweep.modes)}

    now, then = settings(new), settings(old)
    return [f"{key} {then[key]} -> {now[key]}" for key in now if now[key] != then[key]]


def collect(space: SearchSpace, sweep_dirs: list[str | Path]) -> WarmStart:
    """The earlier sweeps' trials that fit ``space``, as Optuna trials, and what was skipped."""
    warm = WarmStart()
    distributions = searcher_distributions(space)
    for sweep_dir in sweep_dirs:
        earlier = load_plan(sweep_dir)
        differences = fixed_differences(space, earlier.space)
        if differences:
            warm.notes.append(f"warm start: {sweep_dir}: nothing added, its fixed settings differ "
                              f"({'; '.join(differences)})")
            warm.sources.append({"sweep": str(earlier.sweep_dir), "added": 0, "skipped": "fixed settings"})
            continue
        try:
            trials = load_trials(earlier.experiment_path)
        except (ValueError, FileNotFoundError, OSError) as err:
            raise ConfigError(f"--warm-start {sweep_dir}: no trials there ({err})") from None
        board = rank_sweep_trials(trials, space.sweep, space.max_epochs)
        histories = dict(zip(trials["trial_id"], trials["_history"]))
        added, skipped = 0, {}
        for _, row in board.iterrows():
            trial, why = frozen_trial(row, histories.get(row["trial_id"]), distributions, space,
                                      f"{earlier.sweep_dir}#{row['trial_id']}")
            if trial is None:
                skipped[why] = skipped.get(why, 0) + 1
            else:
                warm.trials.append(trial)
                added += 1
        detail = "; ".join(f"{count} {why}" for why, count in skipped.items())
        warm.notes.append(f"warm start: {added} of {len(board)} trials of {sweep_dir} added"
                          + (f"; skipped: {detail}" if detail else ""))
        warm.sources.append({"sweep": str(earlier.sweep_dir), "added": added, "skipped": sum(skipped.values())})
    return warm


def frozen_trial(row: pd.Series, history: pd.DataFrame | None, distributions: dict[str, Any],
                 space: SearchSpace, source: str):
    """(Optuna trial, None) for a board row that fits the new space, else (None, why it does not)."""
    import optuna
    from optuna.trial import TrialState

    status = str(row["status"])
    if status.startswith(("failed", "running")):
        return None, status.split(" (")[0]
    params = {}
    for column, value in row.items():
        name = str(column).removeprefix("config.")
        if not str(column).startswith("config.") or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if name not in distributions:
            return None, f"with {name}, which this space does not search"
        value = value.item() if hasattr(value, "item") else value
        distribution = distributions[name]
        try:
            inside = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            return None, f"with {name} outside this space"
        params[name] = value
    attrs = {WARM_START_ATTR: source}
    distributions = {k: distributions[k] for k in params}
    if space.sweep.multi_objective:
        # Optuna's multi-objective studies keep no intermediate values: completed trials only.
        last = history.iloc[-1] if history is not None and len(history) else {}
        values = [last.get(m) for m in space.sweep.metrics]
        if not status.startswith("completed") or any(v is None or not math.isfinite(float(v)) for v in values):
            return None, "not completed (several objectives keep completed trials only)"
        return optuna.trial.create_trial(params=params, distributions=distributions, values=[float(v) for v in values],
                                         user_attrs=attrs, state=TrialState.COMPLETE), None
    metric = space.sweep.metric
    scores = history[["training_iteration", metric]].dropna() if history is not None and metric in history else None
    intermediate = {int(step): float(value) for step, value in scores.to_numpy()
                    if math.isfinite(value)} if scores is not None else {}
    if status.startswith("completed") and intermediate:
        last = intermediate[max(intermediate)]
        return optuna.trial.create_trial(params=params, distributions=distributions, value=last,
                                         intermediate_values=intermediate, user_attrs=attrs,
                                         state=TrialState.COMPLETE), None
    # Stopped early (ranked by the epoch it reached), or out of memory (no values: ranked last).
    return optuna.trial.create_trial(params=params, distributions=distributions, intermediate_values=intermediate,
                                     user_attrs=attrs, state=TrialState.PRUNED), None
