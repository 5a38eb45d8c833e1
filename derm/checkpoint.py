"""Checkpoints that survive a kill mid-write and load with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled
objects), so ``torch.load(path, weights_only=True)`` opens it safely: model, optimizer,
scheduler and AMP scaler states, the epoch, the resolved config, the metrics and the
split. `TrainingCheckpoint` names every entry; `save_checkpoint` and `load_checkpoint`
are the raw dict I/O beneath it.

A checkpoint is written to a temporary file in the same folder and moved over the old
one with ``os.replace``, which is atomic on POSIX: a kill during the write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from derm.errors import ConfigError, DataError

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
    """Load a derm checkpoint safely (``weights_only=True``); ConfigError if missing, DataError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, not a torch file, unsafe pickle
        first_line = (str(err).strip().splitlines() or [""])[0]  # torch's unpickling advice runs to pages
        raise DataError(f"{path}: cannot be loaded as a derm checkpoint ({type(err).__name__}: {first_line})") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise DataError(f"{path}: not a derm checkpoint (expected model and config entries)")
    return payload


@dataclass
class TrainingCheckpoint:
    """What a derm checkpoint holds, one field per entry of the file's dict.

    ``checkpoints/latest.pt`` holds every field but ``test_metrics``; ``checkpoints/best.pt``
    is its `for_inference` copy (no optimiser or scaler state); retrain-best's ``model.pt``
    holds ``model``, ``config``, ``epoch``, ``split``, ``history`` and ``test_metrics``.
    Only ``model`` and ``config`` are required; a field the file lacks is None, and a None
    field is not written, so the file's dict is exactly what `save_checkpoint` always wrote.
    """

    model: dict[str, torch.Tensor]                 # model.state_dict()
    config: dict[str, Any]                         # the resolved RunConfig.to_dict()
    epoch: int | None = None                       # epochs completed
    split: dict[str, str] | None = None            # {image_id: "train" | "val" | "test"}
    history: list[dict[str, Any]] | None = None    # one metrics dict per epoch so far
    metrics: dict[str, Any] | None = None          # this epoch's metrics (history[-1])
    best_score: float | None = None                # the best sweep score so far (NaN when no split is scored)
    best_epoch: int | None = None                  # the epoch that scored it (1-based)
    best_metrics: dict[str, Any] | None = None     # that epoch's metrics
    loss: dict[str, Any] | None = None             # the loss module's state (learned task weights)
    scheduler: dict[str, Any] | None = None        # derm.optim.LRSchedule.state_dict()
    optimizer: dict[str, Any] | None = None        # optimizer.state_dict(); resuming needs it
    scaler: dict[str, Any] | None = None           # the AMP GradScaler's state ({} when fp16 is off)
    test_metrics: dict[str, Any] | None = None     # retrain-best's test-split metrics (model.pt only)

    def save(self, path: str | Path) -> Path:
        """Atomically write the checkpoint to ``path`` (see `save_checkpoint`); returns the path."""
        payload = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return save_checkpoint(payload, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> TrainingCheckpoint:
        """Load a derm checkpoint safely (see `load_checkpoint`, whose errors it raises)."""
        payload = load_checkpoint(path, map_location=map_location)
        return cls(**{f.name: payload[f.name] for f in fields(cls) if f.name in payload})

    def for_inference(self) -> TrainingCheckpoint:
        """This checkpoint without the optimiser and scaler state: what best.pt holds, a third of the size."""
        return replace(self, optimizer=None, scaler=None)
