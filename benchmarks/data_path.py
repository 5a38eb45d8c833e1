"""Question 2: images per second the decode-once cache delivers, against decoding JPEGs every epoch.

On ISIC-sized images (benchmarks/isic_sized_data.py: real ISIC 2018 images and masks at
1022x767 to 2048x1536), at 256 px, through a DataLoader with derm's workers on this
machine, the same transform on both sides:

- decode every epoch, fast: derm's own decoder (`inspect_sample`: PIL draft, i.e. JPEG DCT
  scaling, then bilinear resize; the lesion mask decoded and checked) in __getitem__;
- decode every epoch, full: PIL full-size decode, albumentations resizes (the usual loader);
- decode-once cache: `build_cache` once, then `DermDataset` over the memory maps.

Epochs alternate between the variants; medians. Also: the cache's build time against one
plain decoding pass in the same thread pool (the cost of writing the arrays), and the
memory (PSS) of two processes iterating the same cache at once against one alone, on a
Task 1-sized cache (2,594 images).

    python benchmarks/data_path.py            # 240 images, 3 repetitions, ~6 minutes (first run
                                              # also writes the images, ~2 minutes)
    python benchmarks/data_path.py --quick    # 48 images, 1 repetition, 400-image memory test

Last line: cache/decode ratios (eval and training transform), build/pass ratio, memory ratio.
Targets: >= 20x from the second epoch, build <= 1.3x one pass, memory <= 1.5x.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isic_sized_data import write_isic_sized_dataset  # noqa: E402
from measure import interleaved, machine_line, median, proportional_set_size  # noqa: E402

SIZE = 256
MASKS = ["lesion_mask_path"]
DATA_ROOT = Path(tempfile.gettempdir()) / "derm-bench-data"


class DecodeEveryEpoch(Dataset):
    """The baseline: each item decoded from its JPEG and PNG when asked for, like DermDataset's items."""

    def __init__(self, table, transform, decode_size: int | None):
        self.records, self.transform, self.decode_size = table.to_dict("records"), transform, decode_size

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        from derm.data.decoding import inspect_sample

        sample, problems = inspect_sample(self.records[i], MASKS, size=self.decode_size)
        out = self.transform(image=sample.image, mask=sample.masks)
        return {"image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
                "mask": torch.from_numpy(np.ascontiguousarray(out["mask"].transpose(2, 0, 1))).float(),
                "label": torch.tensor(0), "index": i}


