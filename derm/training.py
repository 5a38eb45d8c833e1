"""The one training loop: ``derm.train``, every sweep trial and retrain-best run this.

Read it top to bottom: build (data, model, loss, optimiser, schedule), then for each
epoch train, validate, score, checkpoint and report. After every epoch the metrics dict
goes to a ``reporter`` callback; the sweep's trainable passes Ray Tune's report, the
command line prints a table and logs to MLflow.

Determinism: every epoch reseeds Python, NumPy and torch from (seed, epoch), and the
data order and augmentations derive from the same pair. A run resumed from the
checkpoint of epoch k therefore continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from derm.checkpoint import load_checkpoint, save_checkpoint
from derm.config import RunConfig, save_config
from derm.data.loaders import PreparedData, prepare_data
from derm.errors import DermError
from derm.losses import build_loss
from derm.metrics import make_accumulators, sweep_score
from derm.models import build_model, count_parameters, param_groups
from derm.optim import build_optimizer, build_scheduler

# reporter(metrics, checkpoint_path): called once per epoch, after the checkpoint is written;
# the path is None in epochs that write no "latest" checkpoint (train.checkpoint_every).
Reporter = Callable[[dict[str, Any], Path | None], None]
# progress(epoch, step, steps, running_loss): called after every training step.
Progress = Callable[[int, int, int, float], None]


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


def select_device(requested: str) -> torch.device:
    """cuda, then mps, then cpu for 'auto'; an explicit choice that is absent is an error."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if not available[requested]:
        raise DermError(f"train.device: {requested} is not available on this machine (use auto or cpu)")
    return torch.device(requested)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only: bf16 where supported, else fp16; None means fp32."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        # V100 and T4 only emulate bf16 (slower than fp32); is_bf16_supported() says True for
        # them unless emulation is excluded. They get fp16 with a GradScaler instead.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def without_pretrained_weights(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``model.encoder_weights: null``: for a model whose weights come from a checkpoint."""
    cfg = cfg.model_copy(deep=True)
    cfg.model.encoder_weights = None
    return cfg


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def fit(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    reporter: Reporter | None = None,
    resume: str | Path | None = None,
    data: PreparedData | None = None,
    split=None,
    train_on: tuple[str, ...] = ("train",),
    evaluate_on: str | None = "val",
    log: Callable[[str], None] = lambda message: None,
    progress: Progress | None = None,
) -> FitResult:
    """Train ``cfg`` for ``cfg.train.epochs`` epochs, evaluating on ``evaluate_on`` each epoch.

    Writes ``config.yaml``, ``split.csv``, ``history.csv`` (one row per epoch, rewritten
    each epoch) and ``checkpoints/{latest,best}.pt`` under ``run_dir``. ``resume`` is a
    checkpoint to continue from (its epoch, optimiser and schedule). ``train_on=("train", "val"), evaluate_on="test"`` is retrain-best's
    final fit; a sweep never passes "test".
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    # Set both ways: the mode is process-wide, and a reused Ray actor or a notebook may run
    # a non-deterministic fit after a deterministic one.
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    seed_everything(cfg.train.seed)
    device = select_device(cfg.train.device)
    amp_dtype = autocast_dtype(cfg.train.amp, device)

    state = load_checkpoint(resume, map_location=device) if resume is not None else None
    if split is None and state is not None and state.get("split"):
        # A resumed run continues on the images it started with, whatever the config's
        # split settings or the data folder say now.
        split = pd.Series(state["split"], name="split").rename_axis("image_id")
    if data is None:
        data = prepare_data(cfg, run_dir=run_dir, split=split, train_on=train_on,
                            evaluate_on=() if evaluate_on is None else (evaluate_on,), device=device, log=log)
    train_loader = data.loaders["train"]
    eval_loader = None if evaluate_on is None else data.loaders[evaluate_on]

    # A resumed run loads its weights from the checkpoint: fetching pretrained ones first
    # would only need a network that compute nodes often lack.
    model = build_model(without_pretrained_weights(cfg) if resume is not None else cfg).to(device)
    parameters_m = count_parameters(model) / 1e6
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg, data.class_counts, data.attribute_positive_fraction).to(device)
    groups = param_groups(model, cfg.optim.lr, cfg.model.encoder_lr_mult)
    extra = [p for p in loss_fn.parameters() if p.requires_grad]  # learned task weights
    if extra:
        groups.append({"params": extra, "lr": cfg.optim.lr})
    optimizer = build_optimizer(groups, cfg.optim)
    steps_per_epoch = max(1, math.ceil(len(train_loader) / cfg.train.grad_accum_steps))
    schedule = build_scheduler(optimizer, cfg.optim, cfg.train.epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, best_score, best_epoch, best_metrics, history = 0, -math.inf, -1, {}, []
    if state is not None:
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state["scaler"]:
            # A run resumed under another AMP mode (fp16 <-> bf16/off) starts a fresh scale.
            scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"]
        best_score, best_epoch = state["best_score"], state["best_epoch"]
        best_metrics, history = state["best_metrics"], state["history"]
        log(f"resumed from {resume} after epoch {start_epoch}")

    score_weights = cfg.train.score_weights
    metrics: dict[str, Any] = history[-1] if history else {}
    for epoch in range(start_epoch, cfg.train.epochs):
        seed_everything(epoch_seed(cfg.train.seed, epoch))
        data.set_epoch(epoch_seed(cfg.train.seed, epoch))
        started = time.perf_counter()
        train_parts, seen = train_one_epoch(
            model, loss_fn, optimizer, schedule, scaler, train_loader, cfg, device, amp_dtype, epoch, progress)
        train_seconds = time.perf_counter() - started
        if eval_loader is None:
            # No split to score: the epoch count alone picks the model (the last one), and a
            # plateau schedule watches the training loss instead (negated: its mode is max).
            val_metrics, score = {}, math.nan
            schedule.after_epoch(-train_parts["loss"])
        else:
            val_metrics = evaluate(model, eval_loader, cfg.task, device, amp_dtype, loss_fn, epoch=epoch + 1)
            score = sweep_score(val_metrics, cfg.task, score_weights)
            schedule.after_epoch(score)

        metrics = {
            "epoch": epoch + 1,
            **({} if eval_loader is None else {"score": score}),
            **val_metrics,
            **{f"train_{name}": value for name, value in train_parts.items()},
            "lr": schedule.current_lr(),
            "params_m": parameters_m,
            "epoch_seconds": time.perf_counter() - started,
            "images_per_second": seen / train_seconds if train_seconds > 0 else 0.0,
        }
        history.append(metrics)
        if eval_loader is None or score > best_score:
            best_score, best_epoch, best_metrics = score, epoch + 1, dict(metrics)
        metrics["best_score"], metrics["best_epoch"] = best_score, best_epoch

        payload = {
            "model": model.state_dict(),
            "loss": loss_fn.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch + 1,
            "best_score": best_score,
            "best_epoch": best_epoch,
            "best_metrics": best_metrics,
            "history": history,
            "metrics": metrics,
            "config": cfg.to_dict(),
            "split": data.split_records(),
        }
        pd.DataFrame(history).to_csv(run_dir / "history.csv", index=False)
        checkpoints = run_dir / "checkpoints"
        latest = None
        if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == cfg.train.epochs:
            latest = save_checkpoint(payload, checkpoints / "latest.pt")
        if best_epoch == epoch + 1:
            # The best checkpoint is for inference: no optimiser state, a third of the size.
            save_checkpoint({k: v for k, v in payload.items() if k not in ("optimizer", "scaler")},
                            checkpoints / "best.pt")
        if reporter is not None:
            reporter(metrics, latest)

    return FitResult(run_dir, best_epoch, best_score, best_metrics, metrics, history)


def train_one_epoch(model, loss_fn, optimizer, schedule, scaler, loader, cfg: RunConfig,
                    device, amp_dtype, epoch: int, progress: Progress | None = None,
                    ) -> tuple[dict[str, float], int]:
    """One pass over the training data; returns the mean loss parts and the image count."""
    model.train()
    accum = cfg.train.grad_accum_steps
    sums: dict[str, float] = {}
    seen = 0
    optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(loader):
        batch = move_batch(batch, device, cfg.train.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(batch["image"])
            loss, parts = loss_fn(outputs, batch)
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
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + float(value) * n
        if progress is not None:
            progress(epoch + 1, step + 1, len(loader), sums["loss"] / seen)
    return {name: total / max(seen, 1) for name, total in sums.items()}, seen


@torch.no_grad()
def predict_batches(model, loader, device, amp_dtype=None, channels_last: bool = False,
                    forward_seconds: list[float] | None = None):
    """Yield (batch, outputs, probabilities): sigmoid masks under "seg", softmax under "cls".

    ``forward_seconds``, when given, collects each batch's model time (data loading excluded).
    """
    model.eval()
    for batch in loader:
        batch = move_batch(batch, device, channels_last)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(batch["image"])
        if forward_seconds is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            forward_seconds.append(time.perf_counter() - started)
        probs = {}
        if "seg" in outputs:
            probs["seg"] = torch.sigmoid(outputs["seg"].float())
        if "cls" in outputs:
            probs["cls"] = torch.softmax(outputs["cls"].float(), dim=1)
        yield batch, outputs, probs


@torch.no_grad()
def evaluate(model, loader, task: str, device, amp_dtype=None, loss_fn=None,
             epoch: int | None = None) -> dict[str, float]:
    """Validation (or test) metrics of ``model`` over ``loader`` for ``task``."""
    accumulators = make_accumulators(task)
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
        for acc in accumulators:
            acc.update_from_batch(batch, probs)
    metrics: dict[str, float] = {}
    for acc in accumulators:
        metrics.update(acc.compute())
    if loss_fn is not None:
        metrics["val_loss"] = loss_sum / max(seen, 1)
    metrics["inference_ms_per_image"] = 1000 * sum(forward_seconds) / max(seen, 1)
    return metrics


def move_batch(batch: dict, device, channels_last: bool = False) -> dict:
    moved = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if channels_last:
        moved["image"] = moved["image"].contiguous(memory_format=torch.channels_last)
    return moved

