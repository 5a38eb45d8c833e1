"""Retrain the sweep's best configuration(s) on train+val and test them once: ``retrain_best``.

The honest number for a paper: the sweep chose a configuration and its number of epochs
on the validation split; ``retrain_best`` retrains that configuration on train+val of the
sweep's own ``split.csv`` for those epochs (no split is evaluated while it trains, so
nothing picks a model by a test score), then scores the untouched test split once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from derm.config import RunConfig
from derm.errors import ConfigError, DataError
from derm.fit_callbacks import LogOnly
from derm.progress import EpochBar, progress
from derm.retrain.outputs import finish_mlflow_run, start_mlflow_run, write_outputs
from derm.retrain.selection import choose_trials, member_config, plan_members
from derm.retrain.summary import summarise
from derm.sweep.plan import load_plan


@dataclass
class RetrainResult:
    out: Path
    summary: dict[str, Any]
    members: list = field(default_factory=list)  # SplitPredictions per member, test split
    ensemble: Any = None                           # SplitPredictions of the mean (ensemble mode)
    files: list[Path] = field(default_factory=list)


class RetrainCallbacks(LogOnly):
    """fit's log lines to ``write`` and its steps as the bar ``derm.train`` draws (`derm.progress.EpochBar`)."""

    def __init__(self, write: Callable[[str], None]):
        super().__init__(write)
        self.bar = EpochBar()

    def on_step(self, epoch: int, step: int, steps: int, running_loss: float) -> None:
        self.bar.on_step(epoch, step, steps, running_loss)


class LoaderWithBar:
    """A loader iterated with a progress bar by batches; ``dataset`` stays readable (predict_split reads it)."""

    def __init__(self, loader, desc: str):
        self.loader, self.dataset, self.desc = loader, loader.dataset, desc

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        with progress(self.loader, total=len(self.loader), desc=self.desc, unit="batch") as batches:
            yield from batches


def retrain(cfg: RunConfig, run_dir: Path, split: pd.Series, log: Callable[[str], None] = print):
    """Fit ``cfg`` on train+val with no per-epoch evaluation; the test split is never read."""
    from derm.training import fit

    return fit(cfg, run_dir, callbacks=RetrainCallbacks(log), split=split, train_on=("train", "val"),
               evaluate_on=None)


def load_test_split(cfg: RunConfig, split: pd.Series, device, log: Callable[[str], None] = print):
    """The test split's evaluation loader and its table rows (the only place retrain-best decodes test images).

    Bad files are skipped and reported as in the sweep; the split stays the sweep's own.
    """
    from derm.data.loaders import prepare_data

    data = prepare_data(cfg, split=split, train_on=("train", "val"), evaluate_on=("test",), device=device, log=log)
    return data.loaders["test"], data.tables["test"]


def open_sweep(sweep_dir: str | Path):
    """The sweep's plan and its split, checked before anything trains: the split needs test images."""
    from derm.data.splits import read_split

    plan = load_plan(sweep_dir)
    split = read_split(plan.sweep_dir / "split.csv")
    if not (split == "test").any():
        raise DataError(f"{plan.sweep_dir / 'split.csv'} has no test images, so there is nothing held out to "
                        f"report on; run the sweep with data.test_fraction > 0")
    return plan, split


def retrain_best(sweep_dir: str | Path, *, rank: int = 1, top: int | None = None, ensemble: bool = False,
                 seeds: int | None = None, epochs: int | None = None, out: str | Path | None = None,
                 bootstrap: int = 1000, bootstrap_seed: int = 0, samples: int = 8, use_mlflow: bool = True,
                 log: Callable[[str], None] = print) -> RetrainResult:
    """Retrain the sweep's trial at ``rank`` (or its ``top`` trials as an ensemble) and test it once.

    Returns the output folder, the summary written to metrics.json and the per-image test
    predictions of every member (and of the ensemble).
    """
    import torch

    from derm.data.loaders import truth_masks
    from derm.inference import load_model
    from derm.predictions import predict_split
    from derm.runtime import autocast_dtype, select_device

    if ensemble != (top is not None):
        raise ConfigError("--top K and --ensemble go together: --top 3 --ensemble averages the 3 best configurations")
    plan, split = open_sweep(sweep_dir)
    ranks = list(range(1, top + 1)) if top is not None else [rank]
    members = plan_members(choose_trials(plan, ranks), seeds or (1 if ensemble else 3), epochs)
    out = Path(out) if out else Path("results") / plan.space.name / plan.sweep_dir.name / (
        f"ensemble-top{top}" if ensemble else "best")

    mlflow_run = start_mlflow_run(plan, members, ensemble, bootstrap, out) if use_mlflow else None
    try:
        checkpoints = []
        for member in members:
            cfg = member_config(member, out / "members")
            log(f"retraining rank {member.candidate.rank} (trial {member.candidate.trial_id}) seed {member.seed} "
                f"for {member.epochs} epochs on train+val")
            if cfg.optim.warmup_epochs < member.candidate.config.optim.warmup_epochs:
                log(f"  warm-up shortened from {member.candidate.config.optim.warmup_epochs} to "
                    f"{cfg.optim.warmup_epochs} epochs to fit {member.epochs} epochs")
            checkpoints.append(retrain(cfg, out / "members" / member.label, split, log).best_checkpoint)
        first = member_config(members[0], out / "members")
        device = select_device(first.train.device)
        models = [load_model(path, device)[0] for path in checkpoints]
        loader, rows = load_test_split(first, split, device, log)
        # Masks are scored at each test image's own size, against its mask file, as the ISIC
        # 2018 scorer (and derm.evaluate on derm.predict's files) does.
        truth = truth_masks(rows, first.task) if first.task != "classification" else None
        with torch.inference_mode():
            member_predictions, mean_predictions = predict_split(
                models, LoaderWithBar(loader, "testing"), device, first.task,
                amp_dtype=autocast_dtype(first.train.amp, device), keep_samples=samples, truth_masks=truth)
        result = RetrainResult(out, {}, member_predictions, mean_predictions if ensemble else None)
        result.summary = summarise(plan, members, result, bootstrap, bootstrap_seed)
        result.files = write_outputs(result, members, checkpoints)
        if mlflow_run is not None:
            finish_mlflow_run(mlflow_run, result)
    except BaseException:
        if mlflow_run is not None:
            mlflow_run.finish("FAILED")
        raise
    return result
