"""Progress bars for long loops: one tqdm bar on stderr, for a person watching a terminal.

Every loop over images or batches that can run for more than a few seconds (checking a
dataset, writing demo data, predicting, scoring, training steps) draws its bar through
`progress`, so every command shows the same bar and obeys the same two rules:

- a bar is drawn only when stderr is a terminal, so CI logs, redirected output and Ray
  trials stay clean;
- ``set_quiet(True)`` (what a command's ``--quiet`` calls) turns every bar off in this
  process; the results a command prints are not progress and still appear.

    >>> squares = [k * k for k in progress(range(4), desc="squaring", unit="number")]
    >>> squares
    [0, 1, 4, 9]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TextIO

from tqdm import tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn every bar of this process off (``--quiet``), or back to the default (on at a terminal)."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    """Whether ``--quiet`` turned progress off (for progress told in log lines, not bars)."""
    return _quiet


def shown(enabled: bool | None = None) -> bool:
    """Whether a bar is drawn: never when quiet, else ``enabled``, or (None) whether stderr is a terminal."""
    if _quiet:
        return False
    return sys.stderr.isatty() if enabled is None else enabled


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
             unit: str = "it", enabled: bool | None = None) -> tqdm:
    """``iterable`` with a tqdm bar on stderr (``desc: 40%|####      | 12/30 [00:04<00:06, 3.1image/s]``).

    Without ``iterable``, a bar to ``update(k)`` by hand (e.g. by images when looping over
    batches); use it as a context manager or ``close()`` it. ``enabled`` forces the bar on
    or off; by default it follows `shown`. A disabled bar still iterates and updates.
    """
    # A pseudo-terminal nobody sized (``script``, some CI runners) reports 0x0, in which tqdm
    # draws nothing at all: give such a bar a size of its own instead.
    size = {} if _terminal_is_sized() else {"ncols": 100, "nrows": 20}
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=not shown(enabled),
                dynamic_ncols=not size, **size)


def _terminal_is_sized() -> bool:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):  # no file descriptor (captured) or not a terminal
        return True


def write(line: str, file: TextIO | None = None) -> None:
    """Print ``line`` (to stdout by default) without breaking a bar being drawn: tqdm redraws it below."""
    tqdm.write(line, file=file or sys.stdout)


class EpochBar:
    """The training loop's steps as one bar per epoch, fed by ``FitCallbacks.on_step``'s arguments.

    ``derm.train`` and ``derm.retrain_best`` both draw their training epochs with it:
    ``epoch 2: 100%|##########| 30/30 [00:09<00:00, 3.2batch/s, loss=0.4123]``.
    """

    def __init__(self, enabled: bool | None = None):
        self.enabled = enabled
        self._bar: tqdm | None = None

    def on_step(self, epoch: int, step: int, steps: int, running_loss: float) -> None:
        if self._bar is None or step == 1:
            self.close()
            self._bar = progress(total=steps, desc=f"epoch {epoch}", unit="batch", enabled=self.enabled)
        self._bar.set_postfix_str(f"loss={running_loss:.4f}", refresh=False)
        self._bar.update(step - self._bar.n)
        if step == steps:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
