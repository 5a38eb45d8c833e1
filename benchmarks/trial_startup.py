"""Question 3: seconds of overhead per trial of a sweep run through derm's own sweep machinery.

A trivial trainable (reports a score each epoch, trains nothing) runs as a 20-trial sweep
of search_spaces/unet.yaml --demo (TPE, ASHA, 2 concurrent trials of 1 CPU) through
`derm.sweep.plan.plan_sweep`, `derm.sweep.cluster.start_ray` and `derm.sweep.tuner.build_tuner`, first as Ray Tune does by default
(a fresh actor per trial) and then with derm's setting (actors reused), interleaved.
Ray is started once beforehand, so its start-up (about 4 s) is not in the per-trial figure.

    python benchmarks/trial_startup.py            # 20 trials, 3 repetitions, ~5 minutes
    python benchmarks/trial_startup.py --quick    # 8 trials, 1 repetition

Last line: per-trial seconds with reuse, without, and their ratio. Target: <= 0.5 s.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import interleaved, machine_line, median  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def trivial_trial(config: dict) -> None:
    """Reports like derm's trainable (score and epoch every epoch), does no work."""
    from ray import tune

    score = random.Random(str(sorted(config.items()))).random()
    for epoch in range(1, 5):
        tune.report({"score": score * epoch / 4, "epoch": epoch})


def sweep_seconds(space, out: Path, demo_root: str, reuse_actors: bool) -> float:
    """Wall seconds of tuner.fit() for one sweep of the trivial trainable."""
    from derm.sweep.plan import plan_sweep
    from derm.sweep.tuner import build_tuner

    plan = plan_sweep(space, out / ("reuse" if reuse_actors else "fresh"), None, None, demo_root)
    tuner = build_tuner(plan, trivial_trial, reuse_actors=reuse_actors)
    started = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - started
    errors = [r.error for r in results if r.error]
    if errors or len(results) != space.sweep.num_samples:
        raise RuntimeError(f"the benchmark sweep did not run cleanly: {len(results)} trials, errors {errors[:2]}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 trials, 1 repetition")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.repeats = 8, 1

    from derm.search_space import apply_demo, load_search_space
    from derm.sweep.cluster import start_ray
    from derm.sweep.plan import demo_dataset

    print(machine_line())
    space = load_search_space(ROOT / "search_spaces" / "unet.yaml", [f"sweep.num_samples={args.trials}"])
    demo_root, layout = demo_dataset(space.task)
    space = apply_demo(space, demo_root, layout)
    start_ray(None, None)
    print(f"{args.trials} trials of a trivial trainable, {space.sweep.max_concurrent} concurrent, "
          f"{space.sweep.resources.cpu:g} CPU each, {space.sweep.search} + {space.sweep.scheduler}")
    with tempfile.TemporaryDirectory(prefix="derm-bench-startup-") as folder:
        figures = interleaved({
            "fresh actors (Ray default)": lambda: sweep_seconds(space, Path(folder), demo_root, False),
            "reused actors (derm)": lambda: sweep_seconds(space, Path(folder), demo_root, True),
        }, args.repeats)
    fresh = median(figures["fresh actors (Ray default)"]) / args.trials
    reused = median(figures["reused actors (derm)"]) / args.trials
    print(f"per-trial overhead: fresh actors {fresh:.2f} s, reused actors {reused:.2f} s "
          f"(median of {args.repeats}); ratio reused/fresh {reused / fresh:.2f}; target reused <= 0.5 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
