"""Question 4: what ASHA and TPE buy on the demo task, against FIFO and random search.

Runs `python -m derm.sweep search_spaces/unet.yaml --demo` (10 trials of the four light
encoders, 64 px, 2 concurrent, ASHA grace period 1) with 9 epochs and reduction factor 3
(rungs at epochs 1, 3 and 9) instead of the demo's own 4 epochs and factor 2: with 4
epochs ASHA cannot train fewer than about half of FIFO's epochs (docs/PERFORMANCE.md).
Four sweeps, one setting changed at a time: TPE + ASHA, TPE + FIFO (no early stopping),
random + ASHA, random + FIFO. Same search space, trial count, split and seeds. For each:
the best validation score on the leaderboard, the total epochs trained and the wall time.

    python benchmarks/search_efficiency.py                    # 4 sweeps, about 45 minutes on 2 cores
    python benchmarks/search_efficiency.py --demo-schedule    # the demo's own 4 epochs, factor 2
    python benchmarks/search_efficiency.py --quick            # 6 trials, 2 epochs, 32 px: ~5 minutes
    python benchmarks/search_efficiency.py sweep.seed=1 --arms tpe+asha tpe+fifo   # another draw

Random search proposes the same configurations under both schedulers, so random + ASHA
against random + FIFO measures what ASHA's cuts cost and save, and nothing else; TPE
proposes its later trials from the scores it has seen, which ASHA changes. One run per
setting: with 10 trials the comparison of searchers is one draw, not a distribution.
Last line: ASHA's best-score gap to FIFO and its share of FIFO's epochs, under each searcher.
Target: ASHA within 0.02 of FIFO's best score with at most 40 % of its epochs.
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
    "tpe+asha": ["sweep.search=tpe", "sweep.scheduler=asha"],
    "tpe+fifo": ["sweep.search=tpe", "sweep.scheduler=fifo"],
    "random+asha": ["sweep.search=random", "sweep.scheduler=asha"],
    "random+fifo": ["sweep.search=random", "sweep.scheduler=fifo"],
}
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
            "trials": len(board), "failed": int((board["status"] == "failed").sum()), "minutes": seconds / 60}


def verdict(rows: dict[str, dict]) -> str:
    """The last line: ASHA against FIFO under each searcher that has both, TPE against random."""
    verdicts = []
    for searcher in ("random", "tpe"):
        if {f"{searcher}+asha", f"{searcher}+fifo"} <= set(rows):
            cut, full = rows[f"{searcher}+asha"], rows[f"{searcher}+fifo"]
            gap, share = full["best score"] - cut["best score"], cut["epochs"] / full["epochs"]
            verdicts.append(f"{searcher}: ASHA {cut['best score']:.4f} with {cut['epochs']} epochs, FIFO "
                            f"{full['best score']:.4f} with {full['epochs']} (gap {gap:+.4f}, {share:.0%} of the "
                            f"epochs: {'met' if gap <= 0.02 and share <= 0.40 else 'not met'})")
    if {"tpe+asha", "random+asha"} <= set(rows):
        verdicts.append(f"TPE vs random (ASHA): {rows['tpe+asha']['best score']:.4f} vs "
                        f"{rows['random+asha']['best score']:.4f}")
    if not verdicts:
        return ""
    return "ASHA vs FIFO, target gap <= 0.02 at <= 40% of the epochs; " + "; ".join(verdicts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 trials, 2 epochs, 32 px")
    parser.add_argument("--demo-schedule", action="store_true", help="the demo's own 4 epochs and factor 2")
    parser.add_argument("--arms", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                        help="which settings to run (default: all four)")
    parser.add_argument("overrides", nargs="*", help="more dotted overrides for every sweep, e.g. sweep.seed=1")
    args = parser.parse_args(argv)
    schedule = QUICK if args.quick else [] if args.demo_schedule else SCHEDULE
    common = [*schedule, *args.overrides]
    print(machine_line())
    rows = {}
    with tempfile.TemporaryDirectory(prefix="derm-bench-search-") as folder:
        for k, name in enumerate(args.arms):
            overrides = SETTINGS[name]
            rows[name] = run_demo_sweep([*overrides, *common], Path(folder) / str(k), 8300 + k)
            print(f"{name}: " + ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                                          for key, value in rows[name].items()), flush=True)
    table = pd.DataFrame(rows).T
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    line = verdict(rows)
    if line:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