def images_per_second(dataset, workers: int, batch_size: int = 16) -> float:
    """One epoch through a DataLoader, every batch materialised as the training loop receives it."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    started, seen = time.perf_counter(), 0
    for batch in loader:
        seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - started)


def throughput(table, cache_dir: Path, workers: int, repeats: int, transform_name: str) -> dict[str, float]:
    from derm.data.cache import build_cache
    from derm.data.dataset import DermDataset
    from derm.data.transforms import eval_transform, train_transform

    transform = eval_transform(SIZE) if transform_name == "eval" else train_transform(SIZE)
    arrays = build_cache(table, SIZE, cache_dir, MASKS)
    cached = DermDataset.from_table(arrays, table, transform)
    figures = interleaved({
        "decode every epoch (full)": lambda: images_per_second(DecodeEveryEpoch(table, transform, None), workers),
        "decode every epoch (draft)": lambda: images_per_second(DecodeEveryEpoch(table, transform, SIZE), workers),
        "decode-once cache": lambda: images_per_second(cached, workers),
    }, repeats)
    return {name: median(values) for name, values in figures.items()}


def build_cost(table, cache_root: Path, repeats: int) -> tuple[float, float]:
    """Median seconds of building a fresh cache and of one plain decoding pass, same thread pool."""
    from derm.data.cache import build_cache
    from derm.data.decoding import inspect_samples

    def plain_pass() -> float:
        started = time.perf_counter()
        for _ in inspect_samples(((row, MASKS) for row in table.to_dict("records")), size=SIZE):
            pass
        return time.perf_counter() - started

    def build() -> float:
        with tempfile.TemporaryDirectory(dir=cache_root) as folder:
            started = time.perf_counter()
            build_cache(table, SIZE, folder, MASKS)
            return time.perf_counter() - started

    figures = interleaved({"plain decoding pass": plain_pass, "cache build": build}, repeats)
    return median(figures["cache build"]), median(figures["plain decoding pass"])


def trial_process(root: str, cache_dir: str) -> None:
    """Child: open the cache the way a trial does, read every sample once, report, wait to be measured."""
    import os

    from derm.data.cache import build_cache
    from derm.data.dataset import DermDataset
    from derm.data.formats import load_table
    from derm.data.transforms import eval_transform

    table = load_table(root, "ham10000")
    before = proportional_set_size(os.getpid())
    dataset = DermDataset.from_table(build_cache(table, SIZE, cache_dir, MASKS), table, eval_transform(SIZE))
    for _ in DataLoader(dataset, batch_size=16):
        pass
    print(f"ready {before}", flush=True)
    sys.stdin.readline()


def memory_ratio(root: Path, cache_dir: Path) -> tuple[float, float, float, float]:
    """(one alone, two together) in MiB of PSS, total and the part the data added."""
    def run(count: int) -> tuple[float, float]:
        children = [subprocess.Popen([sys.executable, __file__, "--trial-process", str(root), str(cache_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    for _ in range(count)]
        before = [int(child.stdout.readline().split()[1]) for child in children]
        after = [proportional_set_size(child.pid) for child in children]  # all alive: shared pages split
        for child in children:
            child.communicate("\n")
        return sum(after) / 2**20, (sum(after) - sum(before)) / 2**20

    one_total, one_data = run(1)
    two_total, two_data = run(2)
    return one_total, two_total, one_data, two_data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--memory-images", type=int, default=2594, help="images in the memory test's cache")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: derm's)")
    parser.add_argument("--quick", action="store_true", help="48 images, 1 repetition, 400-image memory test")
    parser.add_argument("--trial-process", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trial_process:
        trial_process(*args.trial_process)
        return 0
    if args.quick:
        args.images, args.memory_images, args.repeats = 48, 400, 1

    from derm.config import RunConfig
    from derm.data.cache import build_cache
    from derm.data.formats import load_table
    from derm.data.loaders import default_workers

    print(machine_line())
    workers = args.workers if args.workers is not None else default_workers(RunConfig(), None)
    root = write_isic_sized_dataset(DATA_ROOT / f"isic-sized-{args.images}", args.images)
    table = load_table(root, "ham10000")
    print(f"{len(table)} ISIC-sized images (1022x767 to 2048x1536) at {SIZE} px, DataLoader workers {workers}")
    with tempfile.TemporaryDirectory(prefix="derm-bench-cache-") as folder:
        cache_dir = Path(folder)
        rates = {name: throughput(table, cache_dir, workers, args.repeats, name) for name in ("eval", "train")}
        for name, figures in rates.items():
            print(f"images/s, {name} transform: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
        build, plain = build_cost(table, cache_dir, args.repeats)
        print(f"cache build {build:.2f} s, plain decoding pass {plain:.2f} s (same {workers or 'default'} thread pool)")

        memory_root = write_isic_sized_dataset(DATA_ROOT / f"ham-sized-{args.memory_images}", args.memory_images,
                                               sizes=((600, 450),))
        build_cache(load_table(memory_root, "ham10000"), SIZE, cache_dir, MASKS)
        one, two, one_data, two_data = memory_ratio(memory_root, cache_dir)
        print(f"memory (PSS), {args.memory_images}-image cache: one process {one:.0f} MiB (data {one_data:.0f}), "
              f"two at once {two:.0f} MiB (data {two_data:.0f})")

    def speedup(name):
        return rates[name]["decode-once cache"] / rates[name]["decode every epoch (draft)"]

    def speedup_full(name):
        return rates[name]["decode-once cache"] / rates[name]["decode every epoch (full)"]

    print(f"cache/decode (draft): eval {speedup('eval'):.1f}x, train {speedup('train'):.1f}x; "
          f"cache/decode (full): eval {speedup_full('eval'):.1f}x, train {speedup_full('train'):.1f}x; "
          f"build/pass {build / plain:.2f}; memory two/one {two / one:.2f} (data only {two_data / one_data:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
