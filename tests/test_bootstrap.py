"""derm.metrics.bootstrap: resampling within true classes keeps every class, so class averages stay unbiased."""

import numpy as np
import pytest

from derm.labels import CLASSES
from derm.metrics import balanced_accuracy, precision_recall_f1
from derm.metrics.bootstrap import bootstrap_ci, resample_indices, resampled_values, share_at_least_as_good

MEL, NV, AKIEC, BKL, DF, VASC = (CLASSES.index(name) for name in ("MEL", "NV", "AKIEC", "BKL", "DF", "VASC"))

# A 60-image test split like the demo's: NV 40 (36 right), MEL 10 (5 right), BKL 6 (3 right),
# AKIEC 2, DF 1, VASC 1 (none right). Balanced accuracy = (0.9 + 0.5 + 0.5 + 0 + 0 + 0) / 6.
LABELS = np.array([NV] * 40 + [MEL] * 10 + [BKL] * 6 + [AKIEC] * 2 + [DF] + [VASC])
PREDICTED = np.array([NV] * 36 + [MEL] * 4 + [MEL] * 5 + [NV] * 5 + [BKL] * 3 + [NV] * 3 + [NV] * 4)
POINT = 1.9 / 6


def class_averaged(indices):
    return {"balanced_accuracy": balanced_accuracy(PREDICTED[indices], LABELS[indices]),
            "f1_macro": precision_recall_f1(PREDICTED[indices], LABELS[indices])["f1_macro"]}


def test_the_constructed_case_by_hand():
    assert class_averaged(np.arange(60))["balanced_accuracy"] == pytest.approx(POINT)


def test_stratified_resamples_keep_every_class_and_its_count():
    indices = resample_indices(60, 1000, seed=0, strata=LABELS)
    assert indices.shape == (1000, 60)
    counts = np.stack([np.bincount(LABELS[row], minlength=len(CLASSES)) for row in indices])
    assert (counts == np.bincount(LABELS, minlength=len(CLASSES))).all()
    # Each position keeps its own class: the single DF image is drawn at its own place every time.
    assert (LABELS[indices] == LABELS).all()
    assert (indices[:, LABELS == DF] == np.flatnonzero(LABELS == DF)).all()
    # Seeded: the same seed, the same draws; another seed, others.
    assert (indices == resample_indices(60, 1000, seed=0, strata=LABELS)).all()
    assert not (indices == resample_indices(60, 1000, seed=1, strata=LABELS)).all()


def test_the_stratified_interval_contains_the_point_estimate_and_is_centred_on_it():
    point = class_averaged(np.arange(60))
    intervals = bootstrap_ci(class_averaged, 60, strata=LABELS, n_resamples=1000, seed=0)
    for name, (low, high) in intervals.items():
        assert low < point[name] < high, name
    # Balanced accuracy is the mean of per-class recalls, and resampling within a class
    # leaves that class's expected recall unchanged: the resamples centre on the estimate.
    values = resampled_values(class_averaged, resample_indices(60, 1000, seed=0, strata=LABELS))
    assert values["balanced_accuracy"].mean() == pytest.approx(POINT, abs=0.01)
    assert 0.4 < np.mean(values["balanced_accuracy"] < POINT) < 0.6


def test_the_plain_image_bootstrap_drops_the_single_image_class_and_is_biased_upward():
    plain = resample_indices(60, 1000, seed=0)
    dropped_df = ~(LABELS[plain] == DF).any(axis=1)
    assert dropped_df.mean() == pytest.approx((59 / 60) ** 60, abs=0.05)  # about 0.36
    plain_values = resampled_values(class_averaged, plain)["balanced_accuracy"]
    # Leaving out a class with recall 0 raises the average over the classes left (by 6/5 here).
    assert plain_values[dropped_df].mean() > plain_values[~dropped_df].mean() + 0.04
    assert plain_values.mean() > POINT + 0.04
    assert np.mean(plain_values < POINT) < 0.3
    plain_low, plain_high = bootstrap_ci(class_averaged, 60, n_resamples=1000, seed=0)["balanced_accuracy"]
    low, high = bootstrap_ci(class_averaged, 60, strata=LABELS, n_resamples=1000, seed=0)["balanced_accuracy"]
    assert plain_high > high + 0.1  # the plain interval reaches far above the stratified one
    assert (POINT - plain_low) < 0.5 * (plain_high - POINT)  # lopsided: the estimate near its bottom


