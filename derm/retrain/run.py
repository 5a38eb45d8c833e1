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
from derm.retrain.console import LoaderWithBar, RetrainCallbacks
from derm.retrain.member_weights import choose_weights, describe_selection, equal_weights, member_weights
from derm.retrain.cross_validation import fold_member, held_out_masks, out_of_fold, train_fold, train_val_folds
from derm.retrain.outputs import (finish_mlflow_run, start_mlflow_run, write_cross_validation_outputs,
                                  write_outputs)
from derm.retrain.selection import choose_trials, member_config, plan_members
from derm.retrain.summary import summarise, summarise_cross_validation
from derm.retrain.validation_choices import choose_postprocess, choose_temperature
from derm.sweep.plan import load_plan


@dataclass
class RetrainResult:
    out: Path
    summary: dict[str, Any]
    members: list = field(default_factory=list)  # SplitPredictions per member, test split
    ensemble: Any = None                           # SplitPredictions of the mean (ensemble and fold modes)
    files: list[Path] = field(default_factory=list)
    out_of_fold: Any = None                        # SplitPredictions of train+val by the folds (fold mode)


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


def choose_on_out_of_fold(task: str, fold_runs, log: Callable[[str], None]):
    """The mask post-processing and class temperature chosen on the folds' held-out predictions."""
    postprocess, _ = choose_postprocess(task, held_out_masks(fold_runs))
    temperature = choose_temperature(out_of_fold(fold_runs))
    if postprocess is not None:
        log(f"chosen on out-of-fold masks: {postprocess.describe()}")
    if temperature is not None:
        log(f"chosen on out-of-fold diagnoses: temperature {temperature:.3f}")
    return postprocess, temperature


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
                 folds: int | None = None, ensemble_weights: str = "caruana",
                 log: Callable[[str], None] = print) -> RetrainResult:
    """Retrain the sweep's trial at ``rank`` (or its ``top`` trials as an ensemble) and test it once.

    With ``folds``, the trial at ``rank`` is cross-validated instead (`derm.retrain.cross_validation`):
    one model per fold over train+val, their out-of-fold predictions scored, and the fold
    ensemble tested once. ``ensemble_weights`` is how ``top`` configurations are weighted:
    "caruana" (selection on the sweep's validation predictions, `derm.retrain.member_weights`)
    or "equal". Returns the output folder, the summary written to metrics.json
    and the per-image test predictions of every member (and of the ensemble).
    """
    import torch

    from derm.data.loaders import truth_masks
    from derm.inference import load_model
    from derm.predictions import predict_split
    from derm.runtime import autocast_dtype, select_device

    if ensemble != (top is not None):
        raise ConfigError("--top K and --ensemble go together: --top 3 --ensemble averages the 3 best configurations")
    if folds is not None and (ensemble or seeds is not None):
        raise ConfigError("--folds K cross-validates one configuration (--rank) with one model per fold; "
                          "it does not combine with --top/--ensemble or --seeds")
    plan, split = open_sweep(sweep_dir)
    ranks = list(range(1, top + 1)) if top is not None else [rank]
    chosen = None
    if folds is not None:
        candidate = choose_trials(plan, ranks)[0]
        members = [fold_member(candidate, fold, epochs or candidate.best_epoch) for fold in range(folds)]
        fold_of = train_val_folds(candidate, split, folds)
    else:
        ranked = choose_trials(plan, ranks)
        chosen = None
        if ensemble:
            chosen = (choose_weights(plan, ranked) if ensemble_weights == "caruana"
                      else equal_weights(ranked, "--ensemble-weights equal"))
        candidates = ranked
        if chosen is not None:
            log(f"ensemble weights, {chosen.method}: " + ", ".join(
                f"rank {c.rank} {w:.2f}" for c, w in zip(ranked, chosen.weights)))
            candidates = [c for c, w in zip(ranked, chosen.weights) if w > 0]  # weight 0: not retrained
        members = plan_members(candidates, seeds or (1 if ensemble else 3), epochs)
    out = Path(out) if out else Path("results") / plan.space.name / plan.sweep_dir.name / (
        f"ensemble-top{top}" if ensemble else f"cv{folds}" if folds else "best")

    mlflow_run = start_mlflow_run(plan, members, ensemble, bootstrap, out) if use_mlflow else None
    try:
        checkpoints, fold_runs = [], []
        first = member_config(members[0], out / "members")
        device = select_device(first.train.device)
        amp_dtype = autocast_dtype(first.train.amp, device)
        for member in members:
            cfg = member_config(member, out / "members")
            log(f"retraining rank {member.candidate.rank} (trial {member.candidate.trial_id}) "
                + (f"fold {member.fold} of {folds}" if folds else f"seed {member.seed}")
                + f" for {member.epochs} epochs on " + ("the other folds" if folds else "train+val"))
            if cfg.optim.warmup_epochs < member.candidate.config.optim.warmup_epochs:
                log(f"  warm-up shortened from {member.candidate.config.optim.warmup_epochs} to "
                    f"{cfg.optim.warmup_epochs} epochs to fit {member.epochs} epochs")
            if folds:
                fold_runs.append(train_fold(member, split, fold_of, out / "members", device, amp_dtype, log))
                checkpoints.append(fold_runs[-1].checkpoint)
            else:
                checkpoints.append(retrain(cfg, out / "members" / member.label, split, log).best_checkpoint)
        models = [load_model(path, device)[0] for path in checkpoints]
        postprocess = temperature = None
        if folds:
            postprocess, temperature = choose_on_out_of_fold(first.task, fold_runs, log)
        loader, rows = load_test_split(first, split, device, log)
        # Masks are scored at each test image's own size, against its mask file, as the ISIC
        # 2018 scorer (and derm.evaluate on derm.predict's files) does.
        truth = truth_masks(rows, first.task) if first.task != "classification" else None
        with torch.inference_mode():
            member_predictions, mean_predictions = predict_split(
                models, LoaderWithBar(loader, "testing"), device, first.task,
                amp_dtype=amp_dtype, keep_samples=samples, truth_masks=truth,
                weights=member_weights(members, chosen) if ensemble else None, postprocess=postprocess)
        result = RetrainResult(out, {}, member_predictions, mean_predictions if ensemble or folds else None)
        if folds:
            result.out_of_fold = out_of_fold(fold_runs)
            result.summary = summarise_cross_validation(plan, members, result, fold_runs, bootstrap,
                                                        bootstrap_seed, postprocess, temperature)
            result.files = write_cross_validation_outputs(result, members, checkpoints, fold_of,
                                                          postprocess, temperature)
        else:
            result.summary = summarise(plan, members, result, bootstrap, bootstrap_seed)
            if chosen is not None:
                result.summary["selection"] = describe_selection(chosen, ranked, result.summary)
            result.files = write_outputs(result, members, checkpoints,
                                         member_weights(members, chosen) if ensemble else None)
        if mlflow_run is not None:
            finish_mlflow_run(mlflow_run, result)
    except BaseException:
        if mlflow_run is not None:
            mlflow_run.finish("FAILED")
        raise
    return result
