"""Question 4: what ASHA and TPE buy on the demo task, against FIFO and random search.

Runs `python -m derm.sweep search_spaces/unet.yaml --demo` (10 trials of the four light
encoders, 64 px, 2 concurrent, ASHA grace period 1) with 9 epochs and reduction factor 3
(rungs at epochs 1, 3 and 9) instead of the demo's own 4 epochs and factor 2: with 4
epochs ASHA cannot train fewer than about half of FIFO's epochs (docs/PERFORMANCE.md).
Arms, one setting changed at a time (same search space, trial count and split; each seed
is `sweep.seed`, the sampler's):

    tpe+asha       TPE + ASHA, a trial ASHA stopped told to Optuna as PRUNED at the epoch it
                   reached (sweep.stopped_as_pruned, the default)
    tpe+asha-ray   TPE + ASHA as Ray's OptunaSearch tells it: every trial with a result
                   COMPLETE with its last score, so TPE models 1-epoch scores as finished runs
    tpe+fifo       TPE, no early stopping
    random+asha, random+fifo   random search under both schedulers

For each arm and seed: the best validation score on the leaderboard, the total epochs
trained and the wall time.

    python benchmarks/search_efficiency.py                        # the three TPE arms, seed 0: ~35 min on 2 cores
    python benchmarks/search_efficiency.py --seeds 0 1 2          # three draws of each: ~1.7 h
    python benchmarks/search_efficiency.py --arms random+asha random+fifo tpe+asha tpe+fifo
    python benchmarks/search_efficiency.py --demo-schedule        # the demo's own 4 epochs, factor 2
    python benchmarks/search_efficiency.py --quick --seeds 0      # 6 trials, 2 epochs, 32 px: a few minutes

Random search proposes the same configurations under both schedulers, so random + ASHA
against random + FIFO measures what ASHA's cuts cost and save, and nothing else; TPE
proposes its later trials from the scores it has seen, which ASHA changes, and which the
two tpe+asha arms tell it differently. With 10 trials one seed is one draw, not a
distribution: compare arms seed by seed.
Last line, the target: TPE + ASHA within 0.02 of TPE + FIFO's best score with at most 40 %
of its epochs, in every seed (for each ASHA arm run).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "tpe+asha": ["sweep.search=tpe", "sweep.scheduler=asha", "sweep.stopped_as_pruned=true"],
    "tpe+asha-ray": ["sweep.search=tpe", "sweep.scheduler=asha", "sweep.stopped_as_pruned=false"],
    "tpe+fifo": ["sweep.search=tpe", "sweep.scheduler=fifo"],
    "random+asha": ["sweep.search=random", "sweep.scheduler=asha"],
    "random+fifo": ["sweep.search=random", "sweep.scheduler=fifo"],
}
DEFAULT_ARMS = ["tpe+asha", "tpe+asha-ray", "tpe+fifo"]
# Which FIFO arm each ASHA arm is measured against.
BASELINE = {"tpe+asha": "tpe+fifo", "tpe+asha-ray": "tpe+fifo", "random+asha": "random+fifo"}
TARGET_GAP, TARGET_SHARE = 0.02, 0.40
# The benchmark's schedule (rungs 1, 3, 9); --demo-schedule keeps the demo's (1, 2, 4).
SCHEDULE = ["train.epochs=9", "sweep.reduction_factor=3"]
QUICK = ["sweep.num_samples=6", "train.epochs=2", "sweep.grace_period=1", "optim.warmup_epochs=0", "data.image_size=32"]


def run_demo_sweep(overrides: list[str], out: Path, port: int) -> dict:
    """One demo sweep through derm's command; its best score, epochs and wall time."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(ROOT / "search_spaces" / "unet.yaml"), "--demo",
                           *overrides, "--out", str(out), "--dashboard-port", str(port)],
                          capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sweep {' '.join(overrides)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (sweep_dir,) = (out / "unet").iterdir()
    board = pd.read_csv(sweep_dir / "leaderboard.csv")
    epochs = board["epochs_trained"]
    return {"best score": board["score"].max(), "epochs": int(epochs.sum()),
            "epochs per trial": " ".join(str(int(e)) for e in epochs.sort_values(ascending=False)),
            "trials": len(board), "failed": int(board["status"].isin(("failed", "out of memory")).sum()),
            "minutes": seconds / 60}


def comparison(cut: dict, full: dict) -> tuple[float, float, bool]:
    """(gap to FIFO's best score, share of FIFO's epochs, whether the target is met)."""
    gap, share = full["best score"] - cut["best score"], cut["epochs"] / full["epochs"]
    return gap, share, gap <= TARGET_GAP and share <= TARGET_SHARE


def verdicts(rows: dict[tuple[str, int], dict], seeds: list[int]) -> list[str]:
    """One line per ASHA arm run with its FIFO arm: per seed its gap and epoch share; the TPE
    arms' lines come last, the target check over every seed."""
    lines = []
    for arm in ("random+asha", "tpe+asha-ray", "tpe+asha"):
        baseline = BASELINE[arm]
        if not all((arm, s) in rows and (baseline, s) in rows for s in seeds):
            continue
        checks = [comparison(rows[arm, s], rows[baseline, s]) for s in seeds]
        per_seed = "; ".join(f"seed {s}: {rows[arm, s]['best score']:.4f} vs {rows[baseline, s]['best score']:.4f}, "
                             f"gap {gap:+.4f}, {share:.0%} of the epochs"
                             for s, (gap, share, _) in zip(seeds, checks))
        met = sum(ok for _, _, ok in checks)
        lines.append(f"{arm} vs {baseline} (target gap <= {TARGET_GAP} at <= {TARGET_SHARE:.0%} of the epochs, "
                     f"every seed): {'met' if met == len(seeds) else 'not met'} in {met}/{len(seeds)} seeds; {per_seed}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 trials, 2 epochs, 32 px")
    parser.add_argument("--demo-schedule", action="store_true", help="the demo's own 4 epochs and factor 2")
    parser.add_argument("--arms", nargs="+", choices=list(SETTINGS), default=DEFAULT_ARMS,
                        help=f"which settings to run (default: {' '.join(DEFAULT_ARMS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="sweep.seed of each draw (default: 0)")
    parser.add_argument("overrides", nargs="*", help="more dotted overrides for every sweep, e.g. sweep.num_samples=20")
    args = parser.parse_args(argv)
    if any(o.startswith("sweep.seed=") for o in args.overrides):
        parser.error("give seeds with --seeds, not sweep.seed=")
    schedule = QUICK if args.quick else [] if args.demo_schedule else SCHEDULE
    common = [*schedule, *args.overrides]
    print(machine_line())
    rows: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="derm-bench-search-") as folder:
        for seed in args.seeds:
            for name in args.arms:
                k = len(rows)
                rows[name, seed] = run_demo_sweep([*SETTINGS[name], *common, f"sweep.seed={seed}"],
                                                  Path(folder) / str(k), 8300 + k)
                print(f"{name} seed {seed}: " + ", ".join(
                    f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                    for key, value in rows[name, seed].items()), flush=True)
    table = pd.DataFrame(rows.values(), index=pd.MultiIndex.from_tuples(rows, names=["arm", "seed"]))
    print(table.sort_index().to_string(float_format=lambda v: f"{v:.4f}"))
    for line in verdicts(rows, args.seeds):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
