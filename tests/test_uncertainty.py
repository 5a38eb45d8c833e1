"""The leaderboard's intervals and its paired comparison with rank 1 (derm.sweep.uncertainty)."""

import numpy as np
import pandas as pd
import pytest

from derm.metrics.bootstrap import share_at_least_as_good
from derm.metrics.per_image import SplitPredictions
from derm.sweep.board import sweep_board
from derm.sweep.export import export_board
from derm.sweep.uncertainty import CI_HIGH, CI_LOW, SHARE, TIED, trial_predictions


def test_paired_share_matches_the_hand_computed_probability():
    # A is right on images 0 and 1 and wrong on 2; B is right on all three. On a resample A
    # scores at least as well as B exactly when image 2 is not drawn: (2/3)^3 = 8/27.
    a, b = np.array([1.0, 1.0, 0.0]), np.array([1.0, 1.0, 1.0])
    shares = share_at_least_as_good(lambda i: {"acc": a[i].mean()}, lambda i: {"acc": b[i].mean()}, 3,
                                    n_resamples=20000, seed=0)
    assert shares["acc"] == pytest.approx(8 / 27, abs=0.01)
    # The same images for both: against itself a trial is at least as good on every resample.
    assert share_at_least_as_good(lambda i: {"acc": a[i].mean()}, lambda i: {"acc": a[i].mean()}, 3,
                                  n_resamples=200)["acc"] == 1.0


def test_predictions_keep_their_records_through_a_file(tmp_path):
    predictions = SplitPredictions("multitask", ["a", "b"], class_probabilities=np.eye(7)[[0, 1]],
                                   labels=np.array([0, 0]), lesion_counts=np.array([[5, 1, 0, 10], [0, 0, 3, 13]]),
                                   has_mask=np.array([True, True]), epoch=3)
    loaded = SplitPredictions.load(predictions.save(tmp_path / "val_predictions.npz"))
    assert loaded.image_ids == ["a", "b"] and loaded.epoch == 3
    assert loaded.metrics() == pytest.approx(predictions.metrics(), nan_ok=True)
    assert loaded.select([1, 0]).image_ids == ["b", "a"]
    assert predictions.metrics(only=("balanced_accuracy", "dice")) == pytest.approx(
        {k: predictions.metrics()[k] for k in ("balanced_accuracy", "dice")})


def test_the_leaderboard_shows_each_trials_interval_and_marks_trials_tied_with_rank_1(finished_sweep, tmp_path):
    plan, board = sweep_board(finished_sweep)
    trained = board[board["epochs_trained"] > 0]
    assert len(trained) == 2
    for _, row in trained.iterrows():
        predictions = trial_predictions(plan.experiment_path, row["trial_id"])
        assert predictions.epoch == row["epoch"]  # the epoch the row reports
        assert row[CI_LOW] <= row["score"] <= row[CI_HIGH]
    leader, other = trained.iloc[0], trained.iloc[1]
    assert leader[TIED] and leader[SHARE] == 1.0
    assert 0.0 <= other[SHARE] <= 1.0 and other[TIED] == (other[SHARE] >= 0.05)
    failed = board[board["status"] == "failed"].iloc[0]
    assert np.isnan(failed[CI_LOW]) and not failed[TIED]
    again = sweep_board(finished_sweep)[1]  # seeded: the same sweep gives the same table
    pd.testing.assert_series_equal(board[CI_LOW], again[CI_LOW])
    (markdown,) = export_board(board, plan.space, tmp_path, formats=("md",), plots=False)
    text = markdown.read_text()
    assert "score 95% CI" in text and "≈ #1" in text
    assert "not distinguishable from rank 1 at the 5% level" in text and "1000 resamples, seed 0" in text
