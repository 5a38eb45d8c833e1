"""What retrain-best reports: test metrics per member, their mean and spread over seeds, and
bootstrap intervals of the estimate printed beside them (``summarise`` -> metrics.json).

Intervals resample the test images within each true class where the task has a diagnosis
head (``bootstrap_strata``), so class-averaged metrics score every class on every
resample; segmentation and attribute tasks resample images plainly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from derm.config import RunConfig
from derm.metrics import sweep_score
from derm.metrics.bootstrap import bootstrap_ci
from derm.models import model_label
from derm.metrics.per_image import CLASS_TASKS
from derm.retrain.report import HEADLINE_METRICS
from derm.retrain.selection import Member
from derm.retrain.validation_choices import calibration_report
from derm.text_formats import json_value


def headline_statistic(predictions: Sequence, cfg: RunConfig) -> Callable[[np.ndarray], dict[str, float]]:
    """indices -> the headline metrics and score over those test images, averaged over ``predictions``."""
    names = HEADLINE_METRICS[cfg.task]

    def statistic(indices: np.ndarray) -> dict[str, float]:
        rows = []
        for p in predictions:
            metrics = p.metrics(indices)
            rows.append({**{n: metrics.get(n, math.nan) for n in names},
                         "score": sweep_score(metrics, cfg.task, cfg.train.score_weights)})
        return {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}

    return statistic


def scored(predictions, cfg: RunConfig) -> dict[str, float]:
    """Every test metric of one model, plus the sweep's score."""
    metrics = predictions.metrics()
    return {"score": sweep_score(metrics, cfg.task, cfg.train.score_weights), **metrics}


def seed_statistics(per_seed: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float | None]]:
    """Mean and sample standard deviation (ddof 1; None with one seed) of each metric over seeds."""
    frame = pd.DataFrame(list(per_seed))
    std = frame.std(ddof=1) if len(frame) > 1 else frame.iloc[0] * math.nan
    return frame.mean().to_dict(), {k: json_value(v) for k, v in std.to_dict().items()}


def bootstrap_strata(predictions: Sequence) -> np.ndarray | None:
    """The groups the bootstrap resamples within: the test images' true labels where the task
    has a diagnosis head (multitask, classification; -1, no label, is a group of its own),
    so class-averaged metrics score every class on every resample; None (plain image
    bootstrap) for segmentation and attributes, whose metrics do not average over classes."""
    first = predictions[0]
    return first.labels if first.task in CLASS_TASKS else None


def bootstrap_method(predictions: Sequence) -> str:
    """How ``confidence_intervals`` resamples: "stratified by true class" or "images"."""
    return "images" if bootstrap_strata(predictions) is None else "stratified by true class"


def interval_estimate(n_models: int, ensemble: bool) -> str:
    """What the intervals are of, as metrics.json and the console say it."""
    if ensemble:
        return f"the ensemble of {n_models} models (mean probabilities)"
    return f"the mean over {n_models} seeds' models" if n_models > 1 else "the one seed's model"


def confidence_intervals(predictions: Sequence, cfg: RunConfig, resamples: int, seed: int) -> dict[str, list]:
    """Percentile bootstrap 95% intervals of the headline metrics averaged over ``predictions``
    (the mean over seeds' models, or one ensemble); {} if resamples is 0.

    Every resample scores each model on the same test images and averages, so the interval
    is that of the mean over models printed beside it. Resampled within the true classes
    (``bootstrap_strata``) for tasks with a diagnosis head; plain image resamples otherwise.
    """
    if resamples <= 0:
        return {}
    intervals = bootstrap_ci(headline_statistic(predictions, cfg), len(predictions[0]),
                             strata=bootstrap_strata(predictions), n_resamples=resamples, seed=seed)
    return {name: [json_value(low), json_value(high)] for name, (low, high) in intervals.items()}


