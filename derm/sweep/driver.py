"""A sweep from start to end, as ``python -m derm.sweep`` runs it (the Ray driver's side).

``sweep(space, ...)`` starts (or joins) Ray, fits the trials' resources to it, makes the
sweep folder, runs the Tuner and writes the leaderboard; ``resume(sweep_dir, ...)`` does
the same for an interrupted sweep. Both return the sweep folder, and raise
``NoTrialTrained`` when no trial completed an epoch. This module imports Ray.
"""

from __future__ import annotations

from pathlib import Path

from derm.config import absolute_tracking_uri
from derm.errors import DermError
from derm.search_space import Resources, SearchSpace
from derm.sweep.board import failure_summary, finish_sweep, trials_trained
from derm.sweep.cluster import check_tracking_reachable, fit_resources, start_ray
from derm.sweep.plan import SweepPlan, load_plan, plan_sweep
from derm.sweep.tuner import run_sweep
from derm.sweep.warm_start import collect as collect_warm_start
from derm.tracking import ui_command


class NoTrialTrained(DermError):
    """Every trial failed before its first epoch ended: the sweep produced nothing to rank."""


def sweep(space: SearchSpace, *, out: str | Path = "sweeps", storage: str | None = None,
          mlflow_uri: str | None = None, address: str | None = None, dashboard_port: int | None = None,
          demo_root: str | None = None, warm_start: list[str | Path] = ()) -> Path:
    """Run a new sweep of ``space``; returns its folder (``<out or storage>/<name>/<timestamp>``).

    ``warm_start``: earlier sweep folders whose fitting trials the study starts with.
    """
    warm = collect_warm_start(space, list(warm_start)) if warm_start else None
    for note in warm.notes if warm else ():
        print(note, flush=True)
    cluster = start_ray(address, dashboard_port)
    resources = announce_resources(space, cluster)
    check_tracking_reachable(absolute_tracking_uri(mlflow_uri) if mlflow_uri else "sqlite:///", cluster)
    plan = plan_sweep(space, Path(out), storage, mlflow_uri, demo_root, warm.sources if warm else None)
    return execute(plan, resources, warm_trials=warm.trials if warm else None)


def resume(sweep_dir: str | Path, *, address: str | None = None, dashboard_port: int | None = None) -> Path:
    """Continue an interrupted sweep in its folder: unfinished trials resume from their checkpoints."""
    plan = load_plan(sweep_dir)
    cluster = start_ray(address, dashboard_port)
    resources = announce_resources(plan.space, cluster)
    check_tracking_reachable(plan.tracking_uri, cluster)
    return execute(plan, resources, resume=True)


def announce_resources(space: SearchSpace, cluster) -> Resources:
    resources, notes = fit_resources(space.sweep, cluster)
    for note in notes:
        print(note, flush=True)
    return resources


def execute(plan: SweepPlan, resources: Resources, *, resume: bool = False, warm_trials: list | None = None) -> Path:
    """Run the trials and write the leaderboard; NoTrialTrained when none trained an epoch."""
    print(f"sweep folder: {plan.sweep_dir}")
    print(f"MLflow: {ui_command(plan.tracking_uri)}", flush=True)
    run_sweep(plan, resources, resume=resume, warm_trials=warm_trials)
    board = finish_sweep(plan)
    summary = failure_summary(board, plan.sweep_dir)
    if not trials_trained(board):
        raise NoTrialTrained(f"no trial completed an epoch; {summary or 'no trial ran'}")
    if summary:
        print(f"warning: {summary}", flush=True)
    return plan.sweep_dir
