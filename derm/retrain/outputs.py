"""What retrain-best writes: metrics.json, the report, the model, and the MLflow run.

The run is a child of the sweep's MLflow parent run; its test metrics (mean, std and
interval bounds, or the ensemble's) are logged as metrics and every file as an artifact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from derm.checkpoint import TrainingCheckpoint, save_ensemble
from derm.config import config_from_dict, save_config
from derm.retrain.cross_validation import FOLDS_FILE, OOF_FILE, write_folds
from derm.retrain.report import write_ensemble_table, write_report
from derm.retrain.selection import Member
from derm.tracking import RunLogger


def write_outputs(result, members: Sequence[Member], checkpoints: Sequence[Path],
                  weights: Sequence[float] | None = None) -> list[Path]:
    """metrics.json, the report files, and the model: model.pt + config.yaml, and for an ensemble
    ensemble.md and one model.pt holding every member with its ``weights`` (`save_ensemble`).

    Every member's own training folder stays in ``members/<label>/`` (config.yaml, split.csv,
    checkpoints/best.pt).
    """
    out = result.out
    metrics_file = out / "metrics.json"
    metrics_file.write_text(json.dumps(result.summary, indent=2))
    files = [metrics_file]
    if result.ensemble is None:
        best = TrainingCheckpoint.load(checkpoints[0])
        release = TrainingCheckpoint(model=best.model, config=best.config, epoch=best.epoch, split=best.split,
                                     history=best.history, test_metrics=result.summary["seeds"][0]["metrics"])
        files.append(release.save(out / "model.pt"))
        files.append(save_config(config_from_dict(best.config), out / "config.yaml"))
        files += write_report(result.members[0], out)
    else:
        files.append(write_ensemble_table(result.summary, out / "ensemble.md"))
        files.append(save_ensemble(checkpoints, out / "model.pt", weights,
                                   test_metrics=result.summary["ensemble"]["metrics"]))
        files += write_report(result.ensemble, out)
    return files


def write_cross_validation_outputs(result, members: Sequence[Member], checkpoints: Sequence[Path],
                                   folds, postprocess=None, temperature: float | None = None) -> list[Path]:
    """``--folds K``: metrics.json, folds.csv, the out-of-fold predictions, the fold ensemble as one
    model.pt (``derm.predict`` and ``Predictor`` load it as an ensemble), config.yaml, and the
    report of the fold ensemble on test."""
    out = result.out
    metrics_file = out / "metrics.json"
    metrics_file.write_text(json.dumps(result.summary, indent=2))
    files = [metrics_file, write_folds(folds, out / FOLDS_FILE), result.out_of_fold.save(out / OOF_FILE)]
    files.append(save_ensemble(checkpoints, out / "model.pt", test_metrics=result.summary["ensemble"]["metrics"],
                               postprocess=None if postprocess is None else postprocess.to_dict(),
                               temperature=temperature))
    first = TrainingCheckpoint.load(checkpoints[0])
    files.append(save_config(config_from_dict(first.config), out / "config.yaml"))
    files += write_report(result.ensemble, out)
    return files


def start_mlflow_run(plan, members: Sequence[Member], ensemble: bool, bootstrap: int, out: Path):
    first = members[0].candidate
    name = f"ensemble-top{len({m.candidate.rank for m in members})}" if ensemble else f"retrain-rank{first.rank}"
    if members[0].fold is not None:
        name = f"cv{len(members)}-rank{first.rank}"
    run = RunLogger(plan.tracking_uri, f"derm-sweep-{plan.space.name}", name, parent_run_id=plan.parent_run_id,
                    tags={"derm.kind": "retrain-best", "derm.sweep_dir": str(plan.sweep_dir),
                          "derm.out": str(out.resolve())})
    run.log_params({"retrain": {"ranks": sorted({m.candidate.rank for m in members}),
                                "trial_ids": sorted({m.candidate.trial_id for m in members}),
                                "seeds": sorted({m.seed for m in members}),
                                "epochs": sorted({m.epochs for m in members}),
                                "ensemble": ensemble, "bootstrap": bootstrap,
                                "folds": len(members) if members[0].fold is not None else None},
                    "config": first.config.to_dict()})
    return run


def finish_mlflow_run(run: RunLogger, result) -> None:
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
