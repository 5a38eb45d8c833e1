"""``python -m derm.retrain_best SWEEP_DIR``: retrain the sweep's best configuration, test it once.

The honest number for a paper: the sweep chose a configuration and its number of epochs
on the validation split; this retrains that configuration on train+val of the sweep's own
``split.csv`` for those epochs (no split is evaluated while it trains, so nothing picks a
model by a test score), then scores the untouched test split once.

    python -m derm.retrain_best sweeps/unet/2026-11-23_10-00-00                   # rank 1, 3 seeds
    python -m derm.retrain_best sweeps/unet/2026-11-23_10-00-00 --rank 2 --seeds 5 --epochs 20
    python -m derm.retrain_best sweeps/unet/2026-11-23_10-00-00 --top 3 --ensemble

With several seeds (``train.seed + i``) it reports each seed's test metrics, their mean and
standard deviation over seeds, and a 95% percentile bootstrap interval of that same mean
over resampled test images (resampled within each true class where the task has a
diagnosis head, see ``bootstrap_strata``). ``--top K --ensemble`` retrains the K best
configurations, averages their probabilities and gives the ensemble's metrics with their
intervals.
Outputs (``results/<sweep>/<timestamp>/best`` by default) are listed in ``write_outputs``;
the run is logged to the sweep's MLflow store, under its parent run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from derm.config import RunConfig, config_from_dict, save_config
from derm.errors import ConfigError, DermError

ELIGIBLE = ("completed", "stopped early")


@dataclass
class Candidate:
    """A sweep trial chosen for retraining: its rank, best epoch and resolved config."""

    rank: int
    trial_id: str
    best_epoch: int
    sweep_value: float
    config: RunConfig


@dataclass
class Member:
    """One model to retrain: a candidate with a seed and a number of epochs."""

    candidate: Candidate
    seed: int
    epochs: int

    @property
    def label(self) -> str:
        return f"rank{self.candidate.rank}-seed{self.seed}"


@dataclass
class RetrainResult:
    out: Path
    summary: dict[str, Any]
    members: list = field(default_factory=list)  # SplitPredictions per member, test split
    ensemble: Any = None                           # SplitPredictions of the mean (ensemble mode)
    files: list[Path] = field(default_factory=list)


def trial_params(row: pd.Series, searched_keys: Sequence[str]) -> dict[str, Any]:
    """A leaderboard row's trial parameters: its ``config.*`` cells for the searched keys.

    Cells empty for this trial (a conditional parameter another trial had) are left out;
    NumPy scalars become Python values for the config's validation.
    """
    from derm.search_space import config_key

    params = {}
    for column, value in row.items():
        name = str(column).removeprefix("config.")
        if not str(column).startswith("config.") or config_key(name) not in searched_keys:
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        params[name] = value.item() if isinstance(value, np.generic) else value
    return params


def choose_trials(plan, ranks: Sequence[int]) -> list[Candidate]:
    """The sweep's trials at ``ranks`` (completed or stopped early only), configs resolved."""
    from derm.leaderboard import load_trials, rank_trials
    from derm.search_space import resolve_trial_config

    space = plan.space
    board = rank_trials(load_trials(plan.experiment_path), space.sweep.metric, space.sweep.mode, space.max_epochs)
    eligible = board[board["status"].isin(ELIGIBLE) & board["epoch"].notna()] if not board.empty else board
    candidates = []
    for rank in ranks:
        rows = eligible[eligible["rank"] == rank] if not eligible.empty else eligible
        if rows.empty:
            ranks_text = f"ranks 1-{len(eligible)}" if len(eligible) else "none"
            raise DermError(f"{plan.sweep_dir}: rank {rank} does not exist; {len(eligible)} of {len(board)} "
                            f"trials completed or stopped early ({ranks_text})")
        row = rows.iloc[0]
        cfg = resolve_trial_config(space, trial_params(row, space.searched_keys))
        candidates.append(Candidate(rank, str(row["trial_id"]), int(row["epoch"]),
                                    float(row[space.sweep.metric]), cfg))
    return candidates


