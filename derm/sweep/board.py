"""Where the leaderboard is built: one row per trial, valued at each trial's best epoch.

Ray Tune's ``ResultGrid.get_dataframe()`` gives each trial's *last* result
(ray-project/ray#17923); a trial stopped by ASHA or past its peak would be ranked by a
worse epoch than it reached. Here every trial's reported history is read and its best
epoch (by the sweep metric) is the row. Failed and early-stopped trials come after the
ranked, completed ones, marked in ``status``. ``derm.sweep.table`` turns the board into
the published table's columns, ``derm.sweep.export`` writes it.

Reading a sweep unpickles Ray Tune's experiment state: open only sweep folders you trust.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from derm.errors import DermError
from derm.search_space import SweepSettings
from derm.search_space.trial_outcomes import BATCH_HALVED, OUT_OF_MEMORY, OUT_OF_MEMORY_ERROR
from derm.sweep.pareto import pareto_ranks
from derm.sweep.plan import SweepPlan, load_plan

HALVED = " (batch halved)"  # a trial that ran out of memory and went on at half the batch (derm.sweep.trainable)
STATUS_ORDER = {"completed": 0, f"completed{HALVED}": 0, "stopped early": 1, f"stopped early{HALVED}": 1,
                "running": 2, f"running{HALVED}": 2, "out of memory": 3, "failed": 3}
FAILED_STATUSES = ("failed", "out of memory")


def load_trials(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per trial of the Ray experiment at ``sweep_dir`` (a folder or a storage URI).

    Columns: ``trial_id``, ``_history`` (its reported epochs), ``_status`` (Ray's), ``error``
    (the last line of its error file), ``started`` (Unix time) and ``config.<parameter>``.
    """
    from ray.tune import ExperimentAnalysis

    path = str(sweep_dir) if "://" in str(sweep_dir) else str(Path(sweep_dir).resolve())
    analysis = ExperimentAnalysis(path)
    rows = []
    for trial in analysis.trials:
        row = {
            "trial_id": trial.trial_id,
            "_history": analysis.trial_dataframes.get(trial.trial_id),
            "_status": trial.status,
            "error": _error_line(trial),
            "started": getattr(trial.run_metadata, "start_time", None),
        }
        row.update({f"config.{k}": v for k, v in (trial.config or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _error_line(trial) -> str:
    """The last line of the trial's error file, read through the experiment's storage
    filesystem (a URI works too). ``Trial.error_file`` needs a running Ray session, which an
    export after the sweep has not."""
    name = trial.run_metadata.error_filename
    if not name:
        return ""
    try:
        with trial.storage.storage_filesystem.open_input_stream(f"{trial.path}/{name}") as stream:
            text = stream.read().decode(errors="replace")
    except OSError:
        return "error file missing"
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def rank_trials(trials: pd.DataFrame, metric: str, mode: str, max_epochs: int | None = None) -> pd.DataFrame:
    """Best epoch per trial, ranked by ``metric``; failed/stopped trials after, marked."""
    rows = []
    for _, trial in trials.iterrows():
        history = trial["_history"]
        row = {"trial_id": trial["trial_id"]}
        has_metric = isinstance(history, pd.DataFrame) and metric in history
        values = history[metric].dropna() if has_metric else pd.Series(dtype=float)
        if has_metric and OUT_OF_MEMORY in history:  # its out-of-memory result is a status, not an epoch
            values = values[history.loc[values.index, OUT_OF_MEMORY] != 1]
        if not values.empty:
            best = history.loc[values.idxmax() if mode == "max" else values.idxmin()]
            row.update({k: best[k] for k in history.columns
                        if not k.startswith(("config/", "date", "hostname", "node_ip", "pid", "time_",
                                             "timestamp", "done", "checkpoint_dir", "should_checkpoint"))})
            row["epochs_trained"] = int(history["epoch"].max())
        else:
            row["epochs_trained"] = 0
        row["status"] = _status(trial["_status"], row["epochs_trained"], max_epochs, history)
        row["error"] = _out_of_memory_error(history) or trial["error"]
        if "started" in trial:
            row["started"] = trial["started"]
        row.update({k: v for k, v in trial.items() if k.startswith("config.")})
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    board["_order"] = board["status"].map(STATUS_ORDER).fillna(9)
    ascending = mode != "max"
    if metric not in board:
        board[metric] = float("nan")
    board = board.sort_values(["_order", metric], ascending=[True, ascending], na_position="last")
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.drop(columns="_order").reset_index(drop=True)


def _status(ray_status: str, epochs: int, max_epochs: int | None, history: pd.DataFrame | None = None) -> str:
    """The trial's status from Ray's and its reported history (the markers of derm.sweep.trainable).

    >>> history = pd.DataFrame({"epoch": [1, 2], "batch_halved": [float("nan"), 1]})
    >>> _status("TERMINATED", 2, 2, history), _status("TERMINATED", 2, 9, history), _status("ERROR", 2, 2, history)
    ('completed (batch halved)', 'stopped early (batch halved)', 'failed')
    >>> _status("TERMINATED", 0, 2, pd.DataFrame({"epoch": [0], "out_of_memory": [1]}))
    'out of memory'
    """
    if ray_status == "ERROR":
        return "failed"
    if _flagged(history, OUT_OF_MEMORY):
        return "out of memory"
    if ray_status in ("RUNNING", "PENDING", "PAUSED"):
        status = "running"
    elif max_epochs is not None and epochs < max_epochs:
        status = "stopped early"
    else:
        status = "completed"
    return status + HALVED if _flagged(history, BATCH_HALVED) else status


def _flagged(history, column: str) -> bool:
    return isinstance(history, pd.DataFrame) and column in history and bool((history[column] == 1).any())


def _out_of_memory_error(history) -> str:
    """The error text of a trial that ran out of memory ("" for any other)."""
    if not _flagged(history, OUT_OF_MEMORY) or OUT_OF_MEMORY_ERROR not in history:
        return ""
    errors = history[OUT_OF_MEMORY_ERROR].dropna()
    return str(errors.iloc[-1])[:300] if not errors.empty else "out of memory"


def sweep_board(sweep_dir: str | Path):
    """(plan, ranked board) of the sweep folder ``sweep_dir``; DermError when it is none or has no trials."""
    plan = load_plan(sweep_dir)
    try:
        trials = load_trials(plan.experiment_path)
    except (ValueError, FileNotFoundError, OSError) as err:  # Ray: no experiment state there yet
        raise DermError(f"{sweep_dir}: no trials to rank: no Ray Tune experiment state at "
                        f"{plan.experiment_path}; has the sweep started?") from err
    if trials.empty:
        raise DermError(f"{sweep_dir}: no trials to rank; has the sweep started?")
    return plan, ranked_board(plan, trials)


def ranked_board(plan: SweepPlan, trials: pd.DataFrame) -> pd.DataFrame:
    """The sweep's trials ranked at their best epochs, with intervals and the comparison with
    rank 1 (``derm.sweep.uncertainty``)."""
    from derm.sweep.uncertainty import add_uncertainty

    space = plan.space
    board = rank_sweep_trials(trials, space.sweep, space.max_epochs)
    return add_uncertainty(board, space, plan.experiment_path)


def rank_sweep_trials(trials: pd.DataFrame, sweep: SweepSettings, max_epochs: int | None) -> pd.DataFrame:
    """`rank_trials` by the sweep's metric; with several metrics, each trial at its best epoch by
    the first, ranked by Pareto rank over all of them (``pareto_rank``, 1: the front), then by
    the first. Early-stopped, running and failed trials come after the others, as always."""
    board = rank_trials(trials, sweep.primary_metric, sweep.primary_mode, max_epochs)
    if not sweep.multi_objective or board.empty:
        return board
    values = pd.DataFrame({m: pd.to_numeric(board[m], errors="coerce") if m in board else float("nan")
                           for m in sweep.metrics})
    board["pareto_rank"] = pareto_ranks(values.to_numpy(), [mode == "max" for mode in sweep.modes])
    board["_order"] = board["status"].map(lambda status: STATUS_ORDER.get(status, 9))
    board = board.sort_values(["_order", "pareto_rank", sweep.primary_metric],
                              ascending=[True, True, sweep.primary_mode != "max"], na_position="last")
    board["rank"] = range(1, len(board) + 1)
    return board.drop(columns="_order").reset_index(drop=True)


def finish_sweep(plan: SweepPlan) -> pd.DataFrame:
    """Write and print the leaderboard, attach it to the MLflow parent run; returns the board."""
    from derm.sweep.export import export_board
    from derm.tracking import RunLogger

    board = ranked_board(plan, load_trials(plan.experiment_path))
    path = plan.sweep_dir / "leaderboard.csv"
    board.to_csv(path, index=False)
    shown = ["rank", "trial_id", "status", "epochs_trained", "pareto_rank", *plan.space.sweep.metrics, "ci95_low",
             "ci95_high",
             "tied_with_rank1", "balanced_accuracy", "dice", "jaccard_micro",
             *(f"config.{k}" for k in plan.space.searched_keys)]
    from derm.sweep.table import hyperparameter_header

    console = board[[c for c in dict.fromkeys(shown) if c in board]]
    console = console.rename(columns={c: hyperparameter_header(c.removeprefix("config.")) for c in console
                                      if c.startswith("config.")})
    print(console.to_string(index=False, max_colwidth=30))
    (markdown,) = export_board(board, plan.space, plan.sweep_dir, formats=("md",), plots=False)
    print(f"leaderboard: {path} and {markdown.name}; all formats and plots: python -m derm.leaderboard {plan.sweep_dir}")
    if plan.parent_run_id:
        parent = RunLogger(plan.tracking_uri, "", "", run_id=plan.parent_run_id)
        parent.log_artifact(path)
        parent.log_artifact(markdown)
        parent.finish("FINISHED" if trials_trained(board) else "FAILED")
    return board


def trials_trained(board) -> int:
    """How many trials completed at least one epoch."""
    return int((board["epochs_trained"] > 0).sum()) if not board.empty else 0


def failure_summary(board, sweep_dir: Path) -> str | None:
    """One line on the failed trials (out of memory included): how many, their errors (the most
    common first), where the tracebacks are; None when no trial failed."""
    if board.empty:
        return None
    failed = board[board["status"].isin(FAILED_STATUSES)]
    if failed.empty:
        return None
    errors = failed["error"].fillna("").replace("", "no error message").value_counts()
    listed = "; ".join(f"{count}x {error}" for error, count in errors.items())
    return (f"{len(failed)} of {len(board)} trials failed: {listed} "
            f"(tracebacks: {sweep_dir}/trial_*/error.txt)")
