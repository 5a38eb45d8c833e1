"""Class-probability calibration and the melanoma operating points dermatology papers report.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks")
divides the logits by one number T fitted on validation (or out-of-fold) predictions:
T > 1 softens over-confident probabilities, T < 1 sharpens them, and the argmax (so
accuracy and balanced accuracy) never changes. derm keeps probabilities, not logits;
log p equals the logits up to a per-image constant, which softmax ignores, so
softmax(log p / T) is exactly softmax(logits / T).

Expected calibration error before and after is `derm.metrics.expected_calibration_error`.

    temperature = fit_temperature(val_probabilities, val_labels)
    calibrated = apply_temperature(test_probabilities, temperature)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import roc_curve

from derm.labels import CLASSES

# log(0) is -inf; clipping keeps a class the model ruled out at a finite, tiny logit.
PROBABILITY_FLOOR = 1e-12
TEMPERATURE_RANGE = (0.05, 20.0)
# The specificities dermatology papers report melanoma sensitivity at.
MELANOMA_SPECIFICITIES = (0.80, 0.90)
MELANOMA = CLASSES.index("MEL")


def _log_probabilities(probabilities: Any) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR, None))


def apply_temperature(probabilities: Any, temperature: float) -> np.ndarray:
    """softmax(log p / T) over the last axis: (N, K) or (K,) probabilities, calibrated.

    >>> apply_temperature([0.8, 0.2], 2.0).round(4)   # sqrt(0.8) : sqrt(0.2) = 2 : 1
    array([0.6667, 0.3333])
    """
    if not temperature > 0:
        raise ValueError(f"a temperature must be positive, got {temperature}")
    return softmax(_log_probabilities(probabilities) / temperature, axis=-1)


def temperature_nll(probabilities: Any, labels: Any, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under `apply_temperature` (probabilities, T)."""
    log_p = log_softmax(_log_probabilities(probabilities) / temperature, axis=1)
    labels = np.asarray(labels, dtype=np.int64)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(probabilities: Any, labels: Any) -> float:
    """The temperature minimising the NLL of (N, K) ``probabilities`` for (N,) integer ``labels``.

    Searched over log T (bounded, T in `TEMPERATURE_RANGE`), where the NLL is smooth and
    symmetric in sharpening and softening. Fit on validation or out-of-fold predictions,
    never on test.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or not len(labels):
        raise ValueError(f"need (N, K) probabilities and N labels, N > 0; got {probabilities.shape} and {labels.shape}")
    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(lambda log_t: temperature_nll(probabilities, labels, float(np.exp(log_t))),
                             bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def sensitivity_at_specificity(scores: Any, is_positive: Any, specificity: float) -> float:
    """Sensitivity at the best operating point whose specificity is at least ``specificity``.

    Precisely: of the ROC curve's thresholds (`sklearn.metrics.roc_curve`, every distinct
    score), those with FPR <= 1 - ``specificity`` (up to 1e-9, so that 1/5 counts as 0.2);
    the highest TPR among them. A threshold above every score (TPR 0, FPR 0) always
    qualifies. NaN when there are no positives or no negatives.

    >>> # scores 0.9 0.8 0.7 0.6 0.5 0.4 0.3 0.2 0.1 ; positive: 1 1 0 1 0 0 0 0 0
    >>> # cut > 0.85: TPR 1/3 FPR 0; > 0.75: 2/3, 0; > 0.65: 2/3, 1/6; > 0.55: 1, 1/6; > 0.45: 1, 2/6
    >>> sensitivity_at_specificity([.9, .8, .7, .6, .5, .4, .3, .2, .1], [1, 1, 0, 1, 0, 0, 0, 0, 0], 0.8)
    1.0
    >>> sensitivity_at_specificity([.9, .8, .7, .6, .5, .4, .3, .2, .1], [1, 1, 0, 1, 0, 0, 0, 0, 0], 0.9)
    0.6666666666666666
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(is_positive, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    allowed = fpr <= 1.0 - specificity + 1e-9
    return float(tpr[allowed].max())


def melanoma_operating_points(probabilities: Any, labels: Any,
                              specificities: tuple[float, ...] = MELANOMA_SPECIFICITIES) -> dict[str, float]:
    """Melanoma-vs-rest sensitivity at each specificity, scored by P(MEL).

    Keys ``mel_sensitivity_at_spec80``, ``mel_sensitivity_at_spec90`` (the percentage
    rounded); values NaN when the labels hold no melanoma or only melanoma. Temperature
    scaling can move them a little: it keeps each image's order of classes, but P(MEL)
    after scaling depends on the image's other classes too, so the order of images by
    P(MEL) may change.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    is_melanoma = np.asarray(labels) == MELANOMA
    return {f"mel_sensitivity_at_spec{round(100 * s)}":
            sensitivity_at_specificity(probabilities[:, MELANOMA], is_melanoma, s) for s in specificities}