def describe_member(member: Member, metrics: dict[str, float], sweep_metric: str) -> dict[str, Any]:
    c = member.candidate
    return {"label": member.label, "rank": c.rank, "trial_id": c.trial_id, "model": model_label(c.config),
            "seed": member.seed, "epochs": member.epochs, "sweep_best_epoch": c.best_epoch,
            f"sweep_val_{sweep_metric}": c.sweep_value, "test_metrics": metrics}


def summarise(plan, members: Sequence[Member], result, resamples: int, seed: int) -> dict[str, Any]:
    """What metrics.json holds: which trials, epochs, test image count, per-member metrics and statistics."""
    cfg = members[0].candidate.config
    per_member = [scored(p, cfg) for p in result.members]
    summary: dict[str, Any] = {
        "sweep": str(plan.sweep_dir), "task": cfg.task, "sweep_metric": plan.space.sweep.primary_metric,
        "mode": "ensemble" if result.ensemble is not None else "single",
        "trained_on": ["train", "val"], "evaluated_on": "test", "test_images": len(result.members[0]),
        "members": [describe_member(m, metrics, plan.space.sweep.primary_metric) for m, metrics in zip(members, per_member)],
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": 0.95, "interval": "percentile",
                      "method": bootstrap_method(result.members),
                      "of": interval_estimate(len(members), result.ensemble is not None)},
    }
    if result.ensemble is None:
        c = members[0].candidate
        summary.update({"rank": c.rank, "trial_id": c.trial_id, "epochs": members[0].epochs,
                        "seeds": [{"seed": m.seed, "metrics": metrics} for m, metrics in zip(members, per_member)]})
        summary["mean"], summary["std"] = seed_statistics(per_member)
        summary["ci95"] = confidence_intervals(result.members, cfg, resamples, seed)
        summary["figures_from"] = members[0].label
    else:
        summary["ensemble"] = {"metrics": scored(result.ensemble, cfg),
                               "ci95": confidence_intervals([result.ensemble], cfg, resamples, seed)}
        summary["figures_from"] = "ensemble"
    return json_value(summary)


def summarise_cross_validation(plan, members: Sequence[Member], result, fold_runs: Sequence, resamples: int,
                               seed: int, postprocess=None, temperature: float | None = None) -> dict[str, Any]:
    """metrics.json of ``--folds K``: the fold ensemble on test (as an ensemble's summary), plus the
    out-of-fold score with its bootstrap interval and each fold's own score on the images it held out."""
    cfg = members[0].candidate.config
    summary = summarise(plan, members, result, resamples, seed)
    c = members[0].candidate
    oof = result.out_of_fold
    summary.update({
        "mode": "cross-validation", "trained_on": ["train", "val"], "rank": c.rank, "trial_id": c.trial_id,
        "epochs": members[0].epochs, "figures_from": "fold ensemble",
        "cross_validation": {
            "folds": len(fold_runs), "grouped_by": "lesion_id", "stratified_by": "diagnosis",
            "out_of_fold_images": len(oof),
            "out_of_fold": {"metrics": scored(oof, cfg),
                            "ci95": confidence_intervals([oof], cfg, resamples, seed),
                            "bootstrap": bootstrap_method([oof])},
            "per_fold": [{"fold": run.fold, "images": len(run.predictions),
                          "metrics": scored(run.predictions, cfg)} for run in fold_runs],
        },
    })
    summary["bootstrap"]["of"] = f"the fold ensemble of {len(fold_runs)} models (mean probabilities)"
    chosen: dict[str, Any] = {}
    if postprocess is not None:
        chosen["postprocess"] = postprocess.to_dict()
        chosen["postprocess_note"] = ("chosen on the out-of-fold masks at the model's resolution; the test "
                                      "masks above are scored with it, at each image's own size")
    if temperature is not None:
        chosen["calibration"] = calibration_report(result.ensemble, temperature, resamples, seed)
    if chosen:
        summary["chosen_on_out_of_fold"] = chosen
    return json_value(summary)
