"""Question 4: what ASHA and TPE buy on the demo task, against FIFO and random search.

Runs `python -m derm.sweep search_spaces/unet.yaml --demo` (10 trials of the four light
encoders, 4 epochs, 64 px, 2 concurrent, grace period 1, reduction factor 2) three times,
changing one thing at a time: TPE + ASHA (the demo's own settings), TPE + FIFO (no early
stopping), random + ASHA. Same search space, trial count, split and seeds. For each:
the best validation score on the leaderboard, the total epochs trained and the wall time.

    python benchmarks/search_efficiency.py            # 3 demo sweeps, 20-30 minutes on 2 cores
    python benchmarks/search_efficiency.py --quick    # 6 trials, 2 epochs, 32 px: ~5 minutes
    python benchmarks/search_efficiency.py --arms random+asha random+fifo   # schedulers on identical configs

One run per setting: with 10 trials the comparison of searchers is one draw, not a
distribution (see docs/PERFORMANCE.md). Last line: ASHA's best-score gap to FIFO and its
share of FIFO's epochs; TPE's best score against random's.
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
}
# Not run by default. random+fifo: with random search both schedulers see the same
# configurations (TPE's depend on the scores it saw), so ASHA's cost in score is isolated.
# tpe+asha-rf4: ASHA cutting harder (rungs at epochs 1 and 4 instead of 1, 2 and 4).
EXTRA = {"random+fifo": ["sweep.search=random", "sweep.scheduler=fifo"],
         "tpe+asha-rf4": ["sweep.search=tpe", "sweep.scheduler=asha", "sweep.reduction_factor=4"]}


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
    return {"best score": board["score"].max(), "epochs": int(board["epochs_trained"].sum()),
            "trials": len(board), "failed": int((board["status"] == "failed").sum()), "minutes": seconds / 60}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 trials, 2 epochs, 32 px")
    parser.add_argument("--arms", nargs="+", choices=[*SETTINGS, *EXTRA], default=list(SETTINGS),
                        help="which settings to run (default: the first three)")
    parser.add_argument("overrides", nargs="*", help="more dotted overrides for every sweep, e.g. sweep.seed=1")
    args = parser.parse_args(argv)
    common = list(args.overrides)
    if args.quick:
        common = ["sweep.num_samples=6", "train.epochs=2", "sweep.grace_period=1", "optim.warmup_epochs=0",
                  "data.image_size=32", *common]
    print(machine_line())
    rows = {}
    with tempfile.TemporaryDirectory(prefix="derm-bench-search-") as folder:
        for k, name in enumerate(args.arms):
            overrides = {**SETTINGS, **EXTRA}[name]
            rows[name] = run_demo_sweep([*overrides, *common], Path(folder) / str(k), 8300 + k)
            print(f"{name}: " + ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                                          for key, value in rows[name].items()), flush=True)
    table = pd.DataFrame(rows).T
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    if {"random+asha", "random+fifo"} <= set(rows):
        cut, full = rows["random+asha"], rows["random+fifo"]
        print(f"same configurations (random search): ASHA best {cut['best score']:.4f} with {cut['epochs']} epochs, "
              f"FIFO best {full['best score']:.4f} with {full['epochs']} epochs "
              f"(gap {full['best score'] - cut['best score']:+.4f}, "
              f"{cut['epochs'] / full['epochs']:.0%} of the epochs)")
    if not set(SETTINGS) <= set(rows):
        return 0
    asha, fifo, random = rows["tpe+asha"], rows["tpe+fifo"], rows["random+asha"]
    print(f"ASHA vs FIFO: best score {asha['best score']:.4f} vs {fifo['best score']:.4f} "
          f"(gap {fifo['best score'] - asha['best score']:+.4f}, target <= 0.02), epochs {asha['epochs']} vs "
          f"{fifo['epochs']} ({asha['epochs'] / fifo['epochs']:.0%}, target <= 40%); TPE vs random (ASHA): "
          f"{asha['best score']:.4f} vs {random['best score']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
