"""Pareto fronts and ranks: which trials no other trial beats on every objective at once.

A point dominates another when it is at least as good on every objective and better on
one; equal points do not dominate each other, so ties share a rank. Rank 1 is the front
of all points, rank 2 the front of the rest, and so on (non-dominated sorting, Deb et al.
2002). A point with NaN in any objective gets no rank (NaN) and dominates nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pareto_ranks(values, maximize: Sequence[bool]) -> np.ndarray:
    """(n, k) objective values -> (n,) float ranks, 1 for the front; NaN where a value is NaN.

    >>> pareto_ranks([[0.5, 0.9], [0.7, 0.8], [0.6, 0.7], [0.4, 0.6], [0.1, float("nan")]], [True, True]).tolist()
    [1.0, 1.0, 2.0, 3.0, nan]
    >>> pareto_ranks([[1.0, 10.0], [2.0, 5.0], [3.0, 20.0]], [True, False]).tolist()  # max the 1st, min the 2nd
    [2.0, 1.0, 1.0]
    """
    points = np.asarray(values, dtype=float) * np.where(maximize, 1.0, -1.0)
    ranks = np.full(len(points), np.nan)
    left = ~np.isnan(points).any(axis=1)
    rank = 1
    while left.any():
        indices = np.flatnonzero(left)
        candidates = points[indices]
        better_or_equal = (candidates[:, None, :] >= candidates[None, :, :]).all(axis=2)
        strictly = (candidates[:, None, :] > candidates[None, :, :]).any(axis=2)
        dominated = (better_or_equal & strictly).any(axis=0)
        front = indices[~dominated]
        ranks[front] = rank
        left[front] = False
        rank += 1
    return ranks
