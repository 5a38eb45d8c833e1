"""Ensembles average their members' probabilities; per-image predictions score like the training loop."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from derm.data.splits import read_split
from derm.inference import load_model
from derm.retrain import load_test_split
from derm.metrics import ClassificationAccumulator, SegmentationAccumulator
from derm.predictions import average_probabilities, predict_batches, predict_split
from derm.retrain_best import main
from derm.training import evaluate

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sweep_models(finished_sweep):
    """The finished sweep's two completed trials, as trained by the sweep (their last checkpoints)."""
    checkpoints = sorted(finished_sweep.glob("trial_*/checkpoint_*/latest.pt"))
    latest_per_trial = {path.parent.parent.name: path for path in checkpoints}
    assert len(latest_per_trial) == 2
    models, configs = zip(*(load_model(path, CPU) for path in latest_per_trial.values()))
    split = read_split(finished_sweep / "split.csv")
    loader, _ = load_test_split(configs[0], split, CPU, log=lambda message: None)
    return list(models), configs[0], loader


def test_average_probabilities_by_hand():
    mean = average_probabilities([
        {"cls": torch.tensor([[0.6, 0.4]]), "seg": torch.tensor([[[[0.2, 1.0]]]])},
        {"cls": torch.tensor([[0.2, 0.8]]), "seg": torch.tensor([[[[0.4, 0.0]]]])},
    ])
    assert torch.allclose(mean["cls"], torch.tensor([[0.4, 0.6]]))
    assert torch.allclose(mean["seg"], torch.tensor([[[[0.3, 0.5]]]]))
    with pytest.raises(ValueError, match="different heads"):
        average_probabilities([{"cls": torch.ones(1, 2)}, {"seg": torch.ones(1, 1, 2, 2)}])


def test_the_ensemble_of_two_trained_models_is_the_mean_of_their_probabilities(sweep_models):
    models, cfg, loader = sweep_models
    members, ensemble = predict_split(models, loader, CPU, cfg.task, keep_samples=4)

    first, second = members
    assert not np.allclose(first.class_probabilities, second.class_probabilities), "members should differ"
    np.testing.assert_allclose(ensemble.class_probabilities,
                               (first.class_probabilities + second.class_probabilities) / 2, rtol=1e-6)
    np.testing.assert_allclose(ensemble.class_probabilities.sum(axis=1), 1.0, rtol=1e-6)
    for mean, a, b in zip(ensemble.samples, first.samples, second.samples):
        assert mean.image_id == a.image_id == b.image_id
        np.testing.assert_allclose(mean.probability, (a.probability + b.probability) / 2, rtol=1e-5, atol=1e-7)
    # The ensemble's lesion counts come from its averaged masks, thresholded at 0.5.
    for k, sample in enumerate(ensemble.samples):
        predicted, truth = sample.probability[0] > 0.5, sample.true_mask[0]
        assert ensemble.lesion_counts[k, 0] == np.sum(predicted & truth)
        assert ensemble.lesion_counts[k, 1] == np.sum(predicted & ~truth)


def test_the_training_loop_scores_its_per_image_predictions_as_the_isic_accumulators_do(sweep_models):
    models, cfg, loader = sweep_models
    metrics, predictions = evaluate(models[0], loader, cfg.task, CPU)
    classes, lesions = ClassificationAccumulator(), SegmentationAccumulator()
    for batch, _, probs in predict_batches(models[0], loader, CPU):
        classes.update(probs["cls"], batch["label"])
        lesions.update(probs["seg"], batch["mask"])
    expected = {**classes.compute(), **lesions.compute()}
    assert len(predictions) == len(loader.dataset) and set(expected) <= set(metrics)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-9), name
    (alone,), _ = predict_split(models[:1], loader, CPU, cfg.task)
    assert alone.metrics() == pytest.approx(predictions.metrics())
    # Scoring a resample: the first image twice counts twice.
    twice = predictions.metrics(np.array([0, 0]))
    assert twice["accuracy"] in (0.0, 1.0)
    assert twice["dice_per_image"] == pytest.approx(predictions.metrics(np.array([0]))["dice_per_image"])


