"""Mask post-processing chosen on validation: threshold, largest component, filled holes.

The ISIC 2018 Task 1 ground truth is one connected region without holes, so a
predicted speck away from the lesion, or a hole inside it, can only cost Jaccard.
`MaskPostprocess` holds the decisions (lesion threshold, post-processing mode, one
threshold per Task 2 attribute) as plain numbers and strings, so they travel in a
``weights_only`` checkpoint; `choose_lesion_postprocess` and
`choose_attribute_thresholds` pick them on validation or out-of-fold predictions,
never on test.

Thresholds are strict (a pixel is in the mask when its probability is > threshold),
as `derm.metrics.binarize` and the ISIC scorer's ``> 128`` on 8-bit masks.

    chosen, table = choose_lesion_postprocess(val_probabilities, val_truth)  # (H, W) maps and masks
    lesion_mask, = chosen.binarise(probabilities[None])                     # (1, H, W) -> one mask
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from derm.metrics import (
    confusion_counts,
    jaccard_from_counts,
    normalized_confusion_counts,
    thresholded_jaccard,
)

# Simplest first: ties between modes go to the earlier one.
POSTPROCESS_MODES = ("none", "largest_component", "largest_component+fill_holes")
DEFAULT_THRESHOLDS = np.arange(0.3, 0.71, 0.05)  # 0.30, 0.35, ..., 0.70

# 8-connectivity: pixels touching at a corner belong to one lesion, as a drawn outline would.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a boolean (H, W) mask; an empty mask stays empty.

    Of equally large regions, the first in raster order is kept.

    >>> mask = np.array([[1, 1, 0, 0],
    ...                  [1, 1, 0, 1]], bool)
    >>> largest_component(mask).astype(int)
    array([[1, 1, 0, 0],
           [1, 1, 0, 0]])
    """
    mask = np.asarray(mask, dtype=bool)
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # the background is no component
    return labels == int(sizes.argmax())


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The boolean (H, W) mask with every enclosed hole filled (`scipy.ndimage.binary_fill_holes`).

    >>> ring = np.ones((3, 3), bool); ring[1, 1] = False
    >>> bool(fill_holes(ring).all())
    True
    """
    return ndimage.binary_fill_holes(np.asarray(mask, dtype=bool))


def apply_postprocess(mask: np.ndarray, mode: str) -> np.ndarray:
    """``mask`` after post-processing ``mode`` (one of `POSTPROCESS_MODES`)."""
    if mode == "none":
        return np.asarray(mask, dtype=bool)
    if mode == "largest_component":
        return largest_component(mask)
    if mode == "largest_component+fill_holes":
        return fill_holes(largest_component(mask))
    raise ValueError(f"unknown post-processing mode {mode!r}; choose one of {', '.join(POSTPROCESS_MODES)}")


def _check_threshold(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be a probability in [0, 1], got {value}")
    return value


@dataclass(frozen=True)
class MaskPostprocess:
    """How mask probabilities become masks: the lesion threshold and mode, per-attribute thresholds.

    The defaults are derm's behaviour without post-processing: > 0.5, nothing else.
    ``attribute_thresholds`` (one per channel of an attribute model, order
    `derm.labels.ATTRIBUTES`) is None to use ``threshold`` for every attribute.

    >>> chosen = MaskPostprocess(0.4, "largest_component")
    >>> MaskPostprocess.from_dict(chosen.to_dict()) == chosen
    True
    """

    threshold: float = 0.5
    mode: str = "none"
    attribute_thresholds: tuple[float, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "threshold", _check_threshold(self.threshold, "the mask threshold"))
        if self.mode not in POSTPROCESS_MODES:
            raise ValueError(f"unknown post-processing mode {self.mode!r}; "
                             f"choose one of {', '.join(POSTPROCESS_MODES)}")
        if self.attribute_thresholds is not None:
            object.__setattr__(self, "attribute_thresholds", tuple(
                _check_threshold(t, "an attribute threshold") for t in self.attribute_thresholds))

    def describe(self) -> str:
        """One line for the console, e.g. 'threshold 0.45, largest_component+fill_holes'.

        >>> MaskPostprocess(attribute_thresholds=(0.4, 0.5, 0.5, 0.3, 0.6)).describe()
        'attribute thresholds 0.4, 0.5, 0.5, 0.3, 0.6'
        """
        if self.attribute_thresholds is not None:
            return "attribute thresholds " + ", ".join(f"{t:g}" for t in self.attribute_thresholds)
        return f"threshold {self.threshold:g}, {self.mode}"

    def to_dict(self) -> dict[str, Any]:
        """Plain floats, a string and a list (or None): what a ``weights_only`` checkpoint can hold."""
        thresholds = None if self.attribute_thresholds is None else [float(t) for t in self.attribute_thresholds]
        return {"threshold": float(self.threshold), "mode": str(self.mode), "attribute_thresholds": thresholds}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MaskPostprocess:
        """The inverse of `to_dict`; missing keys take the defaults."""
        thresholds = values.get("attribute_thresholds")
        return cls(float(values.get("threshold", 0.5)), str(values.get("mode", "none")),
                   None if thresholds is None else tuple(float(t) for t in thresholds))

    def binarise(self, probabilities: np.ndarray) -> list[np.ndarray]:
        """(C, H, W) probabilities -> C boolean (H, W) masks.

        One channel is a lesion mask: > ``threshold``, then ``mode``. Several channels
        are Task 2 attributes: each > its own threshold, with no component step (an
        attribute such as globules or milia-like cysts is many small regions).

        >>> probabilities = np.array([[[0.9, 0.0, 0.6]]])
        >>> MaskPostprocess(0.5, "largest_component").binarise(probabilities)[0].astype(int)
        array([[1, 0, 0]])
        """
        probabilities = np.asarray(probabilities)
        if probabilities.ndim != 3:
            raise ValueError(f"mask probabilities must be (C, H, W), got shape {probabilities.shape}")
        if probabilities.shape[0] == 1:
            return [apply_postprocess(probabilities[0] > self.threshold, self.mode)]
        thresholds = self.attribute_thresholds or (self.threshold,) * probabilities.shape[0]
        if len(thresholds) != probabilities.shape[0]:
            raise ValueError(f"{len(thresholds)} attribute thresholds for {probabilities.shape[0]} channels")
        return [channel > threshold for channel, threshold in zip(probabilities, thresholds)]


def _threshold_grid(thresholds: Sequence[float]) -> list[float]:
    """Thresholds as plain floats, rounded so that np.arange's 0.45000000000000007 is 0.45."""
    grid = sorted({round(_check_threshold(t, "a threshold"), 6) for t in np.ravel(thresholds)})
    if not grid:
        raise ValueError("at least one threshold is needed")
    return grid


