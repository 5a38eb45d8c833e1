"""What every benchmark shares: the machine's description, interleaved repetitions, medians, memory.

These machines are shared and noisy, so a benchmark never compares two numbers taken
minutes apart: it alternates the variants (A B A B ...) and compares medians.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def machine_line() -> str:
    """CPU model and count, RAM, load average, torch and ray versions: one line for the log."""
    import ray
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} x {cpu}, {memory_gb:.0f} GiB RAM, load average {load}; "
            f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"ray {ray.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def interleaved(variants: dict[str, Callable[[], float]], repeats: int, log=print) -> dict[str, list[float]]:
    """Run each variant `repeats` times, alternating between them; every call returns one figure."""
    figures: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))  # no variant always goes first
        for name in order:
            value = variants[name]()
            figures[name].append(value)
            log(f"  repeat {repeat + 1}/{repeats} {name}: {value:.4g}")
    return figures


def median(values) -> float:
    return statistics.median(values)


def proportional_set_size(pid: int) -> int:
    """Bytes of memory the process owns, shared pages divided among their users (Linux PSS)."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")
