"""The Ray Tune trainable: one trial is the training loop (``derm.training.fit``) on the
device Ray assigned it, reporting each epoch to Ray Tune and to its MLflow child run.

Out of memory is not a bad configuration (on a shared GPU it is often the batch): a trial
whose training raises ``torch.cuda.OutOfMemoryError`` is retried once with half the batch and
twice the gradient accumulation (the same effective batch), from its own checkpoint if it has
one, and every epoch it trains so reports ``batch_halved: 1``. If that does not fit either,
it reports one last result, ``out_of_memory: 1`` with the metric at its worst (-inf for
``mode: max``) and the epochs it trained, and ends: the searcher tells Optuna the trial PRUNED
at those epochs (none: ranked below every other trial), ASHA never records that result (its
``epoch`` is one already judged, or 0), and the leaderboard shows it as ``out of memory``.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from derm.config import RunConfig
from derm.fit_callbacks import FitCallbacks
from derm.metrics.per_image import VAL_PREDICTIONS
from derm.runtime import loader_workers
from derm.search_space import SearchSpace, SweepSettings, resolve_trial_config, trial_overrides
from derm.search_space.trial_outcomes import BATCH_HALVED, OUT_OF_MEMORY, OUT_OF_MEMORY_ERROR
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


# How often a trial tells the console where it is inside an epoch (DERM_PROGRESS_SECONDS).
PROGRESS_SECONDS = float(os.environ.get("DERM_PROGRESS_SECONDS", "5"))


class TrialCallbacks(FitCallbacks):
    """One trial's callbacks: log lines to the worker's log and the driver's console; each
    epoch to the trial's MLflow run, then to Ray Tune (with the checkpoint, when one was written)."""

    def __init__(self, trial_id: str, messages, mlflow_run: RunLogger, run_dir: Path):
        self.trial_id, self.messages, self.mlflow_run, self.run_dir = trial_id, messages, mlflow_run, run_dir
        self.logged_config = False
        self.progress_sent = 0.0
        self.epoch_started = time.monotonic()

    def log(self, message: str) -> None:
        print(f"trial {self.trial_id}: {message}", file=sys.stderr, flush=True)  # the worker's log
        if self.messages is not None:
            self.messages.send(self.trial_id, message)

    def phase(self, text: str) -> None:
        """Where the trial is, for the console's heartbeat (not printed by itself)."""
        if self.messages is not None:
            self.messages.send(self.trial_id, text, kind="progress")

    def on_step(self, epoch: int, step: int, steps: int, running_loss: float) -> None:
        # A few lines a minute at most: the console shows them only when it has been quiet.
        now = time.monotonic()
        if step == 1:
            self.epoch_started = now
        if now - self.progress_sent >= PROGRESS_SECONDS or step == steps:
            self.progress_sent = now
            seconds = now - self.epoch_started
            rate = f", {step / seconds:.1f} batches/s" if seconds > 0 and step > 1 else ""
            self.phase(f"epoch {epoch}, batch {step}/{steps}{rate}")

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
            # The best epoch's per-image validation predictions travel with every checkpoint:
            # the leaderboard's intervals resample them (derm.sweep.uncertainty).
            predictions = latest.parent / VAL_PREDICTIONS
            if predictions.is_file():
                os.link(predictions, Path(folder) / VAL_PREDICTIONS)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


