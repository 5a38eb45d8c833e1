"""``python -m derm.sweep SPACE.yaml [key=value ...]``: a Ray Tune sweep of the training loop.

    python -m derm.sweep search_spaces/unet.yaml --demo
    python -m derm.sweep search_spaces/unet.yaml sweep.num_samples=16 data.root=/data/HAM10000
    python -m derm.sweep --resume sweeps/unet/2026-11-23_10-00-00
    python -m derm.sweep search_spaces/unet.yaml --address 10.0.0.1:6379 --storage /nfs/sweeps

Outputs go to ``sweeps/<name>/<timestamp>/``: the resolved search space, ``split.csv``,
Ray Tune's experiment state and trial folders (checkpoints), ``mlflow.db`` and
``leaderboard.csv``. The search space is validated before Ray (or torch) is imported.
"""

from __future__ import annotations

import argparse
import os
import sys

from derm._cli import run_command
from derm.errors import ConfigError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("space", nargs="?", help="search-space YAML (see docs/search_spaces.md)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sweep.num_samples=8 train.epochs=5")
    parser.add_argument("--demo", action="store_true", help="the embedded synthetic data, CPU-sized settings")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep (reads Ray Tune's "
                                                              "pickled state: resume only sweep folders you trust)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                        help="join an existing Ray cluster (default: $RAY_ADDRESS, else a new local Ray)")
    parser.add_argument("--dashboard-port", type=int, default=None,
                        help="local Ray's dashboard port on 127.0.0.1 (default 8265, or the next free one)")
    parser.add_argument("--storage", help="where trials write checkpoints: a path every node can read (NFS) "
                                          "or a URI (s3://bucket/sweeps, gs://..., file://...)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite in the sweep folder; "
                                             "a server for a multi-node cluster)")
    parser.add_argument("--out", default="sweeps", help="root folder of sweep outputs (default: sweeps)")
    parser.add_argument("--warm-start", action="append", default=[], metavar="SWEEP_DIR",
                        help="start the study with an earlier sweep's fitting trials (repeatable; reads its "
                             "pickled Ray Tune state: only sweep folders you trust)")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: command(args))


def command(args: argparse.Namespace) -> None:
    from derm.search_space import apply_demo, load_search_space
    from derm.sweep.cluster import use_token_auth_if_available
    from derm.sweep.plan import check_data_exists, check_sweep_folder, demo_dataset

    # Ray reads its authentication mode when it is imported (by derm.sweep.driver).
    use_token_auth_if_available(args.address)
    if args.resume:
        from derm.sweep.driver import resume

        resume(args.resume, address=args.address, dashboard_port=args.dashboard_port)
        return
    if not args.space:
        raise ConfigError("give a search-space file, e.g. search_spaces/unet.yaml, or --resume SWEEP_DIR")
    space = load_search_space(args.space, args.overrides)
    demo_root = None
    if args.demo:
        demo_root, layout = demo_dataset(space.task)
        space = apply_demo(space, demo_root, layout)
    check_data_exists(space)
    for folder in args.warm_start:
        check_sweep_folder(folder)
    from derm.sweep.driver import sweep  # imports Ray: only once the space is valid

    sweep(space, out=args.out, storage=args.storage, mlflow_uri=args.mlflow_uri, address=args.address,
          dashboard_port=args.dashboard_port, demo_root=demo_root, warm_start=args.warm_start)


if __name__ == "__main__":
    sys.exit(main())
