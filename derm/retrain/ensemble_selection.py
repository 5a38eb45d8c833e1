"""Ensemble selection: which members, with which weights, by greedy forward selection with replacement.

Caruana, Niculescu-Mizil, Crew & Ksikes (2004), "Ensemble selection from libraries of
models", ICML: start from the best single member (or the `init` best, "sorted
initialisation"), then each round add the member, already chosen or not, that most improves
the score of the running average of the chosen members' predictions. A member chosen k
times out of n picks has weight k / n; members never chosen get weight 0, so a member that
only adds noise drops out instead of diluting the average as plain averaging would.

Any prediction works as long as all members' arrays share one shape and the mean is
meaningful: (N, K) class probabilities for the diagnosis, (N, H, W) mask probabilities for
segmentation. `score` reads the averaged prediction and returns a number (higher is better
unless ``maximize=False``); bind the labels into it. Choose on out-of-fold or validation
predictions, never on test.

>>> labels = np.array([0, 1, 1, 0])
>>> good = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
>>> flipped = good[:, ::-1]
>>> accuracy = lambda p: float((p.argmax(axis=1) == labels).mean())
>>> caruana_selection([flipped, good], accuracy, rounds=3).weights.tolist()
[0.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_ROUNDS = 25


@dataclass(frozen=True)
class Selection:
    """What `caruana_selection` chose, and how the score moved while it chose."""

    weights: np.ndarray        # one per member, summing to 1 (0 for members never picked)
    counts: np.ndarray         # how many times each member was picked
    picks: list[int]           # the member of each pick, in order (the initial ones first)
    history: list[float]       # the ensemble's score after each pick: never decreasing
    single_scores: np.ndarray  # each member's score on its own
    maximize: bool = True      # whether a higher score is better

    @property
    def score(self) -> float:
        """The chosen ensemble's score."""
        return self.history[-1]

    @property
    def best_single(self) -> int:
        """The member that scores best on its own (what the ensemble's gain is measured against)."""
        signed = np.nan_to_num(self.single_scores * (1.0 if self.maximize else -1.0), nan=-np.inf)
        return int(np.argmax(signed))


def caruana_selection(predictions: Sequence[np.ndarray], score: Callable[[np.ndarray], float], *,
                      rounds: int = DEFAULT_ROUNDS, init: int = 1, maximize: bool = True) -> Selection:
    """Weights for `predictions` (one array per member, all one shape) chosen greedily, with replacement.

    The ensemble starts as the `init` best members by their own score, each once; then
    up to `rounds` times the member whose addition gives the best `score` of the mean is
    added. Selection stops early when every addition would lower the score, so `history`
    never decreases. (Caruana et al. run all rounds and keep the best prefix; that picks
    the same ensemble unless the score dips and then climbs above its earlier peak.)
    Ties go to the member that scores better alone, then to the lower index. NaN scores count as the worst.
    """
    if not predictions:
        raise ValueError("ensemble selection needs at least one member's predictions")
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in predictions])  # ValueError on mixed shapes
    members = len(stacked)
    if rounds < 0 or not 1 <= init <= members:
        raise ValueError(f"rounds must be >= 0 and init between 1 and {members}; got rounds={rounds}, init={init}")
    sign = 1.0 if maximize else -1.0

    def signed(value: float) -> float:
        value = float(value)
        return -np.inf if np.isnan(value) else sign * value

    single_scores = np.array([float(score(p)) for p in stacked])
    order = sorted(range(members), key=lambda m: (-signed(single_scores[m]), m))
    picks = order[:init]
    total = stacked[picks].sum(axis=0)
    history = [float(score(total / init))]
    for _ in range(rounds):
        count = len(picks) + 1
        candidates = [signed(score((total + stacked[m]) / count)) for m in range(members)]
        # On a tie (common with scores such as accuracy) the member that is better alone wins.
        best = min(range(members), key=lambda m: (-candidates[m], -signed(single_scores[m]), m))
        if candidates[best] < signed(history[-1]):
            break  # every addition lowers the score: the current ensemble is a local optimum
        picks.append(best)
        total += stacked[best]
        history.append(sign * candidates[best])
    counts = np.bincount(picks, minlength=members)
    return Selection(counts / counts.sum(), counts, picks, history, single_scores, maximize)
