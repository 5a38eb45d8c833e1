"""Caruana ensemble selection: greedy forward selection with replacement, weights from pick counts."""

import numpy as np
import pytest
from sklearn.metrics import log_loss

from derm.retrain.ensemble_selection import caruana_selection

N, K = 400, 7


def informative(labels, rng, strength=1.5, noise=1.5):
    """Class probabilities that favour the true class, with this member's own noise."""
    logits = strength * np.eye(K)[labels] + noise * rng.normal(size=(len(labels), K))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture
def library():
    """Two informative members with independent errors and one member of pure noise (index 1)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, N)
    noise = rng.dirichlet(np.ones(K), size=N)
    return labels, [informative(labels, rng), noise, informative(labels, rng)]


def test_the_noise_member_gets_weight_zero_and_the_score_never_decreases(library):
    labels, members = library
    selection = caruana_selection(members, lambda p: -log_loss(labels, p, labels=range(K)), rounds=25)
    assert selection.weights[1] == 0.0 and selection.counts[1] == 0
    assert selection.weights[0] > 0 and selection.weights[2] > 0  # two independent opinions beat one
    assert selection.weights.sum() == pytest.approx(1.0)
    assert np.all(np.diff(selection.history) >= 0)
    assert len(selection.history) == len(selection.picks) == selection.counts.sum()
    # The chosen ensemble beats its best member alone, on the data it was chosen on.
    assert selection.score > selection.single_scores.max() + 0.01
    assert selection.best_single in (0, 2)
    averaged = sum(w * p for w, p in zip(selection.weights, members))
    assert -log_loss(labels, averaged, labels=range(K)) == pytest.approx(selection.score)


def test_a_loss_is_minimised_the_same_way(library):
    labels, members = library
    as_score = caruana_selection(members, lambda p: -log_loss(labels, p, labels=range(K)))
    as_loss = caruana_selection(members, lambda p: log_loss(labels, p, labels=range(K)), maximize=False)
    assert np.array_equal(as_loss.counts, as_score.counts)
    assert np.all(np.diff(as_loss.history) <= 0) and as_loss.best_single == as_score.best_single


def test_picks_and_weights_by_hand():
    # Scalar predictions 1 and 0, target 0.7, score = -(mean - 0.7)^2. Alone: -0.09 and -0.49, so start
    # with member 0. Round 1: +0 -> mean 1 (-0.09), +1 -> 0.5 (-0.04): member 1. Round 2: +0 -> 2/3
    # (-1/900), +1 -> 1/3: member 0. Round 3: +0 -> 3/4 (-0.0025), +1 -> 1/2 (-0.04): both worse, stop.
    members = [np.array([1.0]), np.array([0.0])]
    selection = caruana_selection(members, lambda p: -float((p[0] - 0.7) ** 2), rounds=10)
    assert selection.picks == [0, 1, 0]
    assert selection.weights.tolist() == pytest.approx([2 / 3, 1 / 3])
    assert selection.history == pytest.approx([-0.09, -0.04, -1 / 900])
    assert selection.single_scores.tolist() == pytest.approx([-0.09, -0.49])


def test_sorted_initialisation_starts_from_the_best_members():
    members = [np.array([1.0]), np.array([0.0]), np.array([0.9])]
    selection = caruana_selection(members, lambda p: -float((p[0] - 0.7) ** 2), rounds=0, init=2)
    assert selection.picks == [2, 0]  # the two best alone (0.9 then 1.0), each once
    assert selection.weights.tolist() == pytest.approx([0.5, 0.0, 0.5])
    assert selection.history == pytest.approx([-(0.95 - 0.7) ** 2])


def test_mask_predictions_work_alike_with_a_dice_score():
    rng = np.random.default_rng(1)
    truth = np.zeros((12, 16, 16), bool)
    truth[:, 4:12, 3:13] = True

    def noisy(scale):
        return np.clip(truth + scale * rng.normal(size=truth.shape), 0, 1)

    def dice(probabilities):
        predicted = probabilities > 0.5
        return 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())

    members = [noisy(0.45), rng.random(truth.shape), noisy(0.45)]
    selection = caruana_selection(members, dice)
    assert selection.weights[1] == 0.0 and selection.weights[[0, 2]].min() > 0
    assert selection.score > selection.single_scores.max()


def test_mistakes_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        caruana_selection([], lambda p: 0.0)
    with pytest.raises(ValueError):
        caruana_selection([np.zeros((2, 3)), np.zeros((3, 3))], lambda p: 0.0)
    with pytest.raises(ValueError, match="init between 1 and 2"):
        caruana_selection([np.zeros(2), np.ones(2)], lambda p: 0.0, init=3)
