"""The one training loop: ``derm.train``, every sweep trial and retrain-best run this.

Read `fit` top to bottom: build (data, model, loss, optimiser, schedule), then for each
epoch train, validate, score, checkpoint and report. What the run has to say goes to one
`FitCallbacks` object, as Ray Tune's hooks go to a ``ray.tune.Callback``: the sweep's
trainable reports each epoch to Ray Tune, the command line prints a table and logs to
MLflow.

Determinism: every epoch reseeds Python, NumPy and torch from (seed, epoch), and the
data order and augmentations derive from the same pair. A run resumed from the
checkpoint of epoch k therefore continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from derm.checkpoint import TrainingCheckpoint
from derm.config import RunConfig, TrainConfig, save_config
from derm.data.loaders import PreparedData, prepare_data
from derm.errors import ConfigError, DermError
from derm.fit_callbacks import FitCallbacks
from derm.losses import build_loss
from derm.metrics import sweep_score
from derm.metrics.per_image import VAL_PREDICTIONS, SplitPredictions
from derm.models import build_model, count_parameters, param_groups
from derm.optim import LRSchedule, build_optimizer, build_scheduler
from derm.predictions import PredictionCollector, predict_batches
from derm.runtime import autocast_dtype, move_batch, seed_everything, select_device


class NonFiniteLossError(DermError):
    """The loss became NaN or infinite: the run stops instead of training a NaN model."""


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    best_score: float
    best_metrics: dict[str, Any]
    last_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"

    @property
    def latest_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "latest.pt"


@dataclass
class TrainingParts:
    """The model and what trains it; each has a state a checkpoint keeps."""

    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler

    def load_state(self, checkpoint: TrainingCheckpoint) -> None:
        self.model.load_state_dict(checkpoint.model)
        self.loss_fn.load_state_dict(checkpoint.loss)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.schedule.load_state_dict(checkpoint.scheduler)
        if self.scaler.is_enabled() and checkpoint.scaler:
            # A run resumed under another AMP mode (fp16 <-> bf16/off) starts a fresh scale.
            self.scaler.load_state_dict(checkpoint.scaler)


@dataclass
class RunRecord:
    """The epochs done so far: their metrics and the best of them."""

    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    best_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, checkpoint: TrainingCheckpoint) -> RunRecord:
        return cls(checkpoint.epoch, checkpoint.best_score, checkpoint.best_epoch,
                   checkpoint.best_metrics, checkpoint.history)

    def add(self, metrics: dict[str, Any], score: float, scored: bool) -> None:
        """Record an epoch's ``metrics``; without a ``scored`` split every epoch is the best so far (the last)."""
        self.history.append(metrics)
        self.epoch = metrics["epoch"]
        if not scored or score > self.best_score:
            self.best_score, self.best_epoch, self.best_metrics = score, self.epoch, dict(metrics)
        metrics["best_score"], metrics["best_epoch"] = self.best_score, self.best_epoch


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def fit(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    callbacks: FitCallbacks | None = None,
    resume: str | Path | None = None,
    data: PreparedData | None = None,
    split: pd.Series | None = None,
    train_on: tuple[str, ...] = ("train",),
    evaluate_on: str | None = "val",
) -> FitResult:
    """Train ``cfg`` for ``cfg.train.epochs`` epochs, evaluating on ``evaluate_on`` each epoch.

    Writes ``config.yaml``, ``split.csv``, ``history.csv`` (one row per epoch, rewritten
    each epoch) and ``checkpoints/{latest,best}.pt`` under ``run_dir``, and tells
    ``callbacks`` (a `FitCallbacks`) its log lines, each step and each epoch's metrics.
    ``resume`` is a latest.pt to continue from (its epoch, optimiser, schedule and split).
    ``split`` (image_id -> "train" / "val" / "test") overrides the config's split.
    ``train_on=("train", "val"), evaluate_on=None`` is retrain-best's final fit; a sweep
    never passes "test".
    """
    callbacks = FitCallbacks() if callbacks is None else callbacks
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    # Set both ways: the mode is process-wide, and a reused Ray actor or a notebook may run
    # a non-deterministic fit after a deterministic one.
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    seed_everything(cfg.train.seed)
    device = select_device(cfg.train.device)
    amp_dtype = autocast_dtype(cfg.train.amp, device)

    state = load_resume_checkpoint(resume, device) if resume is not None else None
    if split is None and state is not None and state.split:
        # A resumed run continues on the images it started with, whatever the config's
        # split settings or the data folder say now.
        split = pd.Series(state.split, name="split").rename_axis("image_id")
    if data is None:
        data = prepare_data(cfg, run_dir=run_dir, split=split, train_on=train_on,
                            evaluate_on=() if evaluate_on is None else (evaluate_on,), device=device,
                            log=callbacks.log)
    train_loader = data.loaders["train"]
    eval_loader = None if evaluate_on is None else data.loaders[evaluate_on]

    # A resumed run loads its weights from the checkpoint: fetching pretrained ones first
    # would only need a network that compute nodes often lack.
    parts = build_training_parts(cfg, data, device, amp_dtype, pretrained=state is None)
    parameters_m = count_parameters(parts.model) / 1e6
    record = RunRecord()
    if state is not None:
        parts.load_state(state)
        record = RunRecord.from_checkpoint(state)
        callbacks.log(f"resumed from {resume} after epoch {record.epoch}")

    for epoch in range(record.epoch, cfg.train.epochs):
        seed_everything(epoch_seed(cfg.train.seed, epoch))
        data.set_epoch(epoch_seed(cfg.train.seed, epoch))
        started = time.perf_counter()
        train_losses, seen = train_one_epoch(parts.model, parts.loss_fn, parts.optimizer, parts.schedule,
                                             parts.scaler, train_loader, cfg, device, amp_dtype, epoch, callbacks)
        train_seconds = time.perf_counter() - started
        if eval_loader is None:
            # No split to score: the epoch count alone picks the model (the last one), and a
            # plateau schedule watches the training loss instead (negated: its mode is max).
            val_metrics, score = {}, math.nan
            parts.schedule.after_epoch(-train_losses["loss"])
        else:
            val_metrics, val_predictions = evaluate(parts.model, eval_loader, cfg.task, device, amp_dtype,
                                                    parts.loss_fn, epoch=epoch + 1)
            score = sweep_score(val_metrics, cfg.task, cfg.train.score_weights)
            parts.schedule.after_epoch(score)

        metrics = {
            "epoch": epoch + 1,
            **({} if eval_loader is None else {"score": score}),
            **val_metrics,
            **{f"train_{name}": value for name, value in train_losses.items()},
            "lr": parts.schedule.current_lr(),
            "params_m": parameters_m,
            "epoch_seconds": time.perf_counter() - started,
            "images_per_second": seen / train_seconds if train_seconds > 0 else 0.0,
        }
        record.add(metrics, score, scored=eval_loader is not None)
        pd.DataFrame(record.history).to_csv(run_dir / "history.csv", index=False)
        if eval_loader is not None and record.best_epoch == epoch + 1:
            # What the best epoch's score is made of, image by image: small arrays a sweep's
            # leaderboard resamples for its intervals (checkpoints/val_predictions.npz).
            val_predictions.save(run_dir / "checkpoints" / VAL_PREDICTIONS)
        checkpoint = training_checkpoint(parts, record, cfg, data)
        latest = write_checkpoints(checkpoint, run_dir / "checkpoints", cfg.train)
        callbacks.on_epoch_end(metrics, latest)

    last_metrics = record.history[-1] if record.history else {}
    return FitResult(run_dir, record.best_epoch, record.best_score, record.best_metrics, last_metrics,
                     record.history)


