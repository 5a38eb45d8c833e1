"""How a sweep trial ended, as derm tells it: the markers a trial reports, and Optuna's state.

``derm.sweep.trainable`` reports the markers, the searcher (``derm.search_space.optuna_search``)
and the leaderboard (``derm.sweep.board``) read them; `trial_end_state` is the rule the
searcher follows. No Ray, no Optuna here.
"""

from __future__ import annotations

import math
from typing import Any

# What a trial reports besides its epochs' metrics (derm.sweep.trainable writes them; the
# searcher and the leaderboard read them).
OUT_OF_MEMORY = "out_of_memory"              # 1 in the one result of a trial that did not fit in memory
OUT_OF_MEMORY_ERROR = "out_of_memory_error"  # that result's error text
BATCH_HALVED = "batch_halved"                # 1 in every epoch trained at half the batch after an out of memory

def trial_end_state(result: dict[str, Any] | None, error: bool, *, metric: str, max_epochs: int,
                    stopped_as_pruned: bool = True) -> str:
    """How a finished trial is told to Optuna: ``"COMPLETE"``, ``"PRUNED"`` or ``"FAIL"``.

    ``result`` is the trial's last result. An error is FAIL; a trial that did not fit in
    memory (``out_of_memory``) or reported no score is PRUNED; one whose last ``epoch`` is
    below ``max_epochs`` (stopped by ASHA) is PRUNED when ``stopped_as_pruned``, else
    COMPLETE as Ray tells it; one that ran ``max_epochs`` is COMPLETE.

    >>> end = lambda result, **kw: trial_end_state(result, False, metric="score", max_epochs=9, **kw)
    >>> end({"score": 0.6, "epoch": 9}), end({"score": 0.7, "epoch": 1})
    ('COMPLETE', 'PRUNED')
    >>> end({"score": 0.7, "epoch": 1}, stopped_as_pruned=False), end({"score": float("-inf"), "out_of_memory": 1})
    ('COMPLETE', 'PRUNED')
    >>> trial_end_state({"score": 0.6, "epoch": 9}, True, metric="score", max_epochs=9)
    'FAIL'
    """
    if error:
        return "FAIL"
    result = result or {}
    if result.get(OUT_OF_MEMORY) or result.get(metric) is None:
        return "PRUNED"
    epoch = result.get("epoch")
    if stopped_as_pruned and epoch is not None and not _is_nan(epoch) and epoch < max_epochs:
        return "PRUNED"
    return "COMPLETE"


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
