"""What ``retrain_best --folds`` chooses on out-of-fold predictions, never on test.

- Task 1 (lesion masks): the mask threshold and the clean-up (`derm.postprocess`: none,
  largest component, largest component + filled holes; the ISIC 2018 Task 1 ground truth
  is one connected region without holes), by the thresholded Jaccard;
- Task 2 (attribute masks): one threshold per attribute, by each attribute's Jaccard;
- Task 3 (diagnosis): a softmax temperature (Guo et al. 2017) by the negative log-likelihood.

The choices travel in ``model.pt`` (``postprocess``, ``temperature``) and ``derm.predict``
applies them. The masks chosen on are the held-out fold's at the model's resolution
(``collect_masks``; at most MAX_MAPS_PER_FOLD per fold, so HAM10000 at 256 px stays
within a few hundred MB): the threshold moves the edge the same way at either size, and
the final test scores are taken at each image's own size with the choice applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from derm.calibration import apply_temperature, fit_temperature, melanoma_operating_points
from derm.metrics.bootstrap import bootstrap_ci
from derm.metrics.classification import expected_calibration_error
from derm.metrics.per_image import LESION_TASKS, SplitPredictions
from derm.postprocess import MaskPostprocess, choose_attribute_thresholds, choose_lesion_postprocess

MAX_MAPS_PER_FOLD = 1000


@dataclass
class HeldOutMasks:
    """Mask probabilities (float16 (C, S, S)) and true masks (bool) of held-out images that have masks."""

    probabilities: list[np.ndarray] = field(default_factory=list)
    truth: list[np.ndarray] = field(default_factory=list)

    def extend(self, other: "HeldOutMasks") -> None:
        self.probabilities += other.probabilities
        self.truth += other.truth


def collect_masks(model, loader, device, amp_dtype=None, limit: int = MAX_MAPS_PER_FOLD) -> HeldOutMasks:
    """The first ``limit`` masked images of ``loader``: the model's mask probabilities and the truth."""
    from derm.metrics import to_numpy
    from derm.predictions import predict_batches

    collected = HeldOutMasks()
    for batch, _, probs in predict_batches(model, loader, device, amp_dtype):
        if "seg" not in probs:
            return collected
        has_mask = to_numpy(batch["has_mask"]).reshape(-1).astype(bool) if "has_mask" in batch else None
        for i, probability in enumerate(to_numpy(probs["seg"])):
            if len(collected.probabilities) >= limit:
                return collected
            if has_mask is None or has_mask[i]:
                collected.probabilities.append(probability.astype(np.float16))
                collected.truth.append(to_numpy(batch["mask"][i]) > 0.5)
    return collected


def choose_postprocess(task: str, masks: HeldOutMasks) -> tuple[MaskPostprocess | None, list[dict]]:
    """The mask threshold and clean-up (lesion tasks) or per-attribute thresholds, and the table of
    every combination tried; (None, []) when the task has no masks or none were held out."""
    if not masks.probabilities:
        return None, []
    maps = [p.astype(np.float32) for p in masks.probabilities]
    if task in LESION_TASKS:
        chosen, table = choose_lesion_postprocess([m[0] for m in maps], [t[0] for t in masks.truth])
        return chosen, table.to_dict("records")
    thresholds = choose_attribute_thresholds(maps, masks.truth)
    return MaskPostprocess(attribute_thresholds=thresholds), []


def choose_temperature(out_of_fold: SplitPredictions) -> float | None:
    """The temperature that minimises the out-of-fold negative log-likelihood (None: no diagnosis head)."""
    if out_of_fold.class_probabilities is None:
        return None
    probabilities, labels = out_of_fold.classification_arrays()
    return fit_temperature(probabilities, labels) if len(labels) else None


def calibration_report(test: SplitPredictions, temperature: float, resamples: int, seed: int) -> dict[str, Any]:
    """ECE on test before and after the temperature, and melanoma sensitivity at 80% and 90%
    specificity (after it; the ranking, hence the ROC, does not change) with bootstrap intervals
    (stratified by true class)."""
    probabilities, labels = test.classification_arrays()
    scaled = apply_temperature(probabilities, temperature)
    operating = melanoma_operating_points(scaled, labels)

    def statistic(indices: np.ndarray) -> dict[str, float]:
        return melanoma_operating_points(scaled[indices], labels[indices])

    intervals = bootstrap_ci(statistic, len(labels), strata=labels, n_resamples=resamples, seed=seed) \
        if resamples > 0 else {}
    return {"temperature": temperature,
            "test_ece_before": expected_calibration_error(probabilities, labels),
            "test_ece_after": expected_calibration_error(scaled, labels),
            "melanoma": {name: {"value": value, "ci95": list(intervals.get(name, (None, None)))}
                         for name, value in operating.items()}}
