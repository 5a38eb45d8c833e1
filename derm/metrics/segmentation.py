"""Lesion segmentation (ISIC 2018 Task 1) and attribute (Task 2) metrics, batch by batch.

Both accumulators keep per-image confusion counts only (four numbers an image and
channel), never the masks. Predictions are probabilities, binarised at > 0.5
(8-bit masks: > 128, as the ISIC scorer does); truth masks are {0, 1} or boolean.

Averaging (do not mix them in one table: IoU never exceeds Dice under the same
averaging, since per image IoU = Dice / (2 - Dice)):
- ``dice``, ``iou``: over the dataset, from the summed counts (micro).
- ``dice_per_image``, ``iou_per_image``: mean of the per-image scores.
- ``isic_task1_jaccard``: per-image Jaccard, 0 below 0.65, mean over images.

Task 2 (``isic_challenge_scoring.task2.score``): per image and attribute the confusion
matrix divided by the image's pixel count, summed over images; Jaccard and Dice of the
sum per attribute and of the sum over all attributes (micro: the Task 2 score). derm
divides by the pixel count of the array it is given: training scores resized masks,
and the ratios are resolution-independent up to resampling; ``derm.evaluate`` scores
masks at their original size, exactly as the challenge did.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from derm.errors import DataError
from derm.labels import ATTRIBUTES
from derm.metrics.confusion import (
    binarize,
    confusion_counts,
    dice_from_counts,
    jaccard_from_counts,
    thresholded_jaccard,
)


def _as_image_masks(values: Any, threshold: float) -> np.ndarray:
    """(N, H, W) boolean masks from (N, H, W) or (N, 1, H, W) input."""
    masks = binarize(values, threshold)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"lesion masks must be (N, H, W) or (N, 1, H, W), got shape {masks.shape}")
    return masks


def lesion_scores(counts: np.ndarray) -> dict[str, float]:
    """dice, iou (dataset), dice_per_image, iou_per_image, isic_task1_jaccard from (N, 4) per-image counts."""
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    return {
        "dice": float(dice_from_counts(tp.sum(), fp.sum(), fn.sum())),
        "iou": float(jaccard_from_counts(tp.sum(), fp.sum(), fn.sum())),
        "dice_per_image": float(np.mean(dice_from_counts(tp, fp, fn))),
        "iou_per_image": float(np.mean(jaccard_from_counts(tp, fp, fn))),
        "isic_task1_jaccard": float(np.mean(thresholded_jaccard(tp, fp, fn))),
    }


def attribute_scores(summed: np.ndarray, names: tuple[str, ...] = ATTRIBUTES) -> dict[str, float]:
    """jaccard_<name>, dice_<name>, jaccard_micro, dice_micro from (C, 4) normalised counts summed over images."""
    metrics = {}
    for name, (tp, fp, fn, _) in zip(names, summed):
        metrics[f"jaccard_{name}"] = float(jaccard_from_counts(tp, fp, fn))
        metrics[f"dice_{name}"] = float(dice_from_counts(tp, fp, fn))
    tp, fp, fn, _ = summed.sum(axis=0)
    metrics["jaccard_micro"] = float(jaccard_from_counts(tp, fp, fn))
    metrics["dice_micro"] = float(dice_from_counts(tp, fp, fn))
    return metrics


class SegmentationAccumulator:
    """Binary lesion-mask metrics from per-image confusion counts.

    >>> acc = SegmentationAccumulator()
    >>> acc.update(np.array([[[0.9, 0.2], [0.7, 0.1]]]), np.array([[[1, 0], [0, 0]]]))
    >>> acc.compute()["dice"]  # tp 1, fp 1, fn 0
    0.6666666666666666
    """

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self._counts: list[np.ndarray] = []

    def update(self, pred: Any, true: Any) -> None:
        """Add a batch: predicted probabilities and truth masks, (N, H, W) or (N, 1, H, W)."""
        pred_masks = _as_image_masks(pred, self.threshold)
        true_masks = _as_image_masks(true, 0.5)
        self._counts.append(np.stack(confusion_counts(pred_masks, true_masks), axis=1))

    def counts(self) -> np.ndarray:
        """(N, 4) int64 per-image counts, columns tp, fp, fn, tn."""
        return np.concatenate(self._counts) if self._counts else np.zeros((0, 4), np.int64)

    def compute(self) -> dict[str, float]:
        """dice, iou (dataset), dice_per_image, iou_per_image, isic_task1_jaccard."""
        counts = self.counts()
        if not len(counts):
            raise DataError("segmentation metrics need at least one image with a lesion mask; "
                            "the evaluation set has none")
        return lesion_scores(counts)


def normalized_confusion_counts(pred: Any, true: Any) -> np.ndarray:
    """Per image and channel (tp, fp, fn, tn) divided by the image's pixel count.

    ``pred`` and ``true`` are boolean (N, C, H, W); returns float64 (N, C, 4), each
    row summing to 1 (ISIC 2018 Task 2's normalisation, since image sizes vary).
    """
    counts = np.stack(confusion_counts(pred, true), axis=-1).astype(np.float64)
    return counts / counts.sum(axis=-1, keepdims=True)


class AttributeAccumulator:
    """ISIC 2018 Task 2 metrics for the five attribute channels (order ``ATTRIBUTES``).

    An attribute empty in truth and prediction in every image scores Jaccard = Dice = 1,
    as the ISIC scorer's ``binary_jaccard`` does when tp + fp + fn = 0; a perfect
    "nothing here" is not NaN.

    >>> acc = AttributeAccumulator(names=("streaks",))
    >>> acc.update(np.ones((1, 1, 2, 2)), np.array([[[[1, 1], [0, 0]]]]))
    >>> acc.compute()["jaccard_streaks"]  # tp 2/4, fp 2/4
    0.5
    """

    def __init__(self, names: tuple[str, ...] = ATTRIBUTES, threshold: float = 0.5):
        self.names = tuple(names)
        self.threshold = threshold
        self._sums = np.zeros((len(self.names), 4), np.float64)
        self.images = 0

    def update(self, pred: Any, true: Any) -> None:
        """Add a batch: probabilities and truth masks, both (N, C, H, W) with C = len(names)."""
        pred_masks, true_masks = binarize(pred, self.threshold), binarize(true, 0.5)
        if pred_masks.ndim != 4 or pred_masks.shape[1] != len(self.names):
            raise ValueError(f"attribute masks must be (N, {len(self.names)}, H, W), got shape {pred_masks.shape}")
        self._sums += normalized_confusion_counts(pred_masks, true_masks).sum(axis=0)
        self.images += pred_masks.shape[0]

    def summed_counts(self) -> np.ndarray:
        """(C, 4) normalised tp, fp, fn, tn summed over images, one row per attribute."""
        return self._sums.copy()

    def compute(self) -> dict[str, float]:
        """jaccard_<name>, dice_<name> per attribute, jaccard_micro and dice_micro."""
        if not self.images:
            raise DataError("attribute metrics need at least one image with attribute masks; "
                            "the evaluation set has none")
        return attribute_scores(self._sums, self.names)
