"""``python -m derm.evaluate --task taskN TRUTH PREDICTION``: score predictions as ISIC 2018 did.

    python -m derm.evaluate --task task1 TRUTH_DIR PRED_DIR    # lesion masks
    python -m derm.evaluate --task task2 TRUTH_DIR PRED_DIR    # attribute masks
    python -m derm.evaluate --task task3 TRUTH_CSV PRED_CSV    # diagnosis probabilities

prints the metrics as JSON (names as in ``derm.metrics``), computed by ``derm.scoring``
exactly as the official ``isic-challenge-scoring`` package scores them. While it reads the
masks, a progress bar shows on stderr at a terminal (none with ``--quiet``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from derm._cli import run_command
from derm.progress import set_quiet
from derm.scoring import SCORERS
from derm.text_formats import json_value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(SCORERS),
                        help="task1/task2: mask folders; task3: CSV files")
    parser.add_argument("truth", help="ground-truth folder (task1, task2) or CSV (task3)")
    parser.add_argument("prediction", help="prediction folder (task1, task2) or CSV (task3)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; the metrics still print")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: command(args))


def command(args: argparse.Namespace) -> None:
    set_quiet(args.quiet)
    metrics = SCORERS[args.task](args.truth, args.prediction)
    # JSON has no NaN: an undefined metric (e.g. AUROC with one class in the truth) prints null.
    print(json.dumps(json_value(metrics), indent=2))


if __name__ == "__main__":
    sys.exit(main())
