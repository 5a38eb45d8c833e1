"""retrain-best: honest test numbers from the sweep's best trial, and the bootstrap behind their intervals."""

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import derm.predictions
import derm.training
from derm.checkpoint import load_checkpoint
from derm.data.loaders import truth_masks
from derm.data.splits import read_split
from derm.inference import Predictor, load_model
from derm.labels import CLASSES
from derm.metrics.bootstrap import bootstrap_ci, percentile_interval, resample_indices
from derm.retrain import load_test_split
from derm.metrics.per_image import SplitPredictions
from derm.retrain.summary import bootstrap_strata
from derm.retrain_best import main

REPORT_FILES = ("model.pt", "config.yaml", "metrics.json", "classification_report.txt", "confusion_matrix.png",
                "roc_curves.png", "calibration.png")


class RecordingLoader:
    """Wraps the training loader and notes the image id of every sample it yields."""

    def __init__(self, loader, seen: set):
        self.loader, self.seen = loader, seen

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        image_ids = self.loader.dataset.arrays.image_ids
        for batch in self.loader:
            self.seen.update(image_ids[int(i)] for i in batch["index"])
            yield batch


@pytest.fixture(scope="module")
def retrained(finished_sweep, tmp_path_factory):
    """`python -m derm.retrain_best --seeds 2` on the finished sweep, with spies on what it reads."""
    out = tmp_path_factory.mktemp("retrained") / "best"
    trained_on, evaluated, evaluate_calls = set(), [], []
    real_epoch, real_predict = derm.training.train_one_epoch, derm.predictions.predict_split

    def recording_epoch(model, loss_fn, optimizer, schedule, scaler, loader, *args, **kwargs):
        return real_epoch(model, loss_fn, optimizer, schedule, scaler, RecordingLoader(loader, trained_on),
                          *args, **kwargs)

    def recording_predict(*args, **kwargs):
        members, ensemble = real_predict(*args, **kwargs)
        evaluated.append(members)
        return members, ensemble

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(derm.training, "train_one_epoch", recording_epoch)
        patch.setattr(derm.training, "evaluate", lambda *a, **k: evaluate_calls.append(a) or {})
        patch.setattr(derm.predictions, "predict_split", recording_predict)
        code = main([str(finished_sweep), "--seeds", "2", "--bootstrap", "50", "--out", str(out)])
    assert code == 0
    return {"out": out, "trained_on": trained_on, "evaluated": evaluated, "evaluate_calls": evaluate_calls,
            "split": read_split(finished_sweep / "split.csv"), "sweep": finished_sweep,
            "printed": printed.getvalue()}


def test_retrain_writes_the_model_the_reports_and_both_seeds(retrained):
    out = retrained["out"]
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.png"))) == 8
    assert "precision    recall  f1-score   support" in (out / "classification_report.txt").read_text()

    summary = json.loads((out / "metrics.json").read_text())
    test_ids = retrained["split"][retrained["split"] == "test"].index
    assert summary["test_images"] == len(test_ids)
    assert summary["rank"] == 1 and summary["trial_id"] == summary["members"][0]["trial_id"]
    board = pd.read_csv(retrained["sweep"] / "leaderboard.csv", dtype={"trial_id": str})
    assert summary["trial_id"] == board.loc[board["rank"] == 1, "trial_id"].item()
    assert summary["epochs"] == int(board.loc[board["rank"] == 1, "epoch"].item())  # its best sweep epoch
    assert [s["seed"] for s in summary["seeds"]] == [0, 1]
    for name in ("score", "balanced_accuracy", "dice"):
        values = [s["metrics"][name] for s in summary["seeds"]]
        assert summary["mean"][name] == pytest.approx(np.mean(values))
        assert summary["std"][name] == pytest.approx(np.std(values, ddof=1))
        low, high = summary["ci95"][name]
        assert 0.0 <= low <= high <= 1.0


