"""A trial that runs out of GPU memory: retried at half the batch, else reported as infeasible.

The trainable runs in this process with what it asks of Ray Tune faked (trial id, checkpoint,
report; no GPU), and the training step raises ``torch.cuda.OutOfMemoryError`` above a batch
size, as a large encoder at a large batch does on a shared GPU. Its results go to the sweep's
searcher as Ray Tune would hand them over, and to the leaderboard's ranking.
"""

import inspect
import math
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest
import ray
import ray.tune
import torch
import yaml
from optuna.trial import TrialState

import derm.training
from derm.data.formats import load_table
from derm.data.splits import make_split
from derm.search_space import build_searcher, load_search_space
from derm.sweep.board import failure_summary, rank_trials
from derm.sweep.trainable import train_trial


def write_space(folder, data_root, epochs: int):
    space = {
        "name": "oom",
        "task": "multitask",
        "data": {"root": str(data_root), "image_size": 32, "augment": "none"},
        "model": {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None},
        "optim": {"lr": {"loguniform": [1.0e-4, 1.0e-3]}, "scheduler": "none"},
        "train": {"epochs": epochs, "batch_size": 16},
        "sweep": {"search": "random", "scheduler": "fifo", "resources": {"cpu": 1, "gpu": 0}},
    }
    path = folder / "oom.yaml"
    path.write_text(yaml.safe_dump(space))
    return load_search_space(path)


@pytest.fixture
def memory(monkeypatch):
    """The training step runs out of memory above ``memory.batch`` images (in ``memory.epochs``, default
    every epoch); ``memory.calls`` records each epoch's (epoch, loader batch, grad_accum_steps)."""
    real = derm.training.train_one_epoch
    memory = SimpleNamespace(batch=8, epochs=None, calls=[])

    def train_one_epoch(*args, **kwargs):
        given = inspect.signature(real).bind(*args, **kwargs).arguments
        loader, epoch = given["loader"], given["epoch"] + 1
        memory.calls.append((epoch, loader.batch_size, given["cfg"].train.grad_accum_steps))
        if loader.batch_size > memory.batch and (memory.epochs is None or epoch in memory.epochs):
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB\n"
                f"(batch {loader.batch_size})")
        return real(*args, **kwargs)

    monkeypatch.setattr(derm.training, "train_one_epoch", train_one_epoch)
    return memory


class FakeTune:
    """What the trainable asks of Ray Tune inside a trial, in this process.

    Each report gets Ray's ``training_iteration`` and goes to ``searcher.on_trial_result``, as
    Ray hands results over when the scheduler lets the trial go on (FIFO: always); each
    checkpoint is kept; ``restore_from`` is the checkpoint the next run of the trial starts from.
    """

    def __init__(self, monkeypatch, folder, searcher=None, trial_id="t0"):
        self.folder, self.searcher, self.trial_id = folder, searcher, trial_id
        self.reports, self.checkpoints, self.restore_from = [], [], None
        monkeypatch.setattr(ray.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: self.trial_id))
        monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: self.restore_from)
        monkeypatch.setattr(ray.tune, "report", self.report)
        monkeypatch.setattr(ray, "get_gpu_ids", list)  # no GPU reserved

    def report(self, metrics, checkpoint=None):
        result = {**metrics, "training_iteration": len(self.reports) + 1}
        self.reports.append(result)
        if checkpoint is not None:
            kept = self.folder / f"checkpoint_{len(self.reports)}"
            shutil.copytree(checkpoint.path, kept)
            self.checkpoints.append(ray.tune.Checkpoint.from_directory(str(kept)))
        if self.searcher is not None:
            self.searcher.on_trial_result(self.trial_id, result)


class Inbox:
    """The console's channel (TrialMessages): the lines the trial sends."""

    def __init__(self):
        self.lines = []

    def send(self, trial_id, message, kind="log"):
        if kind == "log":  # progress ("epoch 1, batch 3/4") is the heartbeat's, not a line to print
            self.lines.append(message)


def run_trial(space, config, split, tmp_path) -> list[str]:
    inbox = Inbox()
    train_trial(config, space=space, split_records=split, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                parent_run_id=None, cpus=1, messages=inbox)
    return inbox.lines


@pytest.fixture(scope="module")
def split(ham_demo):
    return {str(k): v for k, v in make_split(load_table(ham_demo)).items()}


