"""derm.calibration: temperature scaling and melanoma sensitivity at fixed specificity."""

import numpy as np
import pytest
from scipy.special import softmax

from derm.calibration import (
    apply_temperature,
    fit_temperature,
    melanoma_operating_points,
    sensitivity_at_specificity,
    temperature_nll,
)
from derm.labels import CLASSES
from derm.metrics import expected_calibration_error


def test_temperature_of_a_hand_checkable_case():
    # Every row says 0.8 : 0.2 and class 0 is right 2 times in 3. With T, P(class 0) is
    # 0.8^(1/T) / (0.8^(1/T) + 0.2^(1/T)) = 1 / (1 + 4^(-1/T)); the NLL is least where
    # that equals 2/3, i.e. 4^(-1/T) = 1/2, T = 2.
    probabilities = np.array([[0.8, 0.2]] * 3)
    temperature = fit_temperature(probabilities, [0, 0, 1])
    assert temperature == pytest.approx(2.0, rel=1e-3)
    assert apply_temperature(probabilities, temperature)[0] == pytest.approx([2 / 3, 1 / 3], rel=1e-3)
    assert temperature_nll(probabilities, [0, 0, 1], 2.0) == pytest.approx(-(2 * np.log(2 / 3) + np.log(1 / 3)) / 3)


def test_fit_temperature_recovers_the_overconfidence_of_a_simulated_model():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, size=(20000, len(CLASSES)))
    true_probabilities = softmax(logits, axis=1)
    # Inverse-CDF sampling: each label drawn from its row's true distribution.
    labels = (true_probabilities.cumsum(axis=1) < rng.random((len(logits), 1))).sum(axis=1)
    labels = np.minimum(labels, len(CLASSES) - 1)  # guards a cumsum that rounds to just under 1
    overconfident = softmax(2.0 * logits, axis=1)  # = softmax(true logits / 0.5): undo with T = 2

    temperature = fit_temperature(overconfident, labels)

    assert temperature == pytest.approx(2.0, rel=0.05)
    calibrated = apply_temperature(overconfident, temperature)
    assert np.array_equal(calibrated.argmax(axis=1), overconfident.argmax(axis=1))  # decisions unchanged
    assert expected_calibration_error(calibrated, labels) < 0.5 * expected_calibration_error(overconfident, labels)


def test_apply_temperature_one_is_the_identity_and_zero_probabilities_stay_finite():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    assert np.allclose(apply_temperature(probabilities, 1.0), probabilities, atol=1e-11)
    softened = apply_temperature(probabilities, 3.0)
    assert np.isfinite(softened).all() and np.allclose(softened.sum(axis=1), 1.0)
    # (0.7 : 0.2 : 0.1) ^ (1/3), normalised
    expected = np.array([0.7, 0.2, 0.1]) ** (1 / 3)
    assert softened[0] == pytest.approx(expected / expected.sum())
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(probabilities, 0.0)


def test_sensitivity_at_specificity_by_hand():
    scores = [0.9, 0.8, 0.8, 0.3, 0.2]
    positive = [True, False, True, False, False]
    # ROC (2 positives, 3 negatives), by threshold:
    #   >= 0.9: TPR 1/2, FPR 0     (specificity 1)
    #   >= 0.8: TPR 1,   FPR 1/3   (tied 0.8s enter together; specificity 2/3)
    #   >= 0.3: TPR 1,   FPR 2/3
    assert sensitivity_at_specificity(scores, positive, 0.9) == 0.5
    assert sensitivity_at_specificity(scores, positive, 2 / 3) == 1.0   # FPR 1/3 exactly allowed
    assert sensitivity_at_specificity(scores, positive, 0.7) == 0.5
    assert np.isnan(sensitivity_at_specificity(scores, [False] * 5, 0.8))


def test_melanoma_operating_points_score_melanoma_against_the_rest():
    mel, nv = CLASSES.index("MEL"), CLASSES.index("NV")
    p_mel = np.array([0.9, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.7])
    labels = np.array([mel, nv, mel, nv, nv, nv, nv, nv, nv, nv, nv])
    probabilities = np.zeros((len(labels), len(CLASSES)))
    probabilities[:, mel], probabilities[:, nv] = p_mel, 1 - p_mel
    # 2 melanomas (0.9, 0.5), 9 others (highest 0.7, 0.6, 0.4, ...).
    # Specificity >= 0.9 allows FPR <= 0.1 < 1/9: no negative above the cut, only 0.9 -> TPR 1/2.
    # Specificity >= 0.8 allows FPR <= 0.2, one negative (1/9): the cut at 0.7 -> still 1/2, since
    # reaching the melanoma at 0.5 lets in 0.7 and 0.6 (FPR 2/9 > 0.2).
    assert melanoma_operating_points(probabilities, labels) == {
        "mel_sensitivity_at_spec80": 0.5, "mel_sensitivity_at_spec90": 0.5}
    # Without the negative at 0.6 (8 negatives left), the cut at 0.5 has FPR 1/8 <= 0.2: both melanomas.
    keep = p_mel != 0.6
    points = melanoma_operating_points(probabilities[keep], labels[keep])
    assert points == {"mel_sensitivity_at_spec80": 1.0, "mel_sensitivity_at_spec90": 0.5}
