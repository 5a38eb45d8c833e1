"""Question 5: does packing 4 trials on one GPU pay, and what does AMP buy? (needs a CUDA GPU)

Runs derm's own trainable loop (`derm.training.fit`) as Ray Tune trials on the synthetic
HAM10000 demo data decoded at 256 px: Unet/ResNet-34 with the 7-class head, batch 16,
`train.amp=auto` (bf16 where supported), no pretrained weights.

- packed: 4 concurrent trials at `gpu: 0.25` (CPUs split evenly between them);
- alone:  1 trial at `gpu: 1.0` with all CPUs;
- fp32:   1 trial at `gpu: 1.0` with `train.amp=off`.

Each trial trains `--epochs` epochs; its figure is the `images_per_second` of its last
epoch, and the packed figure is the sum over the 4 concurrent trials. Settings alternate.

    python benchmarks/gpu_packing.py              # 2 repetitions
    python benchmarks/gpu_packing.py --quick      # 1 repetition, fewer images

On a machine without a CUDA GPU it prints why it measured nothing and exits with status 2.
Last line: packed/alone aggregate ratio and AMP/fp32 ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import interleaved, machine_line, median  # noqa: E402

DATA_ROOT = Path(tempfile.gettempdir()) / "derm-bench-data"


def packing_trial(config: dict) -> None:
    from ray import tune

    from derm.config import config_from_dict
    from derm.fit_callbacks import FitCallbacks
    from derm.training import fit

    class ReportToTune(FitCallbacks):
        def on_epoch_end(self, metrics, latest):
            tune.report(metrics)

    cfg = config_from_dict(config["cfg"], "gpu_packing trial")
    with tempfile.TemporaryDirectory() as run_dir:
        fit(cfg, run_dir, callbacks=ReportToTune())


def aggregate_rate(cfg_dict: dict, trials: int, gpu: float, cpus: int) -> float:
    """Sum over `trials` concurrent Ray Tune trials of their last epoch's images/s."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(packing_trial, {"cpu": max(1, cpus // trials), "gpu": gpu}),
        param_space={"cfg": cfg_dict}, tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=trials),
        run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="derm-bench-gpu-"), verbose=0))
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise errors[0]
    return sum(r.metrics["images_per_second"] for r in results)


def run_config(root: Path, size: int, amp: str, epochs: int, cache_dir: str, device: str) -> dict:
    from derm.config import config_from_dict

    return config_from_dict({
        "name": "gpu-packing", "task": "multitask",
        "data": {"root": str(root), "layout": "ham10000", "image_size": size, "cache_dir": cache_dir},
        "model": {"arch": "Unet", "encoder": "resnet34" if device == "cuda" else "resnet18",
                  "encoder_weights": None},
        "optim": {"name": "adam", "lr": 1e-4},
        "train": {"epochs": epochs, "batch_size": 16, "amp": amp, "device": device},
    }, "benchmarks/gpu_packing.py").to_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic HAM10000 images (70 % train)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="500 images, 2 epochs, 1 repetition")
    parser.add_argument("--smoke-on-cpu", action="store_true", help=argparse.SUPPRESS)  # checks the script runs
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.repeats = 500, 2, 1

    import torch

    device, size, gpu_share = "cuda", 256, (0.25, 1.0)
    if not torch.cuda.is_available():
        if not args.smoke_on_cpu:
            message = ("not measured: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
                       "run this script where `nvidia-smi` lists a GPU")
            print(message)
            return 2
        device, size, gpu_share, args.images, args.epochs, args.repeats = "cpu", 32, (0, 0), 100, 1, 1
        print("smoke run on CPU: checks the script, measures nothing about GPUs")

    import ray

    from derm.data.synthetic import write_synthetic_dataset

    root = DATA_ROOT / f"ham-synthetic-{args.images}-64px"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        write_synthetic_dataset(root, "ham10000", n=args.images, size=(64, 64), seed=0)
        (root / ".complete").write_text("")
    print(machine_line())
    if device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
    cpus = os.cpu_count() or 4
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="derm-bench-cache-") as cache_dir:
        amp = run_config(root, size, "auto", args.epochs, cache_dir, device)
        fp32 = run_config(root, size, "off", args.epochs, cache_dir, device)
        figures = interleaved({
            "4 trials at gpu 0.25, AMP": lambda: aggregate_rate(amp, 4, gpu_share[0], cpus),
            "1 trial at gpu 1.0, AMP": lambda: aggregate_rate(amp, 1, gpu_share[1], cpus),
            "1 trial at gpu 1.0, fp32": lambda: aggregate_rate(fp32, 1, gpu_share[1], cpus),
        }, args.repeats)
    packed, alone, full = (median(figures[k]) for k in figures)
    print(f"aggregate images/s: packed {packed:.0f}, alone {alone:.0f}, alone fp32 {full:.0f}; "
          f"ratio packed/alone {packed / alone:.2f}, AMP/fp32 {alone / full:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
