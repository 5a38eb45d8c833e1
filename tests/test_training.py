"""The one training loop: every task trains, a model overfits, resume is exact, NaN stops."""

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields

import pandas as pd
import pytest
import torch
import yaml

import derm.training
from derm.checkpoint import TrainingCheckpoint, load_checkpoint
from derm.config import config_from_dict
from derm.data.formats import load_table
from derm.errors import ConfigError
from derm.fit_callbacks import FitCallbacks
from derm.predictions import output_probabilities
from derm.training import NonFiniteLossError, fit


class OnEpochEnd(FitCallbacks):
    """Callbacks that hand each epoch's (metrics, latest) to ``call``."""

    def __init__(self, call):
        self.call = call

    def on_epoch_end(self, metrics, latest):
        self.call(metrics, latest)


def make_config(root, task, tmp_path, **sections):
    raw = {
        "name": f"{task}-test",
        "task": task,
        "out_dir": str(tmp_path / "runs"),
        "data": {"root": str(root), "image_size": 64, "augment": "none", "num_workers": 0},
        "model": {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None},
        "optim": {"name": "adam", "lr": 1e-3, "scheduler": "none"},
        "train": {"epochs": 2, "batch_size": 8, "seed": 0},
        "mlflow": {"enabled": False},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values) if isinstance(values, dict) else raw.update({section: values})
    return config_from_dict(raw)


@pytest.mark.parametrize("task", ["multitask", "segmentation", "classification", "attributes"])
def test_two_epochs_of_each_task_lower_the_training_loss(task, ham_demo, task2_demo, tmp_path):
    root = task2_demo if task == "attributes" else ham_demo
    cfg = make_config(root, task, tmp_path)
    reported = []
    result = fit(cfg, tmp_path / "run", callbacks=OnEpochEnd(lambda metrics, path: reported.append(metrics)))

    assert [m["epoch"] for m in reported] == [1, 2]
    assert reported[1]["train_loss"] < reported[0]["train_loss"]
    expected = {"multitask": ["balanced_accuracy", "dice", "isic_task1_jaccard"],
                "segmentation": ["dice", "iou"], "classification": ["balanced_accuracy", "auroc"],
                "attributes": ["jaccard_micro", "dice_micro", "jaccard_pigment_network"]}[task]
    for name in expected:
        assert 0.0 <= reported[-1][name] <= 1.0
    for name in ("score", "lr", "epoch_seconds", "images_per_second", "val_loss"):
        assert name in reported[-1]
    assert result.best_checkpoint.is_file() and result.latest_checkpoint.is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert set(split["split"]) == {"train", "val", "test"}


def test_a_model_overfits_sixteen_images(ham_demo, tmp_path):
    table = load_table(ham_demo)
    ids = table["image_id"].tolist()
    split_csv = tmp_path / "split.csv"
    pd.DataFrame({"image_id": ids, "split": ["train"] * 16 + ["val"] * 4 + ["test"] * (len(ids) - 20)}).to_csv(
        split_csv, index=False)
    cfg = make_config(ham_demo, "multitask", tmp_path, data={"split_csv": str(split_csv)},
                      train={"epochs": 25, "batch_size": 16})
    history = fit(cfg, tmp_path / "run").history
    assert history[-1]["train_loss"] <= 0.5 * history[0]["train_loss"]


def test_each_fit_sets_torch_deterministic_mode_its_own_way(ham_demo, tmp_path):
    # The mode is process-wide: a reused Ray actor runs trials one after another.
    seen = []
    try:
        for deterministic in (True, False):
            cfg = make_config(ham_demo, "classification", tmp_path, data={"image_size": 32},
                              train={"epochs": 1, "deterministic": deterministic})
            fit(cfg, tmp_path / f"run-{deterministic}",
                callbacks=OnEpochEnd(lambda metrics, path: seen.append(torch.are_deterministic_algorithms_enabled())))
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == [True, False]


def test_checkpoints_load_with_weights_only_and_hold_the_run(ham_demo, tmp_path):
    cfg = make_config(ham_demo, "classification", tmp_path, train={"epochs": 1})
    result = fit(cfg, tmp_path / "run")
    state = torch.load(result.latest_checkpoint, weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "config", "metrics", "split"):
        assert key in state
    assert state["epoch"] == 1
    assert state["config"]["task"] == "classification"
    assert set(state["split"].values()) == {"train", "val", "test"}
    best = load_checkpoint(result.best_checkpoint)
    assert "optimizer" not in best and best["epoch"] == result.best_epoch

    # The dataclass names exactly the file's entries; best.pt is latest.pt less the optimiser and scaler.
    latest = TrainingCheckpoint.load(result.latest_checkpoint)
    assert set(state) - {"format_version"} == {f.name for f in fields(latest) if getattr(latest, f.name) is not None}
    assert set(best) == set(state) - {"optimizer", "scaler"}
    assert TrainingCheckpoint.load(result.best_checkpoint).optimizer is None
    again = latest.for_inference().save(tmp_path / "copy.pt")
    assert set(load_checkpoint(again)) == set(best)


