"""The sweep's ranked table: one row per trial, valued at each trial's best epoch.

    python -m derm.leaderboard sweeps/multitask/2026-11-23_10-00-00
    python -m derm.leaderboard SWEEP_DIR --format md,html --out results/multitask/ --top 10

Ray Tune's ``ResultGrid.get_dataframe()`` gives each trial's *last* result
(ray-project/ray#17923); a trial stopped by ASHA or past its peak would be ranked by a
worse epoch than it reached. Here every trial's reported history is read and its best
epoch (by the sweep metric) is the row. Failed and early-stopped trials come after the
ranked, completed ones, marked in ``status``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from derm.errors import DermError

STATUS_ORDER = {"completed": 0, "stopped early": 1, "running": 2, "failed": 3}


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
        if not values.empty:
            best = history.loc[values.idxmax() if mode == "max" else values.idxmin()]
            row.update({k: best[k] for k in history.columns
                        if not k.startswith(("config/", "date", "hostname", "node_ip", "pid", "time_",
                                             "timestamp", "done", "checkpoint_dir", "should_checkpoint"))})
            row["epochs_trained"] = int(history["epoch"].max())
        else:
            row["epochs_trained"] = 0
        row["status"] = _status(trial["_status"], row["epochs_trained"], max_epochs)
        row["error"] = trial["error"]
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


def _status(ray_status: str, epochs: int, max_epochs: int | None) -> str:
    if ray_status == "ERROR":
        return "failed"
    if ray_status in ("RUNNING", "PENDING", "PAUSED"):
        return "running"
    if max_epochs is not None and epochs < max_epochs:
        return "stopped early"
    return "completed"


def sweep_board(sweep_dir: Path):
    """(plan, ranked board) of the sweep folder ``sweep_dir``; DermError when it is none or has no trials."""
    from derm.sweep import SWEEP_FILE, load_plan

    if not (sweep_dir / SWEEP_FILE).is_file():
        raise DermError(f"{sweep_dir} is not a derm sweep folder (no {SWEEP_FILE}); give a folder "
                        f"written by python -m derm.sweep, e.g. sweeps/<name>/<timestamp>")
    plan = load_plan(sweep_dir)
    try:
        trials = load_trials(plan.experiment_path)
    except (ValueError, FileNotFoundError, OSError) as err:  # Ray: no experiment state there yet
        raise DermError(f"{sweep_dir}: no trials to rank: no Ray Tune experiment state at "
                        f"{plan.experiment_path}; has the sweep started?") from err
    if trials.empty:
        raise DermError(f"{sweep_dir}: no trials to rank; has the sweep started?")
    board = rank_trials(trials, plan.space.sweep.metric, plan.space.sweep.mode, plan.space.max_epochs)
    return plan, board


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from derm.leaderboard_export import FORMATS

    parser = argparse.ArgumentParser(prog="python -m derm.leaderboard",
                                     description="Export a sweep's ranked trials as tables and plots.")
    parser.add_argument("sweep_dir", help="a sweep folder, sweeps/<name>/<timestamp>")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help=f"comma-separated, any of {', '.join(FORMATS)} (default: all)")
    parser.add_argument("--out", help="output folder (default: results/<sweep name>/<sweep timestamp>/)")
    parser.add_argument("--top", type=int, help="keep only the N best-ranked rows in the tables")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from derm.leaderboard_export import export_board, parse_formats

    args = parse_args(argv)
    try:
        formats = parse_formats(args.format)
        if args.top is not None and args.top < 1:
            raise DermError(f"--top: give a positive number of rows (got {args.top})")
        plan, board = sweep_board(Path(args.sweep_dir))
        out = Path(args.out) if args.out else Path("results") / plan.space.name / plan.sweep_dir.name
        paths = export_board(board, plan.space, out, formats, top=args.top)
    except DermError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "md" in formats:
        print(Path(out / "leaderboard.md").read_text())
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
