"""Cross-validated retraining: one model per fold, out-of-fold predictions, the fold ensemble.

``retrain_best SWEEP --folds K`` is how nnU-Net and the ISIC 2019/2020 winners report and
predict: the sweep's train+val images are cut into K lesion-grouped, diagnosis-stratified
folds (`derm.retrain.folds`); each fold's model trains on the other K-1 folds for the
trial's epochs and predicts its own fold, so every train+val image gets one out-of-fold
(OOF) prediction from a model that never saw it. The OOF score (with its bootstrap
interval) estimates the configuration; the fold ensemble (the mean of the K models'
probabilities) is the model, scored once on the untouched test split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from derm.data.formats import load_table
from derm.metrics.per_image import SplitPredictions
from derm.retrain.console import LoaderWithBar, RetrainCallbacks
from derm.retrain.folds import assign_folds, fold_split
from derm.retrain.selection import Candidate, Member, member_config
from derm.retrain.validation_choices import HeldOutMasks, collect_masks

FOLDS_FILE = "folds.csv"
OOF_FILE = "oof_predictions.npz"


@dataclass
class FoldRun:
    """One fold's model: its checkpoint and its predictions on the images it was not trained on."""

    fold: int
    checkpoint: Path
    predictions: SplitPredictions
    masks: HeldOutMasks  # its held-out mask probabilities, for the choice of threshold and clean-up


def train_val_folds(candidate: Candidate, split: pd.Series, folds: int) -> pd.Series:
    """image_id -> fold over the split's train and val images (the test split is left out)."""
    cfg = candidate.config
    table = load_table(cfg.data.root, cfg.data.layout)
    rows = table[table["image_id"].isin(split.index[split.isin(("train", "val"))])]
    return assign_folds(rows[["image_id", "lesion_id", "diagnosis"]], folds, seed=cfg.data.split_seed)


def fold_member(candidate: Candidate, fold: int, epochs: int) -> Member:
    return Member(candidate, candidate.config.train.seed, epochs, fold=fold)


def train_fold(member: Member, split: pd.Series, folds: pd.Series, runs_dir: Path, device, amp_dtype,
               log: Callable[[str], None] = print) -> FoldRun:
    """Train one fold's model on the other folds for ``member.epochs`` and predict its own fold.

    No split is scored while it trains (the epoch count was chosen by the sweep), so the
    held-out fold stays out of every choice; its images are read only for the OOF
    predictions, and the test split not at all. All folds share one decode-once cache.
    """
    from derm.data.loaders import prepare_data, truth_masks
    from derm.inference import load_model
    from derm.predictions import predict_split
    from derm.training import fit

    cfg = member_config(member, runs_dir)
    data = prepare_data(cfg, run_dir=runs_dir / member.label, split=fold_split(split, folds, member.fold),
                        train_on=("train",), evaluate_on=("val",), device=device, log=log, decode_together=True)
    log(f"fold {member.fold}: training on {len(data.tables['train'])} images for {member.epochs} epochs, "
        f"{len(data.tables['val'])} held out")
    result = fit(cfg, runs_dir / member.label, callbacks=RetrainCallbacks(log), data=data, evaluate_on=None)
    model = load_model(result.best_checkpoint, device)[0]
    truth = truth_masks(data.tables["val"], cfg.task) if cfg.task != "classification" else None
    (predictions,), _ = predict_split([model], LoaderWithBar(data.loaders["val"], f"fold {member.fold}"), device,
                                      cfg.task, amp_dtype=amp_dtype, keep_samples=0, truth_masks=truth)
    masks = collect_masks(model, data.loaders["val"], device, amp_dtype) if cfg.task != "classification" \
        else HeldOutMasks()
    return FoldRun(member.fold, result.best_checkpoint, predictions, masks)


def held_out_masks(runs: list[FoldRun]) -> HeldOutMasks:
    """Every fold's held-out mask probabilities and truth, together."""
    together = HeldOutMasks()
    for run in runs:
        together.extend(run.masks)
    return together


def out_of_fold(runs: list[FoldRun]) -> SplitPredictions:
    """Every train+val image's prediction by the fold model that did not train on it."""
    return SplitPredictions.concatenate([run.predictions for run in runs])


def write_folds(folds: pd.Series, path: Path) -> Path:
    """folds.csv: image_id,fold, sorted by image id."""
    folds.rename("fold").rename_axis("image_id").sort_index().to_csv(path)
    return path
