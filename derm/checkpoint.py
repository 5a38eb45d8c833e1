"""Checkpoints that survive a kill mid-write and load with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled
objects), so ``torch.load(path, weights_only=True)`` opens it safely: model, optimizer,
scheduler and AMP scaler states, the epoch, the resolved config, the metrics and the
split. It is written to a temporary file in the same folder and moved over the old one
with ``os.replace``, which is atomic on POSIX: a kill during the write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from derm.errors import DermError

FORMAT_VERSION = 1


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``payload`` (plus the format version) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format_version": FORMAT_VERSION, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a derm checkpoint safely (``weights_only=True``); DermError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise DermError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, not a torch file, unsafe pickle
        first_line = (str(err).strip().splitlines() or [""])[0]  # torch's unpickling advice runs to pages
        raise DermError(f"{path}: cannot be loaded as a derm checkpoint ({type(err).__name__}: {first_line})") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise DermError(f"{path}: not a derm checkpoint (expected model and config entries)")
    return payload
