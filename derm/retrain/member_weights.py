"""How much each configuration of a ``--top K --ensemble`` counts: Caruana selection on validation.

Plain averaging lets a weak configuration dilute the strong ones. Ensemble selection
(`derm.retrain.ensemble_selection`, Caruana et al. 2004) instead adds members greedily,
with replacement, while the ensemble's validation score rises; a configuration it never
picks gets weight 0 and is not even retrained. The predictions it chooses on are the ones
each sweep trial saved for its best epoch on the sweep's validation split
(``checkpoints/val_predictions.npz``), so the test split plays no part in the choice.

The score is the balanced accuracy of the averaged class probabilities (ISIC 2018 Task 3's
metric): segmentation trials keep per-image confusion counts, not per-pixel probabilities,
so there is nothing to average for masks, and tasks without a diagnosis head keep equal
weights (said in the summary).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from derm.metrics.classification import balanced_accuracy, predicted_labels
from derm.metrics.per_image import CLASS_TASKS
from derm.retrain.ensemble_selection import Selection, caruana_selection
from derm.retrain.selection import Candidate, Member
from derm.sweep.uncertainty import trial_predictions
from derm.text_formats import json_value

SELECTION_METRIC = "balanced_accuracy"


@dataclass
class EnsembleWeights:
    """One weight per candidate (summing to 1), how they were chosen, and on how many images."""

    weights: np.ndarray
    method: str
    trial_ids: tuple[str, ...] = ()
    selection: Selection | None = None
    images: int = 0

    def describe(self, labels: Sequence[str]) -> dict:
        """What metrics.json and ensemble.md say about the choice."""
        described = {"method": self.method, "weights": dict(zip(labels, map(float, self.weights)))}
        if self.selection is not None:
            best = self.selection.best_single
            described["validation"] = {
                "metric": SELECTION_METRIC, "images": self.images, "ensemble": self.selection.score,
                "best_single": float(self.selection.single_scores[best]), "best_single_member": labels[best],
                "single": dict(zip(labels, map(float, self.selection.single_scores)))}
        return described


def equal_weights(candidates: Sequence[Candidate], reason: str) -> EnsembleWeights:
    count = len(candidates)
    return EnsembleWeights(np.full(count, 1 / count), f"equal weights ({reason})",
                           tuple(c.trial_id for c in candidates))


def choose_weights(plan, candidates: Sequence[Candidate]) -> EnsembleWeights:
    """Caruana weights of ``candidates`` from their sweep trials' validation predictions."""
    if candidates[0].config.task not in CLASS_TASKS:
        return equal_weights(candidates, "selection reads class probabilities; this task has none")
    found = [trial_predictions(plan.experiment_path, c.trial_id) for c in candidates]
    missing = [c.trial_id for c, p in zip(candidates, found) if p is None or p.class_probabilities is None]
    if missing:
        return equal_weights(candidates, f"trial(s) {', '.join(missing)} kept no validation predictions")
    shared = sorted(set.intersection(*(set(p.image_ids) for p in found)))
    if not shared:
        return equal_weights(candidates, "the trials' validation predictions share no image")
    aligned = [p.select([p.image_ids.index(i) for i in shared]) for p in found]
    labels = aligned[0].labels
    labelled = labels >= 0

    def score(probabilities: np.ndarray) -> float:
        return balanced_accuracy(predicted_labels(probabilities), labels[labelled])

    selection = caruana_selection([p.class_probabilities[labelled] for p in aligned], score)
    return EnsembleWeights(selection.weights, f"Caruana ensemble selection on validation {SELECTION_METRIC}",
                           tuple(c.trial_id for c in candidates), selection, int(labelled.sum()))


def member_weights(members: Sequence[Member], chosen: EnsembleWeights | None) -> list[float]:
    """Each retrained model's weight: its configuration's, shared equally by its seeds."""
    if chosen is None:
        return [1 / len(members)] * len(members)
    by_trial = dict(zip(chosen.trial_ids, chosen.weights))
    seeds = Counter(m.candidate.trial_id for m in members)
    weights = [by_trial[m.candidate.trial_id] / seeds[m.candidate.trial_id] for m in members]
    return [w / sum(weights) for w in weights]


def describe_selection(chosen: EnsembleWeights, candidates: Sequence[Candidate], summary: dict) -> dict:
    """The choice, and what it gained over the best single configuration on validation and on test.

    On test, "best single" is the configuration that scored best alone on validation (the one
    a user would have taken without an ensemble), scored by its first retrained model.
    """
    labels = [f"rank{c.rank}" for c in candidates]
    described = chosen.describe(labels)
    if chosen.selection is None:
        return json_value(described)
    validation = described["validation"]
    validation["gain"] = validation["ensemble"] - validation["best_single"]
    best_rank = candidates[chosen.selection.best_single].rank
    single = next((m["test_metrics"] for m in summary["members"] if m["rank"] == best_rank), None)
    ensemble = summary["ensemble"]["metrics"].get(SELECTION_METRIC)
    if single is not None and ensemble is not None:
        described["test"] = {"metric": SELECTION_METRIC, "ensemble": ensemble,
                             "best_single": single[SELECTION_METRIC], "best_single_member": f"rank{best_rank}",
                             "gain": ensemble - single[SELECTION_METRIC]}
    return json_value(described)
