"""What the training loop tells its caller: one callbacks object, as ``ray.tune.Callback`` is.

``derm.training.fit(cfg, run_dir, callbacks=...)`` calls ``log`` for lines a user should see,
``on_step`` after each training step and ``on_epoch_end`` after each epoch's checkpoints.
Kept apart from the loop (no torch here), so commands can define their callbacks before
torch is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class FitCallbacks:
    """What `fit` tells its caller, one method per moment; each does nothing here.

    Subclass it and override the hooks you need, as with ``ray.tune.Callback``.
    """

    def log(self, message: str) -> None:
        """A line for the user: images skipped, how a multitask split's targets divide, a resume."""

    def on_step(self, epoch: int, step: int, steps: int, running_loss: float) -> None:
        """After each training step: 1-based ``epoch``, ``step`` of ``steps``, the epoch's mean loss so far."""

    def on_epoch_end(self, metrics: dict[str, Any], latest: Path | None) -> None:
        """After each epoch's checkpoints are written: its metrics and the latest.pt just written.

        ``latest`` is None in epochs that write no latest.pt (``train.checkpoint_every``).
        """


class LogOnly(FitCallbacks):
    """Callbacks that pass `fit`'s log lines to ``write`` (e.g. ``print``) and nothing else."""

    def __init__(self, write: Callable[[str], None]):
        self.write = write

    def log(self, message: str) -> None:
        self.write(message)