def test_every_printed_interval_holds_the_mean_over_seeds_beside_it_and_says_how_it_was_drawn(retrained):
    printed = retrained["printed"]
    assert "mean over 2 seeds ± std over seeds, 95% interval of the same:" in printed
    assert ("95% intervals: stratified percentile bootstrap over test images by true class "
            "(50 resamples, seed 0), of the mean over 2 seeds' models") in printed
    rows = re.findall(r"^  (\w+) (\d\.\d{4}) ± \d\.\d{4}, 95% CI \[(\d\.\d{4}), (\d\.\d{4})\]$", printed, re.M)
    assert {name for name, *_ in rows} >= {"score", "balanced_accuracy", "f1_macro", "dice"}
    for name, value, low, high in rows:
        assert float(low) <= float(value) <= float(high), f"{name} {value} outside [{low}, {high}]"

    summary = json.loads((retrained["out"] / "metrics.json").read_text())
    assert summary["bootstrap"] == {"resamples": 50, "seed": 0, "confidence": 0.95, "interval": "percentile",
                                    "method": "stratified by true class", "of": "the mean over 2 seeds' models"}
    for name, (low, high) in summary["ci95"].items():
        assert low - 1e-12 <= summary["mean"][name] <= high + 1e-12, name


def test_the_bootstrap_resamples_within_true_classes_only_where_the_task_has_a_diagnosis_head():
    labels = np.array([1, 1, 5, -1])
    probabilities = np.full((4, len(CLASSES)), 1 / len(CLASSES))
    for task in ("multitask", "classification"):
        classified = SplitPredictions(task, list("abcd"), class_probabilities=probabilities, labels=labels)
        np.testing.assert_array_equal(bootstrap_strata([classified]), labels)
    assert bootstrap_strata([SplitPredictions("segmentation", list("abcd"),
                                              lesion_counts=np.ones((4, 4), int))]) is None
    assert bootstrap_strata([SplitPredictions("attributes", list("abcd"),
                                              attribute_counts=np.ones((4, 5, 4)))]) is None


def test_no_test_image_is_trained_on_or_used_to_select_and_all_are_evaluated(retrained):
    split = retrained["split"]
    test_ids = set(split[split == "test"].index)
    assert retrained["trained_on"], "the spy saw no training batch"
    assert retrained["trained_on"].isdisjoint(test_ids)
    assert retrained["trained_on"] <= set(split[split != "test"].index)
    assert retrained["trained_on"] & set(split[split == "val"].index), "val should be trained on"
    assert retrained["evaluate_calls"] == [], "no split may be evaluated while retraining"
    (members,) = retrained["evaluated"]  # one pass over the test split, for both seeds at once
    for predictions in members:
        assert sorted(predictions.image_ids) == sorted(test_ids)


def test_model_pt_loads_safely_and_reproduces_the_first_seeds_metrics(retrained):
    """model.pt is an ordinary derm checkpoint: derm.inference rebuilds it and its test metrics hold."""
    out = retrained["out"]
    state = load_checkpoint(out / "model.pt")
    assert state["epoch"] == json.loads((out / "metrics.json").read_text())["epochs"]
    model, cfg = load_model(out / "model.pt", torch.device("cpu"))
    loader, rows = load_test_split(cfg, retrained["split"], torch.device("cpu"), log=lambda message: None)
    (predictions,), _ = derm.predictions.predict_split([model], loader, torch.device("cpu"), cfg.task,
                                                    truth_masks=truth_masks(rows, cfg.task))
    first_seed = json.loads((out / "metrics.json").read_text())["seeds"][0]["metrics"]
    for name, value in predictions.metrics().items():
        assert value == pytest.approx(first_seed[name], abs=1e-6), name
    # Lesion masks were scored at the images' own 64x64 pixels, not the 32 px the model sees.
    assert cfg.data.image_size == 32
    assert (predictions.lesion_counts.sum(axis=1) == 64 * 64).all()
    image = next(Path(cfg.data.root).rglob("*.jpg"))
    prediction = Predictor.from_checkpoint(out / "model.pt", device="cpu").predict(image)
    assert prediction.label in CLASSES and prediction.lesion_mask is not None


