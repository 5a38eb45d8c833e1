"""Tables and numbers as derm writes them into files: Markdown pipe tables and JSON values.

One place for what the leaderboard, the retrain report and the commands' JSON output
share: a pipe table to paste into a README, and values JSON can hold (JSON has no NaN;
NumPy scalars are not JSON numbers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def pipe_table(header: Sequence[Any], rows: Iterable[Sequence[Any]], right_aligned: Iterable[Any] = ()) -> str:
    """A GitHub Markdown table; ``|`` inside a cell is escaped, ``right_aligned`` columns (by header) align right.

    >>> print(pipe_table(["model", "dice"], [["Unet", "0.812"]], right_aligned=["dice"]), end="")
    | model | dice |
    |---|---:|
    | Unet | 0.812 |
    """
    right = set(right_aligned)

    def line(cells) -> str:
        return "| " + " | ".join(str(cell).replace("|", r"\|") for cell in cells) + " |"

    rule = "|" + "|".join("---:" if column in right else "---" for column in header) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)]) + "\n"


def json_value(value: Any) -> Any:
    """``value`` as JSON can hold it: NumPy scalars as Python numbers, NaN and infinities as
    null, mappings and sequences element by element, anything else that JSON has no type
    for as its text.

    >>> import numpy as np
    >>> json_value({"dice": np.float32(0.5), "auroc": float("nan"), "ranks": (1, np.int64(2))})
    {'dice': 0.5, 'auroc': None, 'ranks': [1, 2]}
    """
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # NumPy scalars (and 0-d arrays)
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
