"""Binary confusion counts per image, and the overlap scores computed from them.

Counts first, then scores (as in SMP's ``metrics/functional.py``): every
segmentation metric in derm is a function of (tp, fp, fn, tn), so counts from
many batches can be summed or averaged before a score is taken.

Empty-mask convention (ISIC 2018, ``isic_challenge_scoring.metrics.binary_jaccard``
and ``binary_dice``): when truth and prediction are both empty (tp + fp + fn = 0)
Jaccard and Dice are 1, a perfect answer, not 0/0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# ISIC 2018 Task 1: a per-image Jaccard below this counts as a failed segmentation (0).
ISIC_TASK1_THRESHOLD = 0.65


def to_numpy(values: Any) -> np.ndarray:
    """``values`` as a NumPy array; torch tensors are detached and moved to the CPU once.

    Low-precision float tensors (bf16, fp16) become float32 first, since NumPy has no
    bfloat16.
    """
    if hasattr(values, "detach"):  # a torch.Tensor, without importing torch here
        tensor = values.detach()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return np.asarray(values)


def binarize(values: Any, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask ``values > threshold`` (probabilities: 0.5; 8-bit PNG masks: 128).

    Strictly greater, like the ISIC scorer's ``> 128`` on 8-bit masks; boolean
    input stays as it is.
    """
    array = to_numpy(values)
    if array.dtype == bool:
        return array
    return array > threshold


def confusion_counts(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, fn, tn) of two boolean masks, counted over the last two (spatial) axes.

    Shapes (H, W) give scalars, (N, H, W) one count per image, (N, C, H, W) one
    count per image and channel. Counts are int64.

    >>> pred = np.array([[1, 1], [0, 0]], bool)
    >>> true = np.array([[1, 0], [1, 0]], bool)
    >>> [int(c) for c in confusion_counts(pred, true)]
    [1, 1, 1, 1]
    """
    pred, true = to_numpy(pred).astype(bool, copy=False), to_numpy(true).astype(bool, copy=False)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {true.shape}")
    if pred.ndim < 2:
        raise ValueError(f"masks need two spatial axes, got shape {pred.shape}")
    spatial = (-2, -1)
    pixels = pred.shape[-2] * pred.shape[-1]
    tp = np.logical_and(pred, true).sum(axis=spatial, dtype=np.int64)
    predicted = pred.sum(axis=spatial, dtype=np.int64)
    positive = true.sum(axis=spatial, dtype=np.int64)
    fp, fn = predicted - tp, positive - tp
    tn = pixels - tp - fp - fn
    return tp, fp, fn, tn


def _ratio_or_one(numerator, denominator) -> np.ndarray | float:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator == 0, 1.0, denominator)
    result = np.where(denominator == 0, 1.0, numerator / safe)
    return float(result) if result.ndim == 0 else result


def jaccard_from_counts(tp, fp, fn) -> np.ndarray | float:
    """Jaccard (IoU) tp / (tp + fp + fn); 1 where truth and prediction are both empty.

    Works elementwise on arrays of counts (one value per image) or on sums.

    >>> jaccard_from_counts(3, 1, 2)
    0.5
    >>> jaccard_from_counts(0, 0, 0)
    1.0
    """
    tp = np.asarray(tp)
    return _ratio_or_one(tp, tp + np.asarray(fp) + np.asarray(fn))


def dice_from_counts(tp, fp, fn) -> np.ndarray | float:
    """Dice (F1) 2 tp / (2 tp + fp + fn); 1 where truth and prediction are both empty.

    >>> dice_from_counts(3, 1, 2)
    0.6666666666666666
    """
    tp = np.asarray(tp)
    return _ratio_or_one(2 * tp, 2 * tp + np.asarray(fp) + np.asarray(fn))


def thresholded_jaccard(tp, fp, fn, threshold: float = ISIC_TASK1_THRESHOLD) -> np.ndarray | float:
    """ISIC 2018 Task 1 per-image score: the Jaccard, or 0 where it is below ``threshold``.

    >>> thresholded_jaccard(3, 1, 2)   # Jaccard 0.5 < 0.65
    0.0
    >>> thresholded_jaccard(13, 3, 4)  # Jaccard 0.65 counts
    0.65
    """
    jaccard = np.asarray(jaccard_from_counts(tp, fp, fn))
    result = np.where(jaccard >= threshold, jaccard, 0.0)
    return float(result) if result.ndim == 0 else result