def test_resuming_from_an_inference_checkpoint_says_to_use_latest(ham_demo, tmp_path):
    cfg = make_config(ham_demo, "classification", tmp_path, data={"image_size": 32}, train={"epochs": 1})
    first = fit(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"best\.pt: holds no optimiser state .* checkpoints/latest\.pt"):
        fit(cfg, tmp_path / "again", resume=first.best_checkpoint)


def test_callbacks_hear_every_step_and_each_log_line(ham_demo, tmp_path):
    class Recorder(FitCallbacks):
        def __init__(self):
            self.steps, self.lines, self.epochs = [], [], []

        def log(self, message):
            self.lines.append(message)

        def on_step(self, epoch, step, steps, running_loss):
            self.steps.append((epoch, step, steps))
            assert running_loss > 0

        def on_epoch_end(self, metrics, latest):
            self.epochs.append((metrics["epoch"], latest))

    cfg = make_config(ham_demo, "classification", tmp_path, data={"image_size": 32}, train={"epochs": 2})
    first = Recorder()
    result = fit(cfg, tmp_path / "run", callbacks=first)
    steps = first.steps[0][2]
    assert first.steps == [(epoch, step, steps) for epoch in (1, 2) for step in range(1, steps + 1)]
    assert first.epochs == [(1, result.latest_checkpoint), (2, result.latest_checkpoint)]

    resumed = Recorder()
    fit(cfg, tmp_path / "run", callbacks=resumed, resume=result.latest_checkpoint)
    assert resumed.lines == [f"resumed from {result.latest_checkpoint} after epoch 2"]
    assert resumed.steps == [] and resumed.epochs == []


def test_output_probabilities_are_sigmoid_masks_and_softmax_classes():
    outputs = {"seg": torch.tensor([[[[0.0, 2.0]]]]), "cls": torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])}
    probs = output_probabilities(outputs)
    assert probs["seg"].flatten().tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-2))])
    assert probs["cls"].flatten().tolist() == pytest.approx([1 / 7] * 7)
    assert output_probabilities({"cls": outputs["cls"]}).keys() == {"cls"}


