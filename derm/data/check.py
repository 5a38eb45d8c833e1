"""``python -m derm.data.check DATASET``: every problem of a dataset folder, by file.

    python -m derm.data.check data/HAM10000 [--layout ham10000] [--no-decode] [--quiet]

prints the images per class and split, then every problem as ``path: problem`` (file
level from ``derm.data.formats``, decode level from ``derm.data.decoding``), and exits 1
when any problem is an error or the folder cannot be read, 2 for a usage mistake. While
it decodes, a progress bar shows on stderr at a terminal (none with ``--quiet``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from derm._cli import RUN_FAILURE, run_command
from derm.data.decoding import check_table
from derm.data.formats import LAYOUTS, load_table
from derm.data.splits import SPLITS, make_split
from derm.labels import CLASSES
from derm.progress import set_quiet


def count_table(table: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """Images per diagnosis (rows, CLASSES order) and split (columns), with totals."""
    diagnosis = table["diagnosis"].fillna("unlabelled").astype(str)
    split_of = table["image_id"].map(split).fillna("none")
    counts = pd.crosstab(diagnosis.values, split_of.values, margins=True, margins_name="total",
                         rownames=["diagnosis"], colnames=["split"])
    rows = [r for r in (*CLASSES, "unlabelled") if r in counts.index]
    rows += [r for r in counts.index if r not in rows]  # "total" last
    columns = [c for c in (*SPLITS, "none") if c in counts.columns] + ["total"]
    return counts.loc[rows, columns]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.data.check", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="dataset folder (HAM10000, its Kaggle copy, or ISIC 2018)")
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS])
    parser.add_argument("--no-decode", dest="decode", action="store_false",
                        help="only file-level checks; do not open images and masks")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; the counts and problems still print")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Check a dataset folder; exit 0 when clean, 1 on error problems or an unreadable folder."""
    args = parse_args(argv)
    return run_command(lambda: command(args))


def command(args: argparse.Namespace) -> int:
    set_quiet(args.quiet)
    with warnings.catch_warnings(record=True) as notes:  # e.g. "no lesion ids": one line, no source line
        warnings.simplefilter("always")
        table = load_table(Path(args.root), layout=args.layout)
    for note in notes:
        print(f"note: {note.message}", file=sys.stderr)
    split = make_split(table)
    problems = check_table(table, decode=args.decode)
    print(f"{args.root}: layout {table.attrs.get('layout')}, {len(table)} images")
    print(count_table(table, split).to_string())
    for problem in problems:
        print(problem if problem.severity == "error" else f"{problem} (warning)")
    errors = sum(p.severity == "error" for p in problems)
    print(f"{errors} errors, {len(problems) - errors} warnings")
    return RUN_FAILURE if errors else 0


if __name__ == "__main__":
    sys.exit(main())