class MemoryAwareCallbacks(TrialCallbacks):
    """TrialCallbacks that remember the last epoch reported and, once the trial trains at half
    its batch (``batch_halved``), add ``batch_halved: 1`` to every epoch it reports."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_halved = False
        self.last_epoch = 0

    def on_epoch_end(self, metrics: dict[str, Any], latest: Path | None) -> None:
        self.last_epoch = int(metrics["epoch"])
        super().on_epoch_end({**metrics, BATCH_HALVED: 1} if self.batch_halved else metrics, latest)


def halved_batch(cfg: RunConfig) -> RunConfig:
    """``cfg`` with half the batch and twice the gradient accumulation: the same effective batch
    (one image less per step when the batch is odd).

    >>> from derm.config import RunConfig
    >>> cfg = halved_batch(RunConfig.model_validate({"train": {"batch_size": 16, "grad_accum_steps": 2}}))
    >>> cfg.train.batch_size, cfg.train.grad_accum_steps
    (8, 4)
    """
    smaller = cfg.model_copy(deep=True)
    smaller.train.batch_size = cfg.train.batch_size // 2
    smaller.train.grad_accum_steps = cfg.train.grad_accum_steps * 2
    return smaller


def checkpoint_state(path: Path) -> tuple[int, int, int]:
    """(epochs done, train.batch_size, train.grad_accum_steps) of the latest.pt at ``path``."""
    from derm.checkpoint import load_checkpoint

    payload = load_checkpoint(path)
    train = payload["config"]["train"]
    return int(payload.get("epoch") or 0), int(train["batch_size"]), int(train["grad_accum_steps"])


def fit_or_out_of_memory(cfg: RunConfig, run_dir: Path, callbacks: FitCallbacks, resume: Path | None,
                         split) -> str | None:
    """Run ``fit``; None when it ended, else the error of the ``torch.cuda.OutOfMemoryError`` it
    raised, with the memory it held given back (the traceback, which holds the batch, is dropped)."""
    import gc

    import torch

    from derm.training import fit

    try:
        fit(cfg, run_dir, callbacks=callbacks, resume=resume, split=split)
        return None
    except torch.cuda.OutOfMemoryError as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else "CUDA out of memory"
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return message


def fit_within_memory(cfg: RunConfig, run_dir: Path, callbacks: MemoryAwareCallbacks, resume: Path | None,
                      split, sweep: SweepSettings) -> None:
    """``fit``; out of memory once, again at half the batch (`halved_batch`) from the trial's own
    checkpoint if it has one, else from ``resume`` (or the start); out of memory then (or at a
    batch already halved), the one ``out_of_memory`` result the searcher and leaderboard read."""
    error = fit_or_out_of_memory(cfg, run_dir, callbacks, resume, split)
    if error is None:
        return
    batch, accum = cfg.train.batch_size, cfg.train.grad_accum_steps
    if callbacks.batch_halved or batch < 2:
        report_out_of_memory(sweep, callbacks, resume, run_dir, f"out of memory at batch {batch} ({error})")
        return
    own = run_dir / "checkpoints" / "latest.pt"
    resume = own if own.is_file() else resume
    start = "the start" if resume is None else f"its checkpoint after epoch {checkpoint_state(resume)[0]}"
    smaller = halved_batch(cfg)
    callbacks.log(f"out of memory at train.batch_size {batch} ({error}); retrying from {start} with "
                  f"train.batch_size {smaller.train.batch_size} and train.grad_accum_steps "
                  f"{smaller.train.grad_accum_steps} (effective batch "
                  f"{smaller.train.batch_size * smaller.train.grad_accum_steps}, was {batch * accum})")
    callbacks.batch_halved = True
    callbacks.mlflow_run.set_tags({"derm.batch_halved": 1})
    error = fit_or_out_of_memory(smaller, run_dir, callbacks, resume, split)
    if error is not None:
        report_out_of_memory(sweep, callbacks, resume, run_dir,
                             f"out of memory at batch {batch} and {smaller.train.batch_size} ({error})")


def report_out_of_memory(sweep: SweepSettings, callbacks: MemoryAwareCallbacks, resume: Path | None,
                         run_dir: Path, error: str) -> None:
    """The trial's last result: ``out_of_memory: 1``, the sweep metric at its worst, the epochs it
    trained and ``error``."""
    from ray import tune

    own = run_dir / "checkpoints" / "latest.pt"
    checkpoint = own if own.is_file() else resume
    epochs = max(callbacks.last_epoch, checkpoint_state(checkpoint)[0] if checkpoint is not None else 0)
    callbacks.log(f"{error}; the searcher learns it as infeasible")
    callbacks.mlflow_run.set_tags({"derm.out_of_memory": error[:500]})
    # The worst value, not NaN: the console's best-so-far compares values, and NaN would stick.
    # The searcher does not learn it as a score (it reads the flag), nor does the leaderboard.
    result = {metric: -math.inf if mode == "max" else math.inf for metric, mode in zip(sweep.metrics, sweep.modes)}
    result.update({"epoch": epochs, OUT_OF_MEMORY: 1, OUT_OF_MEMORY_ERROR: error})
    if callbacks.batch_halved:
        result[BATCH_HALVED] = 1
    tune.report(result)


def train_trial(config: dict[str, Any], *, space: SearchSpace, split_records: dict[str, str],
                tracking_uri: str, parent_run_id: str | None, cpus: float, messages=None) -> None:
    """The Ray Tune trainable: one trial = the training loop with Ray's report and checkpoints."""
    import pandas as pd
    import ray
    from ray import tune

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
        callbacks = MemoryAwareCallbacks(trial_id, messages, mlflow_run, Path(folder))
        device = trial_device(cfg.train.device, ray.get_gpu_ids())
        if cfg.train.device == "cuda" and device == "cpu":
            callbacks.log("train.device is cuda but the trial reserved no GPU (sweep.resources.gpu); training on cpu")
        cfg.train.device = device
        if resume is not None:
            cfg = keep_halved_batch(cfg, resume, callbacks)
        callbacks.phase("checking data")  # until the first batch: reading, checking, decoding the data
        fit_within_memory(cfg, Path(folder), callbacks, resume, split, space.sweep)


def keep_halved_batch(cfg: RunConfig, resume: Path, callbacks: MemoryAwareCallbacks) -> RunConfig:
    """``cfg`` at the batch of the checkpoint ``resume``: a trial resumed (``--resume``, a retry)
    after it halved its batch goes on at the halved batch, and says so in its results."""
    _, batch, accum = checkpoint_state(resume)
    if (batch, accum) == (cfg.train.batch_size, cfg.train.grad_accum_steps):
        return cfg
    callbacks.batch_halved = True
    callbacks.log(f"continuing at train.batch_size {batch} and train.grad_accum_steps {accum}, "
                  f"as before it was resumed")
    kept = cfg.model_copy(deep=True)
    kept.train.batch_size, kept.train.grad_accum_steps = batch, accum
    return kept