def test_a_non_finite_loss_stops_with_the_epoch_and_step(ham_demo, tmp_path, monkeypatch):
    import derm.training

    real_build_loss = derm.training.build_loss
    calls = {"n": 0}

    def loss_that_turns_nan(*args, **kwargs):
        loss_fn = real_build_loss(*args, **kwargs)
        original = loss_fn.forward

        def forward(outputs, batch):
            loss, parts = original(outputs, batch)
            calls["n"] += 1
            return (loss * float("nan") if calls["n"] == 3 else loss), parts

        loss_fn.forward = forward
        return loss_fn

    monkeypatch.setattr(derm.training, "build_loss", loss_that_turns_nan)
    cfg = make_config(ham_demo, "classification", tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, step 3"):
        fit(cfg, tmp_path / "run")


def test_killed_run_resumes_to_the_same_metrics(ham_demo, tmp_path):
    """SIGKILL a `python -m derm.train` mid-run, --resume it, compare with an uninterrupted run."""
    cfg = make_config(ham_demo, "multitask", tmp_path, train={"epochs": 3},
                      optim={"scheduler": "cosine"}, data={"augment": "default"})
    uninterrupted = fit(cfg, tmp_path / "whole").history

    config_file = tmp_path / "resume.yaml"
    raw = cfg.to_dict()
    raw["name"] = "resumed"
    config_file.write_text(yaml.safe_dump(raw))
    latest = tmp_path / "runs" / "resumed" / "checkpoints" / "latest.pt"
    process = subprocess.Popen([sys.executable, "-m", "derm.train", str(config_file)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_after = load_checkpoint(latest)["epoch"]
    assert killed_after < 3, "the run finished before it could be killed"

    done = subprocess.run([sys.executable, "-m", "derm.train", str(config_file), "--resume"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {latest} after epoch {killed_after}" in done.stdout
    resumed = load_checkpoint(latest)["history"]
    assert len(resumed) == 3
    for whole, again in zip(uninterrupted, resumed):
        for name in ("train_loss", "val_loss", "score", "dice", "balanced_accuracy"):
            assert again[name] == pytest.approx(whole[name], rel=1e-5, abs=1e-6), (name, whole["epoch"])


def test_a_resumed_run_keeps_the_split_of_its_checkpoint(ham_demo, tmp_path):
    # `derm.train --resume` after a change of split settings continues on the images it
    # started with: the checkpoint's split, not one made anew from the config.
    cfg = make_config(ham_demo, "segmentation", tmp_path, train={"epochs": 1, "batch_size": 8, "seed": 0})
    first = fit(cfg, tmp_path / "run")
    started = pd.read_csv(tmp_path / "run" / "split.csv")
    changed = make_config(ham_demo, "segmentation", tmp_path, train={"epochs": 2, "batch_size": 8, "seed": 0},
                          data={"root": str(ham_demo), "image_size": 64, "augment": "none", "num_workers": 0,
                                "split_seed": 7})
    fit(changed, tmp_path / "run", resume=first.latest_checkpoint)
    resumed = pd.read_csv(tmp_path / "run" / "split.csv")
    assert resumed.equals(started)
    fresh = fit(changed, tmp_path / "fresh")  # the changed settings do make another split
    assert not pd.read_csv(fresh.run_dir / "split.csv").equals(started)


def test_checkpoint_every_writes_the_latest_checkpoint_every_k_epochs_and_at_the_end(ham_demo, tmp_path):
    cfg = make_config(ham_demo, "segmentation", tmp_path,
                      train={"epochs": 3, "batch_size": 8, "seed": 0, "checkpoint_every": 2})
    written = []

    def latest_epoch(metrics, latest):
        written.append(None if latest is None else load_checkpoint(latest)["epoch"])

    result = fit(cfg, tmp_path / "run", callbacks=OnEpochEnd(latest_epoch))
    assert written == [None, 2, 3]
    assert load_checkpoint(result.latest_checkpoint)["epoch"] == 3


def test_resuming_under_another_amp_mode_starts_a_fresh_gradient_scale(ham_demo, tmp_path, monkeypatch):
    # A run without fp16 saves an empty scaler state; resumed under fp16 (its GradScaler on),
    # loading that state used to raise "The source state dict is empty".
    small = {"root": str(ham_demo), "image_size": 32, "augment": "none", "num_workers": 0}
    cfg = make_config(ham_demo, "segmentation", tmp_path, data=small, train={"epochs": 1, "batch_size": 8})
    first = fit(cfg, tmp_path / "run")
    assert load_checkpoint(first.latest_checkpoint)["scaler"] == {}
    monkeypatch.setattr(derm.training, "autocast_dtype", lambda amp, device: torch.float16)
    resumed = fit(make_config(ham_demo, "segmentation", tmp_path, data=small, train={"epochs": 2, "batch_size": 8}),
                  tmp_path / "run", resume=first.latest_checkpoint)
    assert resumed.last_metrics["epoch"] == 2
    assert load_checkpoint(resumed.latest_checkpoint)["scaler"]["scale"] > 0  # fp16 from here on


def test_auto_amp_uses_bf16_only_where_the_gpu_has_it_natively(monkeypatch):
    from derm.runtime import autocast_dtype

    cuda = torch.device("cuda")
    emulated = {"including_emulation": None}

    def is_bf16_supported(including_emulation=True):
        emulated["including_emulation"] = including_emulation
        return including_emulation  # a V100 or T4: bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert autocast_dtype("auto", cuda) == torch.float16
    assert emulated["including_emulation"] is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert autocast_dtype("auto", cuda) == torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) is None


def test_the_best_epochs_validation_predictions_are_kept_beside_the_checkpoints(ham_demo, tmp_path):
    from derm.metrics.per_image import VAL_PREDICTIONS, SplitPredictions

    cfg = make_config(ham_demo, "multitask", tmp_path, data={"root": str(ham_demo), "image_size": 32,
                                                             "augment": "none", "num_workers": 0})
    result = fit(cfg, tmp_path / "run")
    predictions = SplitPredictions.load(tmp_path / "run" / "checkpoints" / VAL_PREDICTIONS)
    assert predictions.epoch == result.best_epoch
    assert len(predictions) == (pd.read_csv(tmp_path / "run" / "split.csv")["split"] == "val").sum()
    for name in ("balanced_accuracy", "dice", "isic_task1_jaccard"):
        assert predictions.metrics()[name] == pytest.approx(result.best_metrics[name])