def test_the_issues_case_where_the_estimate_sits_at_the_bottom_of_the_plain_interval():
    # Every common class right, the rare ones all wrong: no resample can score below the
    # estimate, and one without DF, VASC or AKIEC scores above it.
    predicted = np.where(np.isin(LABELS, [AKIEC, DF, VASC]), NV, LABELS)
    point = balanced_accuracy(predicted, LABELS)
    assert point == pytest.approx(3 / 6)

    def statistic(indices):
        return {"balanced_accuracy": balanced_accuracy(predicted[indices], LABELS[indices])}

    plain_low, plain_high = bootstrap_ci(statistic, 60, n_resamples=1000, seed=0)["balanced_accuracy"]
    assert plain_low == pytest.approx(point) and plain_high >= 3 / 5  # 0.6: one rare class left out
    assert bootstrap_ci(statistic, 60, strata=LABELS, n_resamples=1000, seed=0)["balanced_accuracy"] == (
        pytest.approx(point), pytest.approx(point))


def test_images_without_a_label_are_a_stratum_of_their_own():
    labels = np.array([-1, 0, -1, 1, 1, -1])
    indices = resample_indices(6, 200, seed=3, strata=labels)
    assert (labels[indices] == labels).all()
    assert set(indices[:, labels == -1].ravel()) == {0, 2, 5}  # drawn among the unlabelled only
    with pytest.raises(ValueError, match="one group label per item"):
        resample_indices(5, 10, strata=labels)


def test_without_strata_the_draws_are_the_plain_seeded_image_bootstrap():
    np.testing.assert_array_equal(resample_indices(30, 50, seed=4),
                                  np.random.default_rng(4).integers(0, 30, size=(50, 30)))
    # One stratum is the plain bootstrap's distribution, not its draws: all items, any positions.
    assert set(resample_indices(4, 200, seed=0, strata=np.zeros(4)).ravel()) == {0, 1, 2, 3}


def test_share_at_least_as_good_by_hand():
    # Image 0: A right, B wrong; image 1: A wrong, B right. A resample of {0, 0} favours A,
    # {1, 1} favours B, {0, 1} ties: A is at least as good in 1/4 + 1/2 of the resamples.
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])

    def accuracy_of(correct):
        return lambda indices: {"accuracy": correct[indices].mean(), "error": 1 - correct[indices].mean()}

    shares = share_at_least_as_good(accuracy_of(a), accuracy_of(b), 2, n_resamples=4000, seed=0,
                                    lower_is_better={"error"})
    assert shares["accuracy"] == pytest.approx(0.75, abs=0.03)
    assert shares["error"] == shares["accuracy"]  # lower error is better: the same comparison
    # The same resamples as bootstrap_ci's for the same seed: the share follows from them.
    means = resampled_values(accuracy_of(a), resample_indices(2, 4000, seed=0))["accuracy"]
    assert shares["accuracy"] == np.mean(means >= 1 - means)
    # Stratified with each image its own stratum, every resample is {0, 1}: always a tie.
    assert share_at_least_as_good(accuracy_of(a), accuracy_of(b), 2, strata=[0, 1],
                                  n_resamples=50)["accuracy"] == 1.0


def test_share_at_least_as_good_leaves_out_undefined_resamples():
    a = np.array([1.0, 0.0])

    def sometimes_undefined(indices):
        return {"m": np.nan if (indices == 0).all() else a[indices].mean()}

    shares = share_at_least_as_good(sometimes_undefined, lambda indices: {"m": 0.0}, 2, n_resamples=400, seed=0)
    assert shares["m"] == 1.0
    never = share_at_least_as_good(lambda i: {"m": np.nan}, lambda i: {"m": 0.0}, 2, n_resamples=10)
    assert np.isnan(never["m"])
