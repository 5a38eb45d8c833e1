"""Bootstrap confidence intervals of test-set metrics: resample images, rescore, take percentiles.

A test set of a few hundred images gives a metric that would move by several points on
another draw of images; the interval says how much. Each resample draws the test images
with replacement (same count), every metric is recomputed from the per-image predictions
of those images, and the interval is the percentile interval of the resampled values
(Efron & Tibshirani 1993, ch. 13). The draws come from one seeded generator, so the
same seed gives the same interval.

Class-averaged metrics (balanced accuracy, macro F1, macro AUROC) average over the
classes present in the truth. A plain image bootstrap of n test images leaves out a class
with one image in (1 - 1/n)^n, about 37%, of the resamples, and the average then moves
to the classes left, so the interval is biased (upward when the rare classes are the
badly recognised ones) and can miss its own point estimate. ``strata`` (the true class
of each image) resamples within each class instead, keeping every class's count, so
every resample scores the same classes as the point estimate: a stratified bootstrap,
each class resampled as a sample of its own. Images without a class (label -1) are one
more stratum.

    >>> values = np.array([0.0, 1.0, 1.0, 1.0])
    >>> ci = bootstrap_ci(lambda idx: {"mean": values[idx].mean()}, len(values), n_resamples=200, seed=0)
    >>> ci["mean"][0] <= 0.75 <= ci["mean"][1]
    True
    >>> labels = np.array([0, 0, 0, 1])
    >>> [sorted(labels[row].tolist()) for row in resample_indices(4, 2, seed=0, strata=labels)]
    [[0, 0, 0, 1], [0, 0, 0, 1]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping

import numpy as np

CONFIDENCE = 0.95

Statistic = Callable[[np.ndarray], Mapping[str, float]]


def resample_indices(n_items: int, n_resamples: int, seed: int = 0, strata=None) -> np.ndarray:
    """(n_resamples, n_items) indices drawn with replacement, seeded (NumPy ``default_rng``).

    Without ``strata``, each row draws from all of range(n_items). With ``strata`` (one
    group label per item), each row draws within each group as many items as the group
    has, at that group's positions, so every row holds every group with its own count.
    """
    if n_items < 1:
        raise ValueError("bootstrap needs at least one item")
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n_items, size=(n_resamples, n_items))
    strata = np.asarray(strata)
    if strata.shape != (n_items,):
        raise ValueError(f"strata needs one group label per item: shape {strata.shape}, {n_items} items")
    indices = np.empty((n_resamples, n_items), dtype=np.int64)
    for group in np.unique(strata):  # sorted, so the same seed gives the same draws
        members = np.flatnonzero(strata == group)
        indices[:, members] = members[rng.integers(0, len(members), size=(n_resamples, len(members)))]
    return indices


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


def bootstrap_ci(statistic: Statistic, n_items: int, *, strata=None, n_resamples: int = 1000,
                 confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric ``statistic`` returns.

    ``statistic(indices)`` scores the items at ``indices`` (a resample, with repeats) and
    returns {metric: value}; a metric undefined on a resample (NaN, e.g. an AUROC when a
    resample holds one class only) is left out of that metric's percentiles. ``strata``
    (one group label per item, e.g. the true class) resamples within groups
    (``resample_indices``); None resamples all items together.
    """
    values = resampled_values(statistic, resample_indices(n_items, n_resamples, seed, strata))
    return {name: percentile_interval(v, confidence) for name, v in values.items()}


def share_at_least_as_good(statistic_a: Statistic, statistic_b: Statistic, n_items: int, *, strata=None,
                           n_resamples: int = 1000, seed: int = 0,
                           lower_is_better: Collection[str] = ()) -> dict[str, float]:
    """Paired bootstrap: per metric, the share of resamples on which A scores at least as well as B.

    Both statistics score the same resampled items (drawn as in ``bootstrap_ci``); a
    resample where either value is NaN is left out (NaN if none is left). Metrics named
    in ``lower_is_better`` (e.g. "ece") count A as good as B when A's value is not higher.

    >>> a, b = np.array([1.0, 1.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0, 1.0])
    >>> share_at_least_as_good(lambda i: {"acc": a[i].mean()}, lambda i: {"acc": b[i].mean()}, 4)
    {'acc': 1.0}
    """
    indices = resample_indices(n_items, n_resamples, seed, strata)
    values_a, values_b = resampled_values(statistic_a, indices), resampled_values(statistic_b, indices)
    shares = {}
    for name in values_a.keys() & values_b.keys():
        a, b = values_a[name], values_b[name]
        both = ~(np.isnan(a) | np.isnan(b))
        wins = a[both] <= b[both] if name in lower_is_better else a[both] >= b[both]
        shares[name] = float(wins.mean()) if both.any() else math.nan
    return dict(sorted(shares.items()))


def resampled_values(statistic: Statistic, indices: np.ndarray) -> dict[str, np.ndarray]:
    """{metric: (resamples,) values} of ``statistic`` on each row of ``indices``; NaN where a
    resample did not return the metric."""
    rows = [statistic(row) for row in indices]
    names = dict.fromkeys(name for row in rows for name in row)
    return {name: np.array([float(row.get(name, math.nan)) for row in rows]) for name in names}
