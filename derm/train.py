"""``python -m derm.train CONFIG.yaml [section.key=value ...]``: one training run.

Prints a progress bar (on stderr at a terminal; none with ``--quiet``) and a per-epoch
table, writes the resolved config, the split and the best and latest checkpoints under
``<out_dir>/<name>/``, and logs the run to MLflow (by default a SQLite store in
``<out_dir>/mlflow.db``).

    python -m derm.train configs/demo.yaml train.epochs=2 model.encoder=resnet18
    python -m derm.train configs/demo.yaml --resume          # continue from latest.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from derm._cli import run_command
from derm.config import RunConfig, load_config
from derm.errors import ConfigError
from derm.fit_callbacks import FitCallbacks
from derm.progress import EpochBar, set_quiet, write
from derm.tracking import RunLogger, default_tracking_uri, ui_command

TABLE_COLUMNS = ("epoch", "train_loss", "val_loss", "score", "balanced_accuracy", "dice",
                 "jaccard_micro", "lr", "epoch_seconds", "images_per_second")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="run config YAML (sections data, model, loss, optim, train)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue an interrupted run (default: <run dir>/checkpoints/latest.pt)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; log lines and the table still print")
    return parser.parse_args(argv)


def format_row(metrics: dict[str, Any], columns: list[str]) -> str:
    cells = []
    for name in columns:
        value = metrics.get(name)
        if isinstance(value, float):
            text = f"{value:.3g}" if name == "lr" else f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
        else:
            text = str(value)
        cells.append(text.rjust(max(len(name), 8)))
    return "  ".join(cells)


class ConsoleReporter(FitCallbacks):
    """The command line's callbacks: log lines and a per-epoch table on stdout, a progress bar
    on stderr (``derm.progress``: at a terminal, not with ``--quiet``), each epoch's metrics
    to the MLflow run."""

    def __init__(self, mlflow_run: RunLogger | None):
        self.mlflow_run = mlflow_run
        self.columns: list[str] | None = None
        self.bar = EpochBar()

    def log(self, message: str) -> None:
        write(message)

    def on_step(self, epoch: int, step: int, steps: int, running_loss: float) -> None:
        self.bar.on_step(epoch, step, steps, running_loss)

    def on_epoch_end(self, metrics: dict[str, Any], latest: Path | None) -> None:
        if self.columns is None:
            self.columns = [c for c in TABLE_COLUMNS if c in metrics]
            print("  ".join(name.rjust(max(len(name), 8)) for name in self.columns))
        print(format_row(metrics, self.columns), flush=True)
        if self.mlflow_run is not None:
            self.mlflow_run.log_metrics(metrics, step=int(metrics["epoch"]))


def run(cfg: RunConfig, resume: str | None = None, use_mlflow: bool = True):
    """Train ``cfg`` with console output and MLflow logging; returns the FitResult."""
    from derm.training import fit

    run_dir = cfg.run_dir
    checkpoint = None
    if resume is not None:
        checkpoint = run_dir / "checkpoints" / "latest.pt" if resume == "latest" else Path(resume)
        if not checkpoint.is_file():
            raise ConfigError(f"--resume: no checkpoint at {checkpoint}")
    mlflow_run = None
    if use_mlflow and cfg.mlflow.enabled:
        uri = cfg.mlflow.tracking_uri or default_tracking_uri(cfg.out_dir)
        mlflow_run = RunLogger(uri, cfg.mlflow.experiment or "derm-train", cfg.name)
        mlflow_run.log_params(cfg.to_dict())
        print(f"MLflow run {mlflow_run.run_id}; open with: {ui_command(uri)}")
    callbacks = ConsoleReporter(mlflow_run)
    print(f"run folder: {run_dir}")
    try:
        result = fit(cfg, run_dir, callbacks=callbacks, resume=checkpoint)
    except BaseException:
        if mlflow_run is not None:
            mlflow_run.finish("FAILED")
        raise
    if mlflow_run is not None:
        mlflow_run.log_artifact(run_dir / "config.yaml")
        mlflow_run.log_artifact(run_dir / "split.csv")
        mlflow_run.set_tags({"best_epoch": result.best_epoch, "best_score": result.best_score})
        mlflow_run.finish()
    print(f"best epoch {result.best_epoch}: score {result.best_score:.4f}; "
          f"checkpoint {result.best_checkpoint}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: command(args))


def command(args: argparse.Namespace) -> None:
    set_quiet(args.quiet)
    cfg = load_config(args.config, args.overrides)
    run(cfg, resume=args.resume, use_mlflow=not args.no_mlflow)


if __name__ == "__main__":
    sys.exit(main())