def test_top_two_ensemble_compares_the_ensemble_with_each_member(finished_sweep, tmp_path):
    out = tmp_path / "ensemble"
    assert main([str(finished_sweep), "--top", "2", "--ensemble", "--ensemble-weights", "equal", "--bootstrap", "20",
                 "--out", str(out)]) == 0

    summary = json.loads((out / "metrics.json").read_text())
    assert summary["mode"] == "ensemble"
    assert [(m["rank"], m["seed"]) for m in summary["members"]] == [(1, 0), (2, 0)]
    assert [m["epochs"] for m in summary["members"]] == [m["sweep_best_epoch"] for m in summary["members"]]
    assert 0.0 <= summary["ensemble"]["metrics"]["balanced_accuracy"] <= 1.0
    assert set(summary["ensemble"]["ci95"]) >= {"score", "dice", "balanced_accuracy"}
    # The interval is the ensemble's own, resampled within the true classes.
    assert summary["bootstrap"]["method"] == "stratified by true class"
    assert summary["bootstrap"]["of"] == "the ensemble of 2 models (mean probabilities)"
    # Not ece: binned calibration error rises on resamples (repeated images), so with 20
    # resamples its percentile interval may start just above the estimate.
    for name in ("score", "balanced_accuracy", "accuracy", "f1_macro", "auroc", "dice", "dice_per_image"):
        low, high = summary["ensemble"]["ci95"][name]
        assert low - 1e-12 <= summary["ensemble"]["metrics"][name] <= high + 1e-12, name
    table = (out / "ensemble.md").read_text()
    assert ("stratified percentile bootstrap over test images by true class (20 resamples, seed 0), "
            "of the ensemble of 2 models (mean probabilities).") in table
    assert "| ensemble (mean probabilities) |" in table
    assert "rank1-seed0" in table and "rank2-seed0" in table
    for name in ("classification_report.txt", "confusion_matrix.png", "roc_curves.png", "calibration.png"):
        assert (out / name).is_file()
    for member in summary["members"]:
        assert (out / "members" / member["label"] / "checkpoints" / "best.pt").is_file()


def test_caruana_weights_come_from_validation_and_only_picked_configurations_are_retrained(finished_sweep, tmp_path):
    from derm.checkpoint import TrainingCheckpoint
    from derm.sweep.uncertainty import trial_predictions
    from derm.sweep.plan import load_plan

    out = tmp_path / "caruana"
    assert main([str(finished_sweep), "--top", "2", "--ensemble", "--bootstrap", "0", "--out", str(out),
                 "--no-mlflow", "--quiet"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    selection = summary["selection"]
    assert selection["method"] == "Caruana ensemble selection on validation balanced_accuracy"
    weights = selection["weights"]
    assert set(weights) == {"rank1", "rank2"} and sum(weights.values()) == pytest.approx(1.0)
    picked = {name for name, weight in weights.items() if weight > 0}
    assert {f"rank{m['rank']}" for m in summary["members"]} == picked  # weight 0: not retrained

    # The validation figures are those of the trials' own saved predictions, recomputed here.
    plan = load_plan(finished_sweep)
    singles = {}
    board = pd.read_csv(finished_sweep / "leaderboard.csv", dtype={"trial_id": str})
    for rank in (1, 2):
        trial = board.loc[board["rank"] == rank, "trial_id"].item()
        predictions = trial_predictions(plan.experiment_path, trial)
        singles[f"rank{rank}"] = predictions.metrics()["balanced_accuracy"]
    for name, value in singles.items():
        assert selection["validation"]["single"][name] == pytest.approx(value)
    assert selection["validation"]["ensemble"] >= max(singles.values()) - 1e-12  # never worse than the best single
    assert "## Weights" in (out / "ensemble.md").read_text()

    saved = TrainingCheckpoint.load(out / "model.pt")
    if len(picked) > 1:
        assert saved.ensemble_weights == pytest.approx([weights[f"rank{m['rank']}"] for m in summary["members"]])
    else:
        assert saved.ensemble is None  # one configuration left: a plain single-model file
