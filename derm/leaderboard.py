"""The sweep's ranked table: one row per trial, valued at each trial's best epoch.

Ray Tune's ``ResultGrid.get_dataframe()`` gives each trial's *last* result
(ray-project/ray#17923); a trial stopped by ASHA or past its peak would be ranked by a
worse epoch than it reached. Here every trial's reported history is read and its best
epoch (by the sweep metric) is the row. Failed and early-stopped trials come after the
ranked, completed ones, marked in ``status``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

STATUS_ORDER = {"completed": 0, "stopped early": 1, "running": 2, "failed": 3}


def load_trials(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per trial: its reported history, Ray status, error line and config (``config.*``)."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(Path(sweep_dir).resolve()))
    rows = []
    for trial in analysis.trials:
        row = {
            "trial_id": trial.trial_id,
            "_history": analysis.trial_dataframes.get(trial.trial_id),
            "_status": trial.status,
            "error": _last_line(trial.error_file) if trial.error_file else "",
        }
        row.update({f"config.{k}": v for k, v in (trial.config or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _last_line(path: str) -> str:
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        return "error file missing"
    return lines[-1][:300] if lines else ""


def rank_trials(trials: pd.DataFrame, metric: str, mode: str, max_epochs: int | None = None) -> pd.DataFrame:
    """Best epoch per trial, ranked by ``metric``; failed/stopped trials after, marked."""
    rows = []
    for _, trial in trials.iterrows():
        history = trial["_history"]
        row = {"trial_id": trial["trial_id"]}
        if history is not None and not history.empty and metric in history:
            best = history.loc[history[metric].idxmax() if mode == "max" else history[metric].idxmin()]
            row.update({k: best[k] for k in history.columns
                        if not k.startswith(("config/", "date", "hostname", "node_ip", "pid", "time_",
                                             "timestamp", "done", "checkpoint_dir", "should_checkpoint"))})
            row["epochs_trained"] = int(history["epoch"].max())
        else:
            row["epochs_trained"] = 0
        row["status"] = _status(trial["_status"], row["epochs_trained"], max_epochs)
        row["error"] = trial["error"]
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


def _status(ray_status: str, epochs: int, max_epochs: int | None) -> str:
    if ray_status == "ERROR":
        return "failed"
    if ray_status in ("RUNNING", "PENDING", "PAUSED"):
        return "running"
    if max_epochs is not None and epochs < max_epochs:
        return "stopped early"
    return "completed"
