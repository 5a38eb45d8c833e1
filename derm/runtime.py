"""Where a run executes: its device, mixed precision, seeds, CPUs and DataLoader workers.

torch is imported inside the functions that need it: the dataset checks ask for
``available_cpus`` without paying for torch.
"""

from __future__ import annotations

import os
import random

import numpy as np

from derm.errors import ConfigError


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset / container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_workers(cpus: float) -> int:
    """DataLoader workers for a run with ``cpus`` CPUs (a sweep trial: its reservation).

    Cached samples are cheap to produce, so on a small CPU budget the main process does
    it; with more CPUs, workers (one CPU left for the training step, at most 8) keep the
    accelerator fed.

    >>> loader_workers(2), loader_workers(4), loader_workers(32)
    (0, 3, 8)
    """
    return 0 if cpus <= 2 else min(8, int(cpus) - 1)


def select_device(requested: str, key: str = "train.device"):
    """cuda, then mps, then cpu for 'auto'; an explicit choice that is absent is a ConfigError naming ``key``.

    >>> select_device("cpu")
    device(type='cpu')
    """
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if not available[requested]:
        raise ConfigError(f"{key}: {requested} is not available on this machine (use auto or cpu)")
    return torch.device(requested)


def autocast_dtype(amp: str, device):
    """Mixed precision on CUDA only: bf16 where the GPU has it natively, else fp16; None means fp32.

    >>> import torch
    >>> autocast_dtype("auto", torch.device("cpu")) is None
    True
    """
    import torch

    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        # V100 and T4 only emulate bf16 (slower than fp32); is_bf16_supported() says True for
        # them unless emulation is excluded. They get fp16 with a GradScaler instead.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) from one number."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_batch(batch: dict, device, channels_last: bool = False) -> dict:
    """A loader's batch with its tensors on ``device`` (images channels-last when asked)."""
    import torch

    moved = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if channels_last:
        moved["image"] = moved["image"].contiguous(memory_format=torch.channels_last)
    return moved
