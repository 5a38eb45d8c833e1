"""The Ray Tune trainable: one trial is the training loop (``derm.training.fit``) on the
device Ray assigned it, reporting each epoch to Ray Tune and to its MLflow child run."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from derm.fit_callbacks import FitCallbacks
from derm.runtime import loader_workers
from derm.search_space import SearchSpace, resolve_trial_config, trial_overrides
from derm.tracking import RunLogger, trial_run


def trial_device(requested: str, gpu_ids: list) -> str:
    """The device a trial trains on: the GPU Ray assigned it, else the CPU.

    Ray 2.60 no longer hides the GPUs from a task that reserved none (it leaves
    ``CUDA_VISIBLE_DEVICES`` alone), so ``train.device: auto`` would put a CPU trial on
    cuda:0, beside the trials that did reserve it. Ray sets ``CUDA_VISIBLE_DEVICES`` to
    the assigned GPUs, so "cuda" then means exactly those.

    >>> trial_device("auto", []), trial_device("auto", [2]), trial_device("cpu", [0])
    ('cpu', 'cuda', 'cpu')
    """
    if not gpu_ids or requested == "cpu":
        return "cpu"
    return "cuda"


class TrialCallbacks(FitCallbacks):
    """One trial's callbacks: log lines to the worker's log and the driver's console; each
    epoch to the trial's MLflow run, then to Ray Tune (with the checkpoint, when one was written)."""

    def __init__(self, trial_id: str, messages, mlflow_run: RunLogger, run_dir: Path):
        self.trial_id, self.messages, self.mlflow_run, self.run_dir = trial_id, messages, mlflow_run, run_dir
        self.logged_config = False

    def log(self, message: str) -> None:
        print(f"trial {self.trial_id}: {message}", file=sys.stderr, flush=True)  # the worker's log
        if self.messages is not None:
            self.messages.send(self.trial_id, message)

    def on_epoch_end(self, metrics: dict[str, Any], latest: Path | None) -> None:
        from ray import tune

        # Everything is logged before tune.report: a trial the scheduler cuts ends inside it
        # (SystemExit) and may never run another line. Its final status is the driver's
        # to set (ChildRunStatus), which sees every way a trial ends.
        self.mlflow_run.log_metrics(metrics, step=int(metrics["epoch"]))
        self.mlflow_run.set_tags({"derm.best_epoch": metrics["best_epoch"], "derm.best_score": metrics["best_score"]})
        if not self.logged_config:
            self.mlflow_run.log_artifact(self.run_dir / "config.yaml")
            self.logged_config = True
        self.mlflow_run.log_artifact(self.run_dir / "history.csv")
        if latest is None:  # train.checkpoint_every: no checkpoint this epoch
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            os.link(latest, Path(folder) / "latest.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def train_trial(config: dict[str, Any], *, space: SearchSpace, split_records: dict[str, str],
                tracking_uri: str, parent_run_id: str | None, cpus: float, messages=None) -> None:
    """The Ray Tune trainable: one trial = the training loop with Ray's report and checkpoints."""
    import pandas as pd
    import ray
    from ray import tune

    from derm.training import fit

    trial_id = tune.get_context().get_trial_id()
    cfg = resolve_trial_config(space, config)
    cfg.name = trial_id
    cfg.data.num_workers = loader_workers(cpus)
    # One MLflow child run per trial, found again by its trial id when the trial is resumed
    # or retried: Ray's per-session working directory does not survive a restart.
    mlflow_run, created = trial_run(tracking_uri, f"derm-sweep-{space.name}", trial_id, parent_run_id)
    if created:
        mlflow_run.log_params(trial_overrides(space, config))

    checkpoint = tune.get_checkpoint()
    resume = Path(checkpoint.to_directory()) / "latest.pt" if checkpoint is not None else None
    split = pd.Series(split_records, name="split").rename_axis("image_id")
    with tempfile.TemporaryDirectory(prefix="derm-trial-") as folder:
        callbacks = TrialCallbacks(trial_id, messages, mlflow_run, Path(folder))
        device = trial_device(cfg.train.device, ray.get_gpu_ids())
        if cfg.train.device == "cuda" and device == "cpu":
            callbacks.log("train.device is cuda but the trial reserved no GPU (sweep.resources.gpu); training on cpu")
        cfg.train.device = device
        fit(cfg, Path(folder), callbacks=callbacks, resume=resume, split=split)