def plan_members(candidates: Sequence[Candidate], seeds: int, epochs: int | None) -> list[Member]:
    """Each candidate with ``seeds`` seeds (train.seed + i), for its best epoch or ``epochs``."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    sizes = {c.config.data.image_size for c in candidates}
    if len(sizes) > 1:
        raise ConfigError(f"an ensemble averages masks pixel by pixel, so its members need one data.image_size; "
                          f"ranks {', '.join(str(c.rank) for c in candidates)} use {sorted(sizes)}")
    return [Member(c, c.config.train.seed + i, epochs or c.best_epoch) for c in candidates for i in range(seeds)]


def member_config(member: Member, runs_dir: Path) -> RunConfig:
    cfg = member.candidate.config.model_copy(deep=True)
    cfg.name, cfg.out_dir = member.label, str(runs_dir)
    cfg.train.seed, cfg.train.epochs = member.seed, member.epochs
    # A trial whose best epoch came early may have had a warm-up as long as that: shorten
    # the warm-up (the caller says so) rather than refuse to retrain.
    cfg.optim.warmup_epochs = min(cfg.optim.warmup_epochs, member.epochs - 1)
    return cfg


def retrain(cfg: RunConfig, run_dir: Path, split: pd.Series, log: Callable[[str], None] = print):
    """Fit ``cfg`` on train+val with no per-epoch evaluation; the test split is never read."""
    from derm.training import fit

    return fit(cfg, run_dir, split=split, train_on=("train", "val"), evaluate_on=None, log=log)


def load_test_split(cfg: RunConfig, split: pd.Series, device, log: Callable[[str], None] = print):
    """The test split's evaluation loader and its table rows (the only place retrain-best decodes test images).

    Bad files are skipped and reported as in the sweep; the split stays the sweep's own.
    """
    from derm.data.loaders import prepare_data

    data = prepare_data(cfg, split=split, train_on=("train", "val"), evaluate_on=("test",), device=device, log=log)
    return data.loaders["test"], data.tables["test"]


def headline_statistic(predictions: Sequence, cfg: RunConfig) -> Callable[[np.ndarray], dict[str, float]]:
    """indices -> the headline metrics and score over those test images, averaged over ``predictions``."""
    from derm.metrics import sweep_score
    from derm.reports import HEADLINE_METRICS

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
    from derm.metrics import sweep_score

    metrics = predictions.metrics()
    return {"score": sweep_score(metrics, cfg.task, cfg.train.score_weights), **metrics}


def seed_statistics(per_seed: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float | None]]:
    """Mean and sample standard deviation (ddof 1; None with one seed) of each metric over seeds."""
    frame = pd.DataFrame(list(per_seed))
    std = frame.std(ddof=1) if len(frame) > 1 else frame.iloc[0] * math.nan
    return frame.mean().to_dict(), {k: _finite(v) for k, v in std.to_dict().items()}


def bootstrap_strata(predictions: Sequence) -> np.ndarray | None:
    """The groups the bootstrap resamples within: the test images' true labels where the task
    has a diagnosis head (multitask, classification; -1, no label, is a group of its own),
    so class-averaged metrics score every class on every resample; None (plain image
    bootstrap) for segmentation and attributes, whose metrics do not average over classes."""
    from derm.ensemble import CLASS_TASKS

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
    from derm.metrics.bootstrap import bootstrap_ci

    if resamples <= 0:
        return {}
    intervals = bootstrap_ci(headline_statistic(predictions, cfg), len(predictions[0]),
                             strata=bootstrap_strata(predictions), n_resamples=resamples, seed=seed)
    return {name: [_finite(low), _finite(high)] for name, (low, high) in intervals.items()}


def describe_member(member: Member, metrics: dict[str, float], sweep_metric: str) -> dict[str, Any]:
    from derm.models import model_label

    c = member.candidate
    return {"label": member.label, "rank": c.rank, "trial_id": c.trial_id, "model": model_label(c.config),
            "seed": member.seed, "epochs": member.epochs, "sweep_best_epoch": c.best_epoch,
            f"sweep_val_{sweep_metric}": c.sweep_value, "test_metrics": metrics}


def open_sweep(sweep_dir: Path):
    """The sweep's plan and its split, checked before anything trains: the split needs test images."""
    from derm.data.splits import read_split
    from derm.sweep import SWEEP_FILE, load_plan

    if not (sweep_dir / SWEEP_FILE).is_file():
        raise DermError(f"{sweep_dir}: not a derm sweep folder (no {SWEEP_FILE}); "
                        f"give a folder sweeps/<name>/<timestamp> written by python -m derm.sweep")
    plan = load_plan(sweep_dir)
    split = read_split(plan.sweep_dir / "split.csv")
    if not (split == "test").any():
        raise DermError(f"{plan.sweep_dir / 'split.csv'} has no test images, so there is nothing held out to "
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
    from derm.ensemble import predict_split
    from derm.inference import load_model
    from derm.training import autocast_dtype, select_device

    if ensemble != (top is not None):
        raise ConfigError("--top K and --ensemble go together: --top 3 --ensemble averages the 3 best configurations")
    plan, split = open_sweep(Path(sweep_dir))
    ranks = list(range(1, top + 1)) if top is not None else [rank]
    members = plan_members(choose_trials(plan, ranks), seeds or (1 if ensemble else 3), epochs)
    out = Path(out) if out else Path("results") / plan.space.name / plan.sweep_dir.name / (
        f"ensemble-top{top}" if ensemble else "best")

    mlflow_run = _start_mlflow(plan, members, ensemble, bootstrap, out) if use_mlflow else None
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
                models, loader, device, first.task, amp_dtype=autocast_dtype(first.train.amp, device),
                keep_samples=samples, truth_masks=truth)
        result = RetrainResult(out, {}, member_predictions, mean_predictions if ensemble else None)
        result.summary = summarise(plan, members, result, bootstrap, bootstrap_seed)
        result.files = write_outputs(result, members, checkpoints)
        if mlflow_run is not None:
            _finish_mlflow(mlflow_run, result)
    except BaseException:
        if mlflow_run is not None:
            mlflow_run.finish("FAILED")
        raise
    return result


