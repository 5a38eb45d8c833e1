"""retrain-best --folds: lesion-grouped folds, out-of-fold scores, and the fold ensemble tested once."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import derm.data.loaders
import derm.predictions
import derm.training
from derm.calibration import apply_temperature
from derm.checkpoint import TrainingCheckpoint
from derm.data.splits import read_split
from derm.errors import ConfigError
from derm.inference import Predictor, load_model
from derm.metrics.per_image import SplitPredictions
from derm.retrain import load_test_split
from derm.retrain.folds import assign_folds, fold_split
from derm.predict import main as predict_main
from derm.retrain_best import main

CPU = torch.device("cpu")


def test_folds_keep_each_lesion_whole_and_spread_each_diagnosis():
    rng = np.random.default_rng(0)
    rows = []
    for lesion in range(60):
        diagnosis = ["NV", "MEL", "BKL"][lesion % 3]
        for image in range(1 + lesion % 3):  # lesions of 1 to 3 images, as in HAM10000
            rows.append({"image_id": f"img{lesion:03d}_{image}", "lesion_id": f"les{lesion:03d}",
                         "diagnosis": diagnosis})
    rows = pd.DataFrame(rows).sample(frac=1, random_state=int(rng.integers(100)))
    folds = assign_folds(rows, 3, seed=0)

    assert sorted(folds.index) == sorted(rows["image_id"]) and set(folds) == {0, 1, 2}
    by_lesion = rows.assign(fold=rows["image_id"].map(folds)).groupby("lesion_id")["fold"].nunique()
    assert by_lesion.max() == 1, "a lesion's images were split over folds"
    per_class = rows.assign(fold=rows["image_id"].map(folds)).groupby(["diagnosis", "fold"]).size().unstack()
    assert (per_class > 0).all().all(), "every fold should hold every diagnosis"
    pd.testing.assert_series_equal(folds, assign_folds(rows.sample(frac=1, random_state=1), 3, seed=0))
    with pytest.raises(ConfigError, match="at least 2"):
        assign_folds(rows, 1)
    with pytest.raises(ConfigError, match="only 2 lesions"):
        assign_folds(rows[rows["lesion_id"].isin(["les000", "les001"])], 3)


def test_a_fold_split_holds_its_fold_out_and_leaves_the_test_split_alone():
    split = pd.Series({"a": "train", "b": "val", "c": "train", "d": "test"})
    folds = pd.Series({"a": 0, "b": 1, "c": 1})
    assert fold_split(split, folds, 0).to_dict() == {"a": "val", "b": "train", "c": "train", "d": "test"}
    assert fold_split(split, folds, 1).to_dict() == {"a": "train", "b": "val", "c": "val", "d": "test"}


@pytest.fixture(scope="module")
def cross_validated(finished_sweep, tmp_path_factory):
    """`python -m derm.retrain_best SWEEP --folds 3` with spies on what it trains on, decodes and predicts."""
    out = tmp_path_factory.mktemp("cross-validated") / "cv3"
    events = []  # ("train" | "decode" | "predict", image ids) in the order they happened
    real_epoch, real_predict = derm.training.train_one_epoch, derm.predictions.predict_split
    real_decode = derm.data.loaders.decode_split

    def recording_epoch(model, loss_fn, optimizer, schedule, scaler, loader, *args, **kwargs):
        seen = set()
        result = real_epoch(model, loss_fn, optimizer, schedule, scaler, _Recording(loader, seen), *args, **kwargs)
        events.append(("train", seen))
        return result

    def recording_decode(cfg, rows, *args, **kwargs):
        events.append(("decode", set(rows["image_id"])))
        return real_decode(cfg, rows, *args, **kwargs)

    def recording_predict(*args, **kwargs):
        members, ensemble = real_predict(*args, **kwargs)
        events.append(("predict", set(members[0].image_ids)))
        return members, ensemble

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(derm.training, "train_one_epoch", recording_epoch)
        patch.setattr(derm.data.loaders, "decode_split", recording_decode)
        patch.setattr(derm.predictions, "predict_split", recording_predict)
        code = main([str(finished_sweep), "--folds", "3", "--bootstrap", "50", "--out", str(out), "--no-mlflow",
                     "--quiet"])
    assert code == 0, printed.getvalue()
    return {"out": out, "events": events, "split": read_split(finished_sweep / "split.csv"),
            "printed": printed.getvalue(), "sweep": finished_sweep}


class _Recording:
    def __init__(self, loader, seen):
        self.loader, self.seen = loader, seen

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        ids = self.loader.dataset.arrays.image_ids
        for batch in self.loader:
            self.seen.update(ids[int(i)] for i in batch["index"])
            yield batch


def test_cross_validation_reports_the_out_of_fold_score_each_fold_and_the_fold_ensemble(cross_validated):
    out, split = cross_validated["out"], cross_validated["split"]
    summary = json.loads((out / "metrics.json").read_text())
    cv = summary["cross_validation"]
    train_val = set(split[split != "test"].index)
    assert summary["mode"] == "cross-validation" and cv["folds"] == 3
    assert cv["out_of_fold_images"] == len(train_val)
    assert sum(f["images"] for f in cv["per_fold"]) == len(train_val)
    oof = SplitPredictions.load(out / "oof_predictions.npz")
    assert sorted(oof.image_ids) == sorted(train_val)
    assert cv["out_of_fold"]["metrics"]["balanced_accuracy"] == pytest.approx(oof.metrics()["balanced_accuracy"])
    for name, (low, high) in cv["out_of_fold"]["ci95"].items():
        assert low - 1e-9 <= cv["out_of_fold"]["metrics"][name] <= high + 1e-9, name
    folds = pd.read_csv(out / "folds.csv", dtype={"image_id": str}).set_index("image_id")["fold"]
    assert set(folds.index) == train_val and sorted(folds.unique()) == [0, 1, 2]
    assert summary["test_images"] == int((split == "test").sum())
    assert set(summary["ensemble"]["metrics"]) >= {"score", "balanced_accuracy", "dice"}

    printed = cross_validated["printed"]
    assert f"out-of-fold, 3 folds over {len(train_val)} train+val images" in printed
    assert "score per fold: fold 0 " in printed
    assert "fold ensemble of 3 models (mean probabilities), test split" in printed


def test_no_test_image_is_read_before_the_final_evaluation_and_no_fold_trains_on_its_own_images(cross_validated):
    split, events = cross_validated["split"], cross_validated["events"]
    test_ids = set(split[split == "test"].index)
    folds = pd.read_csv(cross_validated["out"] / "folds.csv", dtype={"image_id": str}).set_index("image_id")["fold"]
    first_test_read = next(i for i, (_, ids) in enumerate(events) if ids & test_ids)
    assert all(kind != "train" for kind, _ in events[first_test_read:]), "a fold trained after the test was read"
    assert events[-1][0] == "predict" and events[-1][1] == test_ids
    predictions = [ids for kind, ids in events[:first_test_read] if kind == "predict"]
    assert len(predictions) == 3  # each fold model predicts its held-out fold, once
    for fold, held_out in enumerate(predictions):
        assert held_out == set(folds[folds == fold].index)
    trained = [ids for kind, ids in events if kind == "train"]
    assert trained and all(ids.isdisjoint(test_ids) for ids in trained)
    per_fold_epochs = len(trained) // 3
    for fold in range(3):
        seen = set().union(*trained[fold * per_fold_epochs:(fold + 1) * per_fold_epochs])
        assert seen.isdisjoint(set(folds[folds == fold].index)), f"fold {fold} trained on its held-out images"


def test_the_fold_ensemble_model_pt_predicts_the_mean_of_the_fold_models(cross_validated, tmp_path):
    out = cross_validated["out"]
    fold_checkpoints = sorted((out / "members").glob("rank1-fold*/checkpoints/best.pt"))
    assert len(fold_checkpoints) == 3
    models, cfg = [], None
    for path in fold_checkpoints:
        model, cfg = load_model(path, CPU)
        models.append(model)
    loader, rows = load_test_split(cfg, cross_validated["split"], CPU, log=lambda line: None)
    _, mean = derm.predictions.predict_split(models, loader, CPU, cfg.task, keep_samples=0)

    # model.pt holds the three fold models and the temperature fitted on their out-of-fold diagnoses.
    saved = TrainingCheckpoint.load(out / "model.pt")
    assert len(saved.ensemble) == 3 and saved.ensemble_weights == pytest.approx([1 / 3] * 3)
    summary = json.loads((out / "metrics.json").read_text())
    chosen = summary["chosen_on_out_of_fold"]
    assert saved.temperature == pytest.approx(chosen["calibration"]["temperature"])
    assert saved.postprocess == chosen["postprocess"]

    by_id = dict(zip(mean.image_ids, mean.class_probabilities))
    images, ids = rows["image_path"].tolist()[:6], rows["image_id"].tolist()[:6]
    expected = np.stack([by_id[image_id] for image_id in ids])
    # derm.predict's probabilities are exactly the mean of the fold models' ...
    predictor = Predictor.from_checkpoint(out / "model.pt", device="cpu")
    predicted = np.array([list(p.probabilities.values()) for p in predictor.predict_batch(images)])
    np.testing.assert_allclose(predicted, expected, atol=1e-5)
    # ... and with --calibrated, that mean under the temperature fitted out of fold.
    calibrated = Predictor.from_checkpoint(out / "model.pt", device="cpu", calibrated=True)
    predicted = np.array([list(p.probabilities.values()) for p in calibrated.predict_batch(images)])
    np.testing.assert_allclose(predicted, apply_temperature(expected, saved.temperature), atol=1e-5)

    # Through the command: diagnosis.csv holds the same mean.
    folder = tmp_path / "images"
    folder.mkdir()
    for path in images:
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    assert predict_main([str(out / "model.pt"), str(folder), "--out", str(tmp_path / "predicted"), "--no-overlays",
                         "--quiet"]) == 0
    written = pd.read_csv(tmp_path / "predicted" / "diagnosis.csv").set_index("image")
    np.testing.assert_allclose(written.loc[ids].to_numpy(), expected, atol=1e-5)


def test_out_of_fold_choices_are_reported_and_melanoma_operating_points_carry_intervals(cross_validated):
    summary = json.loads((cross_validated["out"] / "metrics.json").read_text())
    chosen = summary["chosen_on_out_of_fold"]
    assert chosen["postprocess"]["mode"] in ("none", "largest_component", "largest_component+fill_holes")
    assert 0.3 <= chosen["postprocess"]["threshold"] <= 0.7
    calibration = chosen["calibration"]
    assert 0.05 <= calibration["temperature"] <= 20
    assert set(calibration["melanoma"]) == {"mel_sensitivity_at_spec80", "mel_sensitivity_at_spec90"}
    printed = cross_validated["printed"]
    assert "chosen on out-of-fold predictions (applied to the test masks and by derm.predict): mask threshold" in printed
    assert f"test ECE {calibration['test_ece_before']:.4f} before, {calibration['test_ece_after']:.4f} after" in printed
