"""Bootstrap confidence intervals of test-set metrics: resample images, rescore, take percentiles.

A test set of a few hundred images gives a metric that would move by several points on
another draw of images; the interval says how much. Each resample draws the test images
with replacement (same count), every metric is recomputed from the per-image predictions
of those images, and the interval is the percentile interval of the resampled values
(Efron & Tibshirani 1993, ch. 13). The draws come from one seeded generator, so the
same seed gives the same interval.

    >>> values = np.array([0.0, 1.0, 1.0, 1.0])
    >>> ci = bootstrap_ci(lambda idx: {"mean": values[idx].mean()}, len(values), n_resamples=200, seed=0)
    >>> ci["mean"][0] <= 0.75 <= ci["mean"][1]
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

CONFIDENCE = 0.95


def resample_indices(n_items: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """(n_resamples, n_items) indices drawn with replacement from range(n_items), seeded."""
    if n_items < 1:
        raise ValueError("bootstrap needs at least one item")
    return np.random.default_rng(seed).integers(0, n_items, size=(n_resamples, n_items))


def percentile_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of ``values``, NaNs left out.

    NumPy's default (linear) percentiles:

    >>> low, high = percentile_interval(np.arange(1, 101))  # 1 + 0.025 * 99, 1 + 0.975 * 99
    >>> round(low, 6), round(high, 6)
    (3.475, 97.525)
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return (math.nan, math.nan)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def bootstrap_ci(statistic: Callable[[np.ndarray], Mapping[str, float]], n_items: int, *,
                 n_resamples: int = 1000, confidence: float = CONFIDENCE,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric ``statistic`` returns.

    ``statistic(indices)`` scores the items at ``indices`` (a resample, with repeats) and
    returns {metric: value}; a metric undefined on a resample (NaN, e.g. an AUROC when a
    resample holds one class only) is left out of that metric's percentiles.
    """
    samples: dict[str, list[float]] = {}
    for indices in resample_indices(n_items, n_resamples, seed):
        for name, value in statistic(indices).items():
            samples.setdefault(name, []).append(float(value))
    return {name: percentile_interval(values, confidence) for name, values in samples.items()}