def board_of(*trials):
    """rank_trials over (trial_id, reports, Ray status) as load_trials would give them."""
    rows = [{"trial_id": trial_id, "_history": pd.DataFrame(reports), "_status": status, "error": ""}
            for trial_id, reports, status in trials]
    return rank_trials(pd.DataFrame(rows), "score", "max", 1)


def test_out_of_memory_retries_with_half_the_batch_and_twice_the_accumulation(ham_demo, split, tmp_path,
                                                                                memory, monkeypatch):
    space = write_space(tmp_path, ham_demo, epochs=1)
    searcher = build_searcher(space)
    tune = FakeTune(monkeypatch, tmp_path, searcher)
    lines = run_trial(space, searcher.suggest("t0"), split, tmp_path)
    searcher.on_trial_complete("t0", tune.reports[-1])

    assert memory.calls == [(1, 16, 1), (1, 8, 2)]
    assert [(r["epoch"], r["batch_halved"]) for r in tune.reports] == [(1, 1)]
    assert any(line.startswith("out of memory at train.batch_size 16 (CUDA out of memory. Tried to allocate")
               and "retrying from the start with train.batch_size 8 and train.grad_accum_steps 2 "
                   "(effective batch 16, was 16)" in line for line in lines), lines
    (trial,) = searcher.study.get_trials()
    assert (trial.state, trial.value) == (TrialState.COMPLETE, tune.reports[-1]["score"])
    assert list(board_of(("t0", tune.reports, "TERMINATED"))["status"]) == ["completed (batch halved)"]


def test_still_out_of_memory_at_half_the_batch_is_reported_infeasible(ham_demo, split, tmp_path, memory,
                                                                      monkeypatch):
    memory.batch = 4
    space = write_space(tmp_path, ham_demo, epochs=1)
    searcher = build_searcher(space)
    tune = FakeTune(monkeypatch, tmp_path, searcher)
    lines = run_trial(space, searcher.suggest("t0"), split, tmp_path)
    searcher.on_trial_complete("t0", tune.reports[-1])  # the trainable ended: Ray's last result

    assert memory.calls == [(1, 16, 1), (1, 8, 2)]
    (result,) = tune.reports
    assert (result["out_of_memory"], result["epoch"], result["score"]) == (1, 0, -math.inf)
    assert result["out_of_memory_error"].startswith("out of memory at batch 16 and 8 (CUDA out of memory.")
    assert any("the searcher learns it as infeasible" in line for line in lines), lines
    # PRUNED without intermediate values: TPE ranks it below every other trial.
    (trial,) = searcher.study.get_trials()
    assert (trial.state, trial.value, trial.intermediate_values) == (TrialState.PRUNED, None, {})

    completed = [{"epoch": 1, "score": 0.5, "training_iteration": 1}]
    board = board_of(("t0", tune.reports, "TERMINATED"), ("t1", completed, "TERMINATED"))
    assert list(board["trial_id"]) == ["t1", "t0"]
    assert list(board["status"]) == ["completed", "out of memory"]
    assert board["error"][1].startswith("out of memory at batch 16 and 8")
    assert list(board["epochs_trained"]) == [1, 0]
    assert "1 of 2 trials failed: 1x out of memory at batch 16 and 8" in failure_summary(board, tmp_path)


def test_retry_resumes_from_the_trials_checkpoint_and_a_resumed_trial_keeps_the_halved_batch(
        ham_demo, split, tmp_path, memory, monkeypatch):
    memory.epochs = {2}  # epoch 1 fits at 16, epoch 2 does not
    space = write_space(tmp_path, ham_demo, epochs=3)
    config = build_searcher(space).suggest("t0")
    tune = FakeTune(monkeypatch, tmp_path)
    lines = run_trial(space, config, split, tmp_path)

    assert memory.calls == [(1, 16, 1), (2, 16, 1), (2, 8, 2), (3, 8, 2)]
    assert [(r["epoch"], r.get("batch_halved")) for r in tune.reports] == [(1, None), (2, 1), (3, 1)]
    assert any("retrying from its checkpoint after epoch 1 with train.batch_size 8" in line for line in lines), lines

    # Ray restarts the trial from its checkpoint after epoch 2 (a --resume, a retry): it goes on at batch 8.
    memory.calls.clear()
    tune.restore_from = tune.checkpoints[1]
    lines = run_trial(space, config, split, tmp_path)
    assert memory.calls == [(3, 8, 2)]
    assert (tune.reports[-1]["epoch"], tune.reports[-1]["batch_halved"]) == (3, 1)
    assert any(line.startswith("continuing at train.batch_size 8 and train.grad_accum_steps 2") for line in lines)
