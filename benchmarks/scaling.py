"""Question 6: how a sweep's wall time grows with its trial count and its dataset size.

Runs `python -m derm.sweep search_spaces/unet.yaml --demo` with tiny settings (1 epoch,
32 px, the demo's 4 light encoders, TPE, 2 concurrent trials of 1 CPU) on synthetic
HAM10000 datasets of each size, for each trial count, and times the whole command (Ray's
start, the sweep, the leaderboard). The decode-once cache lives in a temporary folder, so
the first sweep on each dataset also pays for decoding it once.

    python benchmarks/scaling.py                              # 8/16/32 trials x 500/2000 images, ~20 min
    python benchmarks/scaling.py --trials 4 8 --images 200    # smaller

Prints a table (minutes) and, last, the marginal seconds per trial at each size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(tempfile.gettempdir()) / "derm-bench-data"
# Warm-up must end before the last epoch: the space's optim.warmup_epochs (0-3) is fixed at 0.
TINY = ["train.epochs=1", "sweep.grace_period=1", "optim.warmup_epochs=0", "data.image_size=32"]


def synthetic_dataset(images: int) -> Path:
    from derm.data.synthetic import write_synthetic_dataset

    root = DATA_ROOT / f"ham-synthetic-{images}-64px"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        write_synthetic_dataset(root, "ham10000", n=images, size=(64, 64), seed=0)
        (root / ".complete").write_text("")
    return root


def sweep_minutes(trials: int, root: Path, out: Path, cache_dir: Path, port: int) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(ROOT / "search_spaces" / "unet.yaml"), "--demo",
                           *TINY, f"sweep.num_samples={trials}", f"data.root={root}", "--out", str(out),
                           "--dashboard-port", str(port)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "DERM_CACHE_DIR": str(cache_dir)})
    minutes = (time.perf_counter() - started) / 60
    if done.returncode != 0:
        raise SystemExit(f"sweep of {trials} trials on {root} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (board,) = out.glob("unet/*/leaderboard.csv")
    failed = (pd.read_csv(board)["status"] == "failed").sum()
    if failed:
        raise SystemExit(f"{failed} of {trials} trials failed in {board.parent}; the figures would not be trials")
    return minutes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--images", type=int, nargs="+", default=[500, 2000])
    args = parser.parse_args(argv)
    print(machine_line())
    print("settings: search_spaces/unet.yaml --demo " + " ".join(TINY) + " (TPE + ASHA, 2 concurrent, 1 CPU each)")
    minutes = pd.DataFrame(index=pd.Index(args.trials, name="trials"),
                           columns=pd.Index(args.images, name="images"), dtype=float)
    with tempfile.TemporaryDirectory(prefix="derm-bench-scaling-") as folder:
        for images in args.images:
            root = synthetic_dataset(images)
            for k, trials in enumerate(args.trials):
                out = Path(folder) / f"{images}-{trials}"
                minutes.loc[trials, images] = sweep_minutes(trials, root, out, Path(folder) / "cache", 8320 + k)
                print(f"{images} images, {trials} trials: {minutes.loc[trials, images]:.2f} min", flush=True)
    print("sweep wall time, minutes:")
    print(minutes.to_string(float_format=lambda v: f"{v:.2f}"))
    low, high = min(args.trials), max(args.trials)
    marginal = {images: 60 * (minutes.loc[high, images] - minutes.loc[low, images]) / (high - low)
                for images in args.images}
    print("marginal seconds per trial (" + f"{low} to {high} trials): "
          + ", ".join(f"{images} images {seconds:.1f} s" for images, seconds in marginal.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
