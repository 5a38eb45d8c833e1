"""``python -m derm.leaderboard SWEEP_DIR``: a sweep's ranked trials as tables and plots.

    python -m derm.leaderboard sweeps/multitask/2026-11-23_10-00-00
    python -m derm.leaderboard SWEEP_DIR --format md,html --out results/multitask/ --top 10

Each trial is valued at its best epoch (``derm.sweep.board``); the files are those of
``derm.sweep.export``. Reading a sweep unpickles Ray Tune's experiment state: open only
sweep folders you trust.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from derm._cli import run_command
from derm.errors import ConfigError
from derm.sweep.export import FORMATS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.leaderboard",
                                     description="Export a sweep's ranked trials as tables and plots.")
    parser.add_argument("sweep_dir", help="a sweep folder, sweeps/<name>/<timestamp> (read with pickle: "
                                          "open only sweep folders you trust)")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help=f"comma-separated, any of {', '.join(FORMATS)} (default: all)")
    parser.add_argument("--out", help="output folder (default: results/<sweep name>/<sweep timestamp>/)")
    parser.add_argument("--top", type=int, help="keep only the N best-ranked rows in the tables")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: command(args))


def command(args: argparse.Namespace) -> None:
    from derm.sweep.board import sweep_board
    from derm.sweep.export import export_board, parse_formats

    formats = parse_formats(args.format)
    if args.top is not None and args.top < 1:
        raise ConfigError(f"--top: give a positive number of rows (got {args.top})")
    plan, board = sweep_board(args.sweep_dir)
    out = Path(args.out) if args.out else Path("results") / plan.space.name / plan.sweep_dir.name
    paths = export_board(board, plan.space, out, formats, top=args.top)
    if "md" in formats:
        print((out / "leaderboard.md").read_text())
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