def _closest_to_half(thresholds: Sequence[float]) -> float:
    """Of equally good thresholds, the one nearest the untuned 0.5 (the lower of two as near)."""
    return min(thresholds, key=lambda t: (abs(t - 0.5), t))


def choose_lesion_postprocess(probability_maps: Sequence[np.ndarray], truth_masks: Sequence[np.ndarray],
                              thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                              ) -> tuple[MaskPostprocess, pd.DataFrame]:
    """The lesion threshold and mode that maximise the ISIC 2018 Task 1 score on these images.

    ``probability_maps`` are (H, W) lesion probabilities, ``truth_masks`` the (H, W) true
    masks of the same images (sizes may differ between images). Every threshold is tried
    with every mode in `POSTPROCESS_MODES`; the score is the thresholded Jaccard (per-image
    Jaccard, 0 below 0.65, mean over images). Ties go to the simpler mode, then to the
    threshold closest to 0.5. Returns the choice and a table of every combination
    (columns ``threshold``, ``mode``, ``isic_task1_jaccard``).

    Choose on validation or out-of-fold predictions only: choosing on test inflates it.
    """
    if len(probability_maps) != len(truth_masks) or not len(probability_maps):
        raise ValueError(f"need the same positive number of probability maps and truth masks, "
                         f"got {len(probability_maps)} and {len(truth_masks)}")
    grid = _threshold_grid(thresholds)
    # per_image[mode][t] holds each image's thresholded Jaccard.
    per_image = {mode: np.zeros((len(grid), len(probability_maps))) for mode in POSTPROCESS_MODES}
    for i, (probabilities, truth) in enumerate(zip(probability_maps, truth_masks)):
        truth = np.asarray(truth, dtype=bool)
        for t, threshold in enumerate(grid):
            # Each mode builds on the previous one's mask: one labelling and one fill per threshold.
            mask = np.asarray(probabilities) > threshold
            for mode, step in zip(POSTPROCESS_MODES, (None, largest_component, fill_holes)):
                mask = step(mask) if step else mask
                per_image[mode][t, i] = thresholded_jaccard(*confusion_counts(mask, truth)[:3])
    table = pd.DataFrame([{"threshold": threshold, "mode": mode, "isic_task1_jaccard": float(scores[t].mean())}
                          for mode, scores in per_image.items() for t, threshold in enumerate(grid)])
    best = table["isic_task1_jaccard"].max()
    for mode in POSTPROCESS_MODES:
        tied = table[(table["mode"] == mode) & (table["isic_task1_jaccard"] == best)]
        if len(tied):
            return MaskPostprocess(_closest_to_half(tied["threshold"].tolist()), mode), table
    raise AssertionError("the best score belongs to some mode")  # unreachable


def choose_attribute_thresholds(probability_maps: Sequence[np.ndarray] | np.ndarray,
                                truth: Sequence[np.ndarray] | np.ndarray,
                                thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> tuple[float, ...]:
    """One threshold per attribute channel, each maximising that attribute's ISIC 2018 Task 2 Jaccard.

    ``probability_maps`` and ``truth`` are (N, C, H, W) arrays or lists of (C, H, W) arrays
    (sizes may differ between images). The Jaccard is Task 2's: per image the confusion
    counts divided by its pixel count, summed over images, Jaccard of the sums
    (`derm.metrics.normalized_confusion_counts`, `derm.metrics.attribute_scores`); an
    attribute absent from truth and prediction everywhere scores 1. Ties go to the
    threshold closest to 0.5. Choose on validation or out-of-fold predictions only.
    """
    if len(probability_maps) != len(truth) or not len(probability_maps):
        raise ValueError(f"need the same positive number of probability maps and truth masks, "
                         f"got {len(probability_maps)} and {len(truth)}")
    grid = _threshold_grid(thresholds)
    channels = np.asarray(probability_maps[0]).shape[0]
    summed = np.zeros((len(grid), channels, 4))  # threshold x attribute x (tp, fp, fn, tn)
    for probabilities, true in zip(probability_maps, truth):
        probabilities, true = np.asarray(probabilities), np.asarray(true, dtype=bool)
        for t, threshold in enumerate(grid):
            summed[t] += normalized_confusion_counts(probabilities[None] > threshold, true[None])[0]
    jaccard = jaccard_from_counts(summed[..., 0], summed[..., 1], summed[..., 2])  # (thresholds, C)
    chosen = []
    for c in range(channels):
        best = jaccard[:, c].max()
        chosen.append(_closest_to_half([grid[t] for t in np.flatnonzero(jaccard[:, c] == best)]))
    return tuple(chosen)
