"""Question 1: images per second of derm's training step inside a Ray Tune trial, against a bare loop.

derm side: `derm.training.fit` (decode-once cache, DataLoader with derm's workers, loss,
AMP/accumulation bookkeeping, per-step loss.item(), checkpoint and report per epoch) run
as the function trainable of a one-trial Ray Tune sweep with 2 CPUs; the figure is the
`images_per_second` fit reports for its last epoch (the first epoch warms up).
Bare side: in the driver, with the same torch thread count, the same model
(`build_model`), loss (`build_loss`) and optimiser, batches of random tensors already in
memory: forward, backward, step, nothing else, same number of images after 2 warm-up steps.

Unet/ResNet-18 with the 7-class head (multitask), batch 8, 128 px, no augmentation
(--augment default adds albumentations' cost to derm's side), interleaved repetitions.

    python benchmarks/loop_overhead.py            # 3 repetitions of 280-image epochs, ~6 minutes
    python benchmarks/loop_overhead.py --quick    # 64 px, 1 repetition

A third variant, derm's fit in the driver without Ray, separates the loop's cost from Ray's.

Last line: the rates and derm-in-Ray's slowdown (bare / derm). Target: <= 1.05.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import interleaved, machine_line, median  # noqa: E402

DATA_ROOT = Path(tempfile.gettempdir()) / "derm-bench-data"


def run_config(root: Path, size: int, augment: str, epochs: int, cache_dir: str):
    from derm.config import config_from_dict

    return config_from_dict({
        "name": "loop-overhead", "task": "multitask",
        "data": {"root": str(root), "layout": "ham10000", "image_size": size, "augment": augment,
                 "cache_dir": cache_dir},
        "model": {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None},
        "optim": {"name": "adam", "lr": 1e-4},
        "train": {"epochs": epochs, "batch_size": 8, "device": "cpu"},
    }, "benchmarks/loop_overhead.py")


def derm_trial(config: dict) -> None:
    """Ray Tune trainable: derm's fit, reporting every epoch like derm.sweep's trainable does."""
    import torch
    from ray import tune

    from derm.config import config_from_dict
    from derm.fit_callbacks import FitCallbacks
    from derm.training import fit

    class ReportToTune(FitCallbacks):
        def on_epoch_end(self, metrics, latest):
            tune.report({**metrics, "torch_threads": torch.get_num_threads()})

    cfg = config_from_dict(config["cfg"], "trial")
    with tempfile.TemporaryDirectory() as run_dir:
        fit(cfg, run_dir, callbacks=ReportToTune())


def derm_rate(cfg, cpus: int) -> tuple[float, int]:
    """(images/s of the last epoch, torch threads) of one Ray Tune trial of derm's loop."""
    from ray import tune

    tuner = tune.Tuner(tune.with_resources(derm_trial, {"cpu": cpus}), param_space={"cfg": cfg.to_dict()},
                       run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="derm-bench-loop-"),
                                                 verbose=0))
    (result,) = tuner.fit()
    if result.error:
        raise result.error
    return result.metrics["images_per_second"], int(result.metrics["torch_threads"])


def fit_rate(cfg) -> float:
    """Images/s of the last epoch of derm's fit in this process, without Ray."""
    from derm.training import fit

    with tempfile.TemporaryDirectory() as run_dir:
        return fit(cfg, run_dir).last_metrics["images_per_second"]


def bare_rate(cfg, images: int, class_counts) -> float:
    """Images/s of forward, backward and step on in-memory batches; nothing else."""
    import torch

    from derm.losses import build_loss
    from derm.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg).train()
    loss_fn = build_loss(cfg, class_counts, None)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    size, batch_size = cfg.data.image_size, cfg.train.batch_size
    batch = {"image": torch.randn(batch_size, 3, size, size),
             "mask": (torch.rand(batch_size, 1, size, size) > 0.5).float(),
             "label": torch.randint(0, 7, (batch_size,))}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model(batch["image"]), batch)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    steps = max(1, images // batch_size)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=400,
                        help="synthetic HAM10000 images (70 %% train); fewer make each epoch's figure noisier")
    parser.add_argument("--augment", default="none", choices=["none", "light", "default", "strong"])
    parser.add_argument("--cpus", type=int, default=2, help="the trial's CPUs (Ray sets its torch threads)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 px, 1 repetition")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeats = 64, 1

    import numpy as np
    import ray
    import torch

    from derm.data.synthetic import write_synthetic_dataset

    root = DATA_ROOT / f"ham-synthetic-{args.images}-{args.size}px"
    if not (root / ".complete").exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        write_synthetic_dataset(root, "ham10000", n=args.images, size=(args.size, args.size), seed=0)
        (root / ".complete").write_text("")
    print(machine_line())
    ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=args.cpus)
    torch.set_num_threads(args.cpus)
    with tempfile.TemporaryDirectory(prefix="derm-bench-cache-") as cache_dir:
        cfg = run_config(root, args.size, args.augment, 2, cache_dir)
        from derm.data.loaders import prepare_data

        data = prepare_data(cfg)  # builds the cache once, outside the timings; gives the image count
        train_images = len(data.loaders["train"]) * cfg.train.batch_size
        counts = data.class_counts if data.class_counts is not None else np.ones(7)
        threads = []

        def derm_side():
            rate, trial_threads = derm_rate(cfg, args.cpus)
            threads.append(trial_threads)
            return rate

        print(f"Unet/ResNet-18 multitask, batch {cfg.train.batch_size}, {args.size} px, augment {args.augment}, "
              f"{train_images} training images per epoch, {args.cpus} CPUs for the trial")
        figures = interleaved({"derm in a Ray Tune trial": derm_side,
                               "derm fit without Ray": lambda: fit_rate(cfg),
                               "bare PyTorch loop": lambda: bare_rate(cfg, train_images, counts)}, args.repeats)
    derm, bare = median(figures["derm in a Ray Tune trial"]), median(figures["bare PyTorch loop"])
    alone = median(figures["derm fit without Ray"])
    print(f"torch threads: trial {sorted(set(threads))}, this process {torch.get_num_threads()}")
    print(f"images/s: derm in Ray Tune {derm:.2f}, derm without Ray {alone:.2f}, bare loop {bare:.2f} "
          f"(median of {args.repeats}); ratio bare/derm-without-Ray {bare / alone:.3f}; "
          f"ratio bare/derm {bare / derm:.3f}; target <= 1.05")
    return 0


if __name__ == "__main__":
    sys.exit(main())
