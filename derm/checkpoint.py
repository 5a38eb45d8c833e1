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
from collections.abc import Sequence
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a derm checkpoint safely (``weights_only=True``); ConfigError if missing, DataError if unusable.

    ``mmap=True`` maps the tensors instead of reading them: cheap when only the small entries are wanted.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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
    holds ``model``, ``config``, ``epoch``, ``split``, ``history`` and ``test_metrics``, and
    ``postprocess`` and ``temperature`` when retrain-best chose them on validation or
    out-of-fold predictions (`derm.inference.Predictor` applies both). An ensemble's ``model.pt``
    (`save_ensemble`: a fold ensemble or retrain-best's top-K) also holds ``ensemble``, every
    member's weights and config, and ``ensemble_weights``; `members` and `member_weights` read
    any checkpoint alike (a single model is a one-member ensemble of weight 1).
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
    # Decisions chosen on validation / out-of-fold predictions, applied by Predictor; None: as trained.
    postprocess: dict[str, Any] | None = None      # derm.postprocess.MaskPostprocess.to_dict()
    temperature: float | None = None               # class temperature (derm.calibration.fit_temperature)
    # An ensemble's members (`save_ensemble`); the first is also `model` and `config`, so a reader
    # that knows no ensembles still loads a working model.
    ensemble: list[dict[str, Any]] | None = None   # [{"model": state_dict, "config": resolved config}, ...]
    ensemble_weights: list[float] | None = None    # one per member, summing to 1; None: equal weights

    def save(self, path: str | Path) -> Path:
        """Atomically write the checkpoint to ``path`` (see `save_checkpoint`); returns the path."""
        payload = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return save_checkpoint(payload, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> TrainingCheckpoint:
        """Load a derm checkpoint safely (see `load_checkpoint`, whose errors it raises)."""
        payload = load_checkpoint(path, map_location=map_location, mmap=mmap)
        return cls(**{f.name: payload[f.name] for f in fields(cls) if f.name in payload})

    def for_inference(self) -> TrainingCheckpoint:
        """This checkpoint without the optimiser and scaler state: what best.pt holds, a third of the size."""
        return replace(self, optimizer=None, scaler=None)

    def members(self) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """(state_dict, config) of each model: an ensemble's members, or this checkpoint's one model."""
        if self.ensemble is None:
            return [(self.model, self.config)]
        return [(member["model"], member["config"]) for member in self.ensemble]

    def member_weights(self) -> list[float]:
        """Each member's weight in the ensemble's mean probabilities (equal unless saved otherwise)."""
        count = len(self.members())
        return [float(w) for w in self.ensemble_weights] if self.ensemble_weights is not None else [1 / count] * count


# What every member of an ensemble must share, as dotted config keys: one task, and one input
# (the same pixels at the same size, the same metadata), since the ensemble reads each image once.
ENSEMBLE_SHARED_KEYS = ("task", "data.image_size", "data.resize", "data.color_constancy", "data.color_constancy_p",
                        "model.metadata")


def save_ensemble(members: Sequence[str | Path | TrainingCheckpoint], path: str | Path,
                  weights: Sequence[float] | None = None, **checkpoint_fields: Any) -> Path:
    """Write one model file for the ensemble of `members` (checkpoint files or loaded checkpoints).

    `weights` (None: equal) are normalised to sum to 1; members of weight 0 are left out (Caruana
    selection gives 0 to the members it never picks), and a single member left is written as a
    plain single-model checkpoint. `checkpoint_fields` are other `TrainingCheckpoint` fields for the file
    (``test_metrics``, ``split``, ``postprocess``, ``temperature`` ...). ConfigError when members
    differ in one of `ENSEMBLE_SHARED_KEYS`. `derm.inference.Predictor.from_checkpoint` loads the
    file and averages its members' probabilities with the weights.
    """
    loaded = [m if isinstance(m, TrainingCheckpoint) else TrainingCheckpoint.load(m) for m in members]
    if not loaded:
        raise ValueError("an ensemble needs at least one member")
    weights = [1.0] * len(loaded) if weights is None else [float(w) for w in weights]
    if len(weights) != len(loaded) or any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"an ensemble of {len(loaded)} members needs {len(loaded)} weights >= 0 with a positive "
                         f"sum, got {weights}")
    kept = [(member, weight / sum(weights)) for member, weight in zip(loaded, weights) if weight > 0]
    if any(member.ensemble is not None for member in loaded):
        raise ValueError("an ensemble's members are single models; pass the members of a saved ensemble instead")
    _check_shared_input([member.config for member, _ in kept])
    first = kept[0][0]
    if len(kept) == 1:
        return TrainingCheckpoint(model=first.model, config=first.config, **checkpoint_fields).save(path)
    # `model` and the first member are the same dict: torch.save writes its tensors once.
    return TrainingCheckpoint(model=first.model, config=first.config,
                              ensemble=[{"model": m.model, "config": m.config} for m, _ in kept],
                              ensemble_weights=[w for _, w in kept], **checkpoint_fields).save(path)


def _check_shared_input(configs: list[dict[str, Any]]) -> None:
    for key in ENSEMBLE_SHARED_KEYS:
        values = [_dotted(config, key) for config in configs]
        if any(value != values[0] for value in values):
            raise ConfigError(f"ensemble members differ in {key} ({', '.join(map(str, values))}); "
                              f"an ensemble reads each image once, so its members must agree on it")


def _dotted(config: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config