def load_resume_checkpoint(path: str | Path, device: torch.device) -> TrainingCheckpoint:
    """The checkpoint a run resumes from: a latest.pt, which alone holds the optimiser's state."""
    checkpoint = TrainingCheckpoint.load(path, map_location=device)
    if checkpoint.optimizer is None:
        raise ConfigError(f"{path}: holds no optimiser state (best.pt and retrain-best's model.pt are for "
                          f"inference); resume from the run's checkpoints/latest.pt")
    return checkpoint


def build_training_parts(cfg: RunConfig, data: PreparedData, device: torch.device,
                         amp_dtype: torch.dtype | None, pretrained: bool) -> TrainingParts:
    """The model (pretrained encoder weights if ``pretrained``), loss, optimiser, schedule and AMP scaler."""
    model = build_model(cfg, pretrained=pretrained).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg, data.class_counts, data.attribute_positive_fraction).to(device)
    groups = param_groups(model, cfg.optim.lr, cfg.model.encoder_lr_mult)
    extra = [p for p in loss_fn.parameters() if p.requires_grad]  # learned task weights
    if extra:
        groups.append({"params": extra, "lr": cfg.optim.lr})
    optimizer = build_optimizer(groups, cfg.optim)
    steps_per_epoch = max(1, math.ceil(len(data.loaders["train"]) / cfg.train.grad_accum_steps))
    schedule = build_scheduler(optimizer, cfg.optim, cfg.train.epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return TrainingParts(model, loss_fn, optimizer, schedule, scaler)


def training_checkpoint(parts: TrainingParts, record: RunRecord, cfg: RunConfig,
                        data: PreparedData) -> TrainingCheckpoint:
    """Everything a resumed run needs to continue after ``record``'s last epoch."""
    return TrainingCheckpoint(
        model=parts.model.state_dict(),
        config=cfg.to_dict(),
        epoch=record.epoch,
        split=data.split_records(),
        history=record.history,
        metrics=record.history[-1],
        best_score=record.best_score,
        best_epoch=record.best_epoch,
        best_metrics=record.best_metrics,
        loss=parts.loss_fn.state_dict(),
        scheduler=parts.schedule.state_dict(),
        optimizer=parts.optimizer.state_dict(),
        scaler=parts.scaler.state_dict(),
    )


def write_checkpoints(checkpoint: TrainingCheckpoint, folder: Path, train: TrainConfig) -> Path | None:
    """latest.pt every ``train.checkpoint_every`` epochs and after the last, best.pt when the epoch is the best.

    Returns the latest.pt written, or None in an epoch that writes none.
    """
    latest = None
    if checkpoint.epoch % train.checkpoint_every == 0 or checkpoint.epoch == train.epochs:
        latest = checkpoint.save(folder / "latest.pt")
    if checkpoint.best_epoch == checkpoint.epoch:
        checkpoint.for_inference().save(folder / "best.pt")
    return latest


def train_one_epoch(model, loss_fn, optimizer, schedule, scaler, loader, cfg: RunConfig, device, amp_dtype,
                    epoch: int, callbacks: FitCallbacks) -> tuple[dict[str, float], int]:
    """One pass over the training data; returns the mean loss parts and the image count."""
    model.train()
    accum = cfg.train.grad_accum_steps
    sums: dict[str, float] = {}
    seen = 0
    optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(loader):
        batch = move_batch(batch, device, cfg.train.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(batch["image"], metadata=batch.get("metadata"))
            loss, loss_parts = loss_fn(outputs, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                f"(lr {schedule.current_lr():.3g}); lower optim.lr or set train.grad_clip")
        scaler.scale(loss / accum).backward()
        if (step + 1) % accum == 0 or step + 1 == len(loader):
            if cfg.train.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            schedule.after_step()
        n = batch["image"].shape[0]
        seen += n
        sums["loss"] = sums.get("loss", 0.0) + loss.item() * n
        for name, value in loss_parts.items():
            sums[name] = sums.get(name, 0.0) + float(value) * n
        callbacks.on_step(epoch + 1, step + 1, len(loader), sums["loss"] / seen)
    return {name: total / max(seen, 1) for name, total in sums.items()}, seen


@torch.no_grad()
def evaluate(model, loader, task: str, device, amp_dtype=None, loss_fn=None,
             epoch: int | None = None) -> tuple[dict[str, float], SplitPredictions]:
    """Validation (or test) metrics of ``model`` over ``loader`` for ``task``, and the per-image
    predictions they are computed from (``SplitPredictions``: what interval estimates resample)."""
    collector = PredictionCollector(task, keep_samples=0)
    loss_sum, seen, forward_seconds = 0.0, 0, []
    for batch, outputs, probs in predict_batches(model, loader, device, amp_dtype, forward_seconds=forward_seconds):
        if not all(torch.isfinite(p).all() for p in probs.values()):
            # The last steps' updates diverged the weights although their loss was finite.
            raise NonFiniteLossError(
                f"the model's outputs are not finite when evaluating after epoch {epoch}; "
                f"lower optim.lr or set train.grad_clip")
        if loss_fn is not None:
            loss, _ = loss_fn(outputs, batch)
            loss_sum += loss.item() * batch["image"].shape[0]
        seen += batch["image"].shape[0]
        collector.add(batch, probs, loader.dataset.arrays)
    predictions = collector.result(epoch=epoch)
    metrics = predictions.metrics()
    if loss_fn is not None:
        metrics["val_loss"] = loss_sum / max(seen, 1)
    metrics["inference_ms_per_image"] = 1000 * sum(forward_seconds) / max(seen, 1)
    return metrics, predictions


