"""``python -m derm.retrain_best SWEEP_DIR``: retrain the sweep's best configuration, test it once.

    python -m derm.retrain_best sweeps/unet/2026-11-23_10-00-00                   # rank 1, 3 seeds
    python -m derm.retrain_best sweeps/unet/2026-11-23_10-00-00 --rank 2 --seeds 5 --epochs 20
    python -m derm.retrain_best sweeps/unet/2026-11-23_10-00-00 --top 3 --ensemble
    python -m derm.retrain_best sweeps/unet/2026-11-23_10-00-00 --folds 5                # 5-fold CV

With several seeds (``train.seed + i``) it reports each seed's test metrics, their mean and
standard deviation over seeds, and a 95% percentile bootstrap interval of that same mean
over resampled test images (resampled within each true class where the task has a
diagnosis head). ``--top K --ensemble`` retrains the K best configurations, averages their
probabilities and gives the ensemble's metrics with their intervals. ``--folds K``
cross-validates the trial over train+val (lesion-grouped, diagnosis-stratified folds): the
out-of-fold score with its interval, each fold's score, and the fold ensemble tested once.
Training epochs and
the test evaluation draw progress bars on stderr at a terminal (none with ``--quiet``).
The library is ``derm.retrain`` (``retrain_best``); outputs are listed in
``derm.retrain.outputs``.
"""

from __future__ import annotations

import argparse
import sys

from derm._cli import run_command
from derm.errors import ConfigError
from derm.progress import set_quiet


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.retrain_best", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a sweep folder, sweeps/<name>/<timestamp>")
    parser.add_argument("--rank", type=int, default=1, help="which leaderboard rank to retrain (default 1)")
    parser.add_argument("--seeds", type=int, help="seeds per configuration, train.seed + i "
                                                  "(default 3; 1 per configuration with --ensemble)")
    parser.add_argument("--epochs", type=int, help="epochs to train (default: the trial's best epoch in the sweep)")
    parser.add_argument("--out", help="output folder (default results/<sweep name>/<timestamp>/best, "
                                      "or .../ensemble-top<K>)")
    parser.add_argument("--top", type=int, help="with --ensemble: retrain the K best configurations")
    parser.add_argument("--ensemble", action="store_true", help="average the --top K models' probabilities")
    parser.add_argument("--ensemble-weights", choices=("caruana", "equal"), default="caruana",
                        help="with --ensemble: caruana (greedy selection with replacement on the sweep's validation "
                             "predictions; a configuration it never picks gets weight 0 and is not retrained) or "
                             "equal (the plain mean of all K); default caruana")
    parser.add_argument("--folds", type=int, help="cross-validate the --rank trial: K lesion-grouped, diagnosis-"
                                                  "stratified folds over train+val, one model per fold, out-of-fold "
                                                  "score, fold ensemble tested once (model.pt loads as an ensemble)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples of the test images for the 95%% intervals (0: none; default 1000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap draws (default 0)")
    parser.add_argument("--samples", type=int, default=8, help="test images drawn in overlays/ (default 8)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to the sweep's MLflow store")
    parser.add_argument("--quiet", action="store_true", help="no progress bars; the metrics and log lines still print")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: command(args))


def command(args: argparse.Namespace) -> None:
    from derm.retrain import retrain_best
    from derm.retrain.report import format_summary

    set_quiet(args.quiet)
    if args.top is not None and args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    result = retrain_best(args.sweep_dir, rank=args.rank, top=args.top, ensemble=args.ensemble,
                          seeds=args.seeds, epochs=args.epochs, out=args.out, bootstrap=args.bootstrap,
                          bootstrap_seed=args.bootstrap_seed, samples=args.samples, use_mlflow=not args.no_mlflow,
                          folds=args.folds, ensemble_weights=args.ensemble_weights)
    print(format_summary(result.summary))
    print(f"results: {result.out}")


if __name__ == "__main__":
    sys.exit(main())