def test_the_retrain_is_an_mlflow_child_of_the_sweep_with_its_files(retrained):
    from mlflow.tracking import MlflowClient

    from derm.sweep import load_plan

    plan = load_plan(retrained["sweep"])
    client = MlflowClient(plan.tracking_uri)
    experiment = client.get_experiment_by_name("derm-sweep-finished")
    (run,) = client.search_runs([experiment.experiment_id],
                                f"tags.`derm.out` = '{retrained['out'].resolve()}'")
    assert run.data.tags["derm.kind"] == "retrain-best"
    assert run.data.tags["mlflow.parentRunId"] == plan.parent_run_id
    assert run.info.status == "FINISHED"
    summary = json.loads((retrained["out"] / "metrics.json").read_text())
    assert run.data.metrics["test_dice"] == pytest.approx(summary["mean"]["dice"])
    assert "test_dice_ci95_low" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "model.pt", "roc_curves.png", "overlays"} <= artifacts


def test_a_rank_that_does_not_exist_is_one_line_and_exit_2(finished_sweep, tmp_path, capsys):
    assert main([str(finished_sweep), "--rank", "3", "--out", str(tmp_path / "x"), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "rank 3 does not exist" in err and "2 of 3 trials completed" in err  # the failed trial is not eligible
    assert not (tmp_path / "x").exists()


def test_a_folder_that_is_not_a_sweep_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path), "--no-mlflow"]) == 2
    assert "not a derm sweep folder (no sweep.json)" in capsys.readouterr().err


def test_top_without_ensemble_is_refused(finished_sweep, capsys):
    assert main([str(finished_sweep), "--top", "2", "--no-mlflow"]) == 2
    assert "--top K and --ensemble go together" in capsys.readouterr().err


def test_a_warm_up_longer_than_the_earned_epochs_is_shortened_to_fit(tmp_path):
    from derm.config import config_from_dict
    from derm.retrain.selection import Candidate, Member, member_config

    trial = config_from_dict({"optim": {"warmup_epochs": 3}, "train": {"epochs": 9, "seed": 5}})
    candidate = Candidate(rank=1, trial_id="t1", best_epoch=2, sweep_value=0.7, config=trial)
    cfg = member_config(Member(candidate, seed=6, epochs=2), tmp_path)
    assert (cfg.train.epochs, cfg.train.seed, cfg.optim.warmup_epochs) == (2, 6, 1)
    assert trial.optim.warmup_epochs == 3  # the trial's own config is untouched
    assert member_config(Member(candidate, seed=5, epochs=8), tmp_path).optim.warmup_epochs == 3


# The bootstrap (derm.metrics.bootstrap)

def test_percentile_interval_by_hand():
    # numpy's linear percentiles of 1..100: 2.5% -> 1 + 0.025 * 99, 97.5% -> 1 + 0.975 * 99
    assert percentile_interval(np.arange(1, 101)) == pytest.approx((3.475, 97.525))
    assert percentile_interval([0.0, np.nan, 1.0], confidence=0.5) == pytest.approx((0.25, 0.75))


def test_bootstrap_of_a_two_image_mean_matches_the_hand_computed_distribution():
    # Two images scoring 0 and 1: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4,
    # so the 2.5th percentile is 0 and the 97.5th is 1 once enough resamples are drawn.
    scores = np.array([0.0, 1.0])
    interval = bootstrap_ci(lambda idx: {"mean": scores[idx].mean()}, 2, n_resamples=2000, seed=3)
    assert interval["mean"] == (0.0, 1.0)
    means = scores[resample_indices(2, 2000, seed=3)].mean(axis=1)
    assert np.mean(means == 0.5) == pytest.approx(0.5, abs=0.05)
    # A single image: every resample is that image, so the interval is its score.
    assert bootstrap_ci(lambda idx: {"m": 0.7 * len(idx)}, 1, n_resamples=20)["m"] == (0.7, 0.7)


def test_bootstrap_is_seeded():
    values = np.random.default_rng(0).random(30)
    statistic = lambda idx: {"mean": values[idx].mean(), "max": values[idx].max()}  # noqa: E731
    first = bootstrap_ci(statistic, 30, n_resamples=200, seed=7)
    assert first == bootstrap_ci(statistic, 30, n_resamples=200, seed=7)
    assert first != bootstrap_ci(statistic, 30, n_resamples=200, seed=8)
    low, high = first["mean"]
    assert low < values.mean() < high