def summarise(plan, members: Sequence[Member], result: RetrainResult, resamples: int, seed: int) -> dict[str, Any]:
    """What metrics.json holds: which trials, epochs, test image count, per-member metrics and statistics."""
    cfg = members[0].candidate.config
    per_member = [scored(p, cfg) for p in result.members]
    summary: dict[str, Any] = {
        "sweep": str(plan.sweep_dir), "task": cfg.task, "sweep_metric": plan.space.sweep.metric,
        "mode": "ensemble" if result.ensemble is not None else "single",
        "trained_on": ["train", "val"], "evaluated_on": "test", "test_images": len(result.members[0]),
        "members": [describe_member(m, metrics, plan.space.sweep.metric) for m, metrics in zip(members, per_member)],
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
    return _json_safe(summary)


def write_outputs(result: RetrainResult, members: Sequence[Member], checkpoints: Sequence[Path]) -> list[Path]:
    """metrics.json, the report files, and the model: model.pt + config.yaml (single) or ensemble.md.

    Every member's own training folder stays in ``members/<label>/`` (config.yaml, split.csv,
    checkpoints/best.pt).
    """
    from derm.checkpoint import load_checkpoint, save_checkpoint
    from derm.reports import write_ensemble_table, write_report

    out = result.out
    metrics_file = out / "metrics.json"
    metrics_file.write_text(json.dumps(result.summary, indent=2))
    files = [metrics_file]
    if result.ensemble is None:
        state = load_checkpoint(checkpoints[0])
        files.append(save_checkpoint({"model": state["model"], "config": state["config"], "epoch": state["epoch"],
                                      "split": state["split"], "history": state["history"],
                                      "test_metrics": result.summary["seeds"][0]["metrics"]}, out / "model.pt"))
        files.append(save_config(config_from_dict(state["config"]), out / "config.yaml"))
        files += write_report(result.members[0], out)
    else:
        files.append(write_ensemble_table(result.summary, out / "ensemble.md"))
        files += write_report(result.ensemble, out)
    return files


def _start_mlflow(plan, members: Sequence[Member], ensemble: bool, bootstrap: int, out: Path):
    from derm.tracking import RunLogger

    first = members[0].candidate
    name = f"ensemble-top{len({m.candidate.rank for m in members})}" if ensemble else f"retrain-rank{first.rank}"
    run = RunLogger(plan.tracking_uri, f"derm-sweep-{plan.space.name}", name, parent_run_id=plan.parent_run_id,
                    tags={"derm.kind": "retrain-best", "derm.sweep_dir": str(plan.sweep_dir),
                          "derm.out": str(out.resolve())})
    run.log_params({"retrain": {"ranks": sorted({m.candidate.rank for m in members}),
                                "trial_ids": sorted({m.candidate.trial_id for m in members}),
                                "seeds": sorted({m.seed for m in members}),
                                "epochs": sorted({m.epochs for m in members}),
                                "ensemble": ensemble, "bootstrap": bootstrap},
                    "config": first.config.to_dict()})
    return run


def _finish_mlflow(run, result: RetrainResult) -> None:
    """Test metrics (mean, std, CI bounds; or the ensemble's) and every output file as artifacts."""
    summary = result.summary
    central = summary["ensemble"]["metrics"] if result.ensemble is not None else summary["mean"]
    ci = summary["ensemble"]["ci95"] if result.ensemble is not None else summary["ci95"]
    metrics = {f"test_{k}": v for k, v in central.items() if v is not None}
    metrics.update({f"test_{k}_std": v for k, v in summary.get("std", {}).items() if v is not None})
    for name, (low, high) in ci.items():
        metrics.update({f"test_{name}_ci95_low": low, f"test_{name}_ci95_high": high})
    run.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=0)
    for path in result.files:
        folder = path.parent.relative_to(result.out).as_posix()
        run.log_artifact(path, None if folder == "." else folder)
    run.finish()


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _json_safe(value):
    """NaN and infinities as null (JSON has no NaN), NumPy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _finite(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.retrain_best", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a sweep folder, sweeps/<name>/<timestamp>")
    parser.add_argument("--rank", type=int, default=1, help="which leaderboard rank to retrain (default 1)")
    parser.add_argument("--seeds", type=int, help="seeds per configuration, train.seed + i "
                                                  "(default 3; 1 per configuration with --ensemble)")
    parser.add_argument("--epochs", type=int, help="epochs to train (default: the trial's best epoch in the sweep)")
    parser.add_argument("--out", help="output folder (default results/<sweep name>/<timestamp>/best, "
                                      "or .../ensemble-top<K>)")
    parser.add_argument("--top", type=int, help="with --ensemble: retrain the K best configurations")
    parser.add_argument("--ensemble", action="store_true", help="average the --top K models' probabilities")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples of the test images for the 95%% intervals (0: none; default 1000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap draws (default 0)")
    parser.add_argument("--samples", type=int, default=8, help="test images drawn in overlays/ (default 8)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to the sweep's MLflow store")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.top is not None and args.top < 1:
            raise ConfigError(f"--top must be at least 1, got {args.top}")
        result = retrain_best(args.sweep_dir, rank=args.rank, top=args.top, ensemble=args.ensemble,
                              seeds=args.seeds, epochs=args.epochs, out=args.out, bootstrap=args.bootstrap,
                              bootstrap_seed=args.bootstrap_seed, samples=args.samples,
                              use_mlflow=not args.no_mlflow)
    except DermError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from derm.reports import format_summary

    print(format_summary(result.summary))
    print(f"results: {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
