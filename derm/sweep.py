"""``python -m derm.sweep SPACE.yaml [key=value ...]``: a Ray Tune sweep of the training loop.

Composes Ray Tune's objects in one place: the Optuna define-by-run searcher from the
search space, ASHA (or FIFO), per-trial resources, checkpoints (best k kept), failure
retries, and an MLflow parent run with one child run per trial.

    python -m derm.sweep search_spaces/unet.yaml --demo
    python -m derm.sweep search_spaces/unet.yaml sweep.num_samples=16 data.root=/data/HAM10000
    python -m derm.sweep --resume sweeps/unet/2026-11-23_10-00-00
    python -m derm.sweep search_spaces/unet.yaml --address 10.0.0.1:6379 --storage /nfs/sweeps

Outputs go to ``sweeps/<name>/<timestamp>/``: the resolved search space, ``split.csv``,
Ray Tune's experiment state and trial folders (checkpoints), ``mlflow.db`` and
``leaderboard.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from derm.errors import ConfigError, DermError
from derm.search_space import SearchSpace, apply_demo, build_search_space, load_search_space, trial_overrides

SWEEP_FILE = "sweep.json"
SPACE_FILE = "search_space.yaml"
DEMO_LAYOUTS = {"attributes": "isic2018-task2"}
DEMO_IMAGES = 400


@dataclass
class SweepPlan:
    """Everything the driver decided before Ray starts; saved as sweep.json for --resume."""

    sweep_dir: Path
    space: SearchSpace
    tracking_uri: str
    parent_run_id: str | None
    demo_root: str | None
    storage: str | None = None

    @property
    def experiment_path(self) -> str:
        """Where Ray Tune keeps the experiment state and trial checkpoints: the sweep folder,
        or ``<storage URI>/<name>/<timestamp>`` when ``--storage`` is a URI (s3://, gs://, file://)."""
        if self.storage and "://" in self.storage:
            return f"{self.storage.rstrip('/')}/{self.space.name}/{self.sweep_dir.name}"
        return str(self.sweep_dir)


def demo_dataset(task: str, cache_root: Path | None = None) -> tuple[str, str]:
    """The embedded synthetic dataset for --demo, generated on first use; (root, layout)."""
    from derm.data.cache import default_cache_dir
    from derm.data.synth import write_synthetic_dataset

    layout = DEMO_LAYOUTS.get(task, "ham10000")
    root = (cache_root or default_cache_dir()) / "demo-data" / f"{layout}-{DEMO_IMAGES}-64px"
    if not (root / ".complete").exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        write_synthetic_dataset(root, layout, n=DEMO_IMAGES, size=(64, 64), seed=0)
        (root / ".complete").write_text("")
    return str(root), layout


def check_data_exists(space: SearchSpace) -> None:
    root = Path(space.base_config.data.root)
    if not root.exists():
        raise DermError(
            f"{space.source}: data.root {root} does not exist; expected the {space.base_config.data.layout} "
            f"layout there (see README, Data). Point data.root=... at your copy, or try --demo "
            f"for the embedded synthetic dataset")


def plan_sweep(space: SearchSpace, out_root: Path, storage: str | None, mlflow_uri: str | None,
               demo_root: str | None) -> SweepPlan:
    """Make the sweep folder, its split and its MLflow parent run (before Ray starts)."""
    from derm.data.formats import load_table
    from derm.data.splits import make_split, write_split
    from derm.tracking import RunLogger, default_tracking_uri

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(storage) if storage and "://" not in storage else out_root
    sweep_dir = (base / space.name / stamp).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=False)
    cfg = space.base_config
    table = load_table(cfg.data.root, cfg.data.layout)
    for problem in table.attrs.get("problems", []):
        print(f"data: {problem}")
    split = make_split(table, cfg.data.val_fraction, cfg.data.test_fraction, seed=cfg.data.split_seed)
    write_split(split, sweep_dir / "split.csv")
    (sweep_dir / SPACE_FILE).write_text(yaml.safe_dump(space.file_values, sort_keys=False))
    tracking_uri = mlflow_uri or default_tracking_uri(sweep_dir)
    parent = RunLogger(tracking_uri, f"derm-sweep-{space.name}", stamp,
                       tags={"derm.sweep_dir": str(sweep_dir)})
    parent.log_params({"sweep": space.sweep.model_dump(mode="json"), "searched": list(space.searched_keys)})
    plan = SweepPlan(sweep_dir, space, tracking_uri, parent.run_id, demo_root, storage)
    (sweep_dir / SWEEP_FILE).write_text(json.dumps({
        "source": space.source, "overrides": list(space.overrides), "demo_root": demo_root,
        "tracking_uri": tracking_uri, "parent_run_id": parent.run_id, "storage": storage,
    }, indent=2))
    return plan


def load_plan(sweep_dir: Path) -> SweepPlan:
    """Rebuild the plan of an interrupted sweep from its folder (for --resume)."""
    info_file = sweep_dir / SWEEP_FILE
    if not info_file.is_file():
        raise DermError(f"--resume: {sweep_dir} is not a derm sweep folder (no {SWEEP_FILE})")
    info = json.loads(info_file.read_text())
    file_values = yaml.safe_load((sweep_dir / SPACE_FILE).read_text())
    space = build_search_space(file_values, info["source"], tuple(info["overrides"]))
    if info["demo_root"]:
        space = apply_demo(space, info["demo_root"], DEMO_LAYOUTS.get(space.task, "ham10000"))
    return SweepPlan(sweep_dir.resolve(), space, info["tracking_uri"], info["parent_run_id"], info["demo_root"],
                     info.get("storage"))


def train_trial(config: dict[str, Any], *, space: SearchSpace, split_records: dict[str, str],
                tracking_uri: str, parent_run_id: str | None, cpus: float) -> None:
    """The Ray Tune trainable: one trial = the training loop with Ray's report and checkpoints."""
    import pandas as pd
    from ray import tune

    from derm.search_space import resolve_trial_config
    from derm.tracking import RunLogger
    from derm.training import fit

    context = tune.get_context()
    trial_dir = Path(context.get_trial_dir())
    cfg = resolve_trial_config(space, config)
    cfg.name = context.get_trial_id()
    cfg.data.num_workers = max(0, int(cpus) - 1) if cpus > 2 else 0

    run_id_file = trial_dir / "mlflow_run_id"
    logger = RunLogger(tracking_uri, f"derm-sweep-{space.name}", cfg.name, parent_run_id=parent_run_id,
                       run_id=run_id_file.read_text() if run_id_file.exists() else None)
    if not run_id_file.exists():
        run_id_file.write_text(logger.run_id)
        logger.log_params(trial_overrides(space, config))

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume = Path(checkpoint.to_directory()) / "latest.pt"

    logged_config = False

    def report(metrics: dict[str, Any], latest: Path) -> None:
        # Everything is logged before tune.report: a trial the scheduler cuts ends inside it
        # (SystemExit) and may never run another line. Its final status is the driver's
        # to set (ChildRunStatus), which sees every way a trial ends.
        nonlocal logged_config
        run_dir = latest.parent.parent
        logger.log_metrics(metrics, step=int(metrics["epoch"]))
        logger.set_tags({"derm.best_epoch": metrics["best_epoch"], "derm.best_score": metrics["best_score"]})
        if not logged_config:
            logger.log_artifact(run_dir / "config.yaml")
            logged_config = True
        logger.log_artifact(run_dir / "history.csv")
        with tempfile.TemporaryDirectory() as folder:
            os.link(latest, Path(folder) / "latest.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    split = pd.Series(split_records, name="split")
    split.index.name = "image_id"
    with tempfile.TemporaryDirectory(prefix="derm-trial-") as run_dir:
        fit(cfg, run_dir, reporter=report, resume=resume, split=split)


class ChildRunStatus:
    """Ray Tune callback: the final status of each trial's MLflow child run.

    Set here, in the driver, because only the driver sees every way a trial ends: a trial
    the scheduler cuts stops inside tune.report, and Ray may end its actor (or reuse it for
    the next trial) before the trial's own code runs again; a crashed worker runs nothing.
    """

    def __new__(cls, *args, **kwargs):
        from ray.tune import Callback

        class _Status(Callback):
            def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str | None):
                self.tracking_uri, self.experiment, self.parent_run_id = tracking_uri, experiment, parent_run_id

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._terminate(trial.trial_id, "FINISHED")

            def on_trial_error(self, iteration, trials, trial, **info):
                self._terminate(trial.trial_id, "FAILED")

            def _terminate(self, trial_id: str, status: str) -> None:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(self.tracking_uri)
                found = client.get_experiment_by_name(self.experiment)
                if found is None or self.parent_run_id is None:
                    return
                query = (f"attributes.run_name = '{trial_id}' "
                         f"and tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
                for run in client.search_runs([found.experiment_id], filter_string=query):
                    client.set_terminated(run.info.run_id, status=status)

        return _Status(*args, **kwargs)


class SweepConsole:
    """Ray Tune callback: one line per trial event, with the counts and the best so far."""

    def __new__(cls, *args, **kwargs):
        from ray.tune import Callback

        class _Console(Callback):
            def __init__(self, metric: str, mode: str, max_epochs: int):
                self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
                self.best: tuple[float, str] | None = None
                self.counts = {"finished": 0, "stopped early": 0, "failed": 0}

            def _better(self, value: float) -> bool:
                return self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])

            def on_trial_result(self, iteration, trials, trial, result, **info):
                value = result.get(self.metric)
                if value is not None and self._better(value):
                    self.best = (value, trial.trial_id)
                running = sum(1 for t in trials if t.status == "RUNNING")
                best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best else "-"
                print(f"trial {trial.trial_id} epoch {result.get('epoch')}/{self.max_epochs} "
                      f"{self.metric} {value:.4f} | running {running}, "
                      + ", ".join(f"{k} {v}" for k, v in self.counts.items()) + f" | best {best}", flush=True)

            def on_trial_complete(self, iteration, trials, trial, **info):
                epochs = (trial.last_result or {}).get("epoch", 0)
                kind = "finished" if epochs >= self.max_epochs else "stopped early"
                self.counts[kind] += 1
                print(f"trial {trial.trial_id} {kind} after {epochs} epochs", flush=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                self.counts["failed"] += 1
                print(f"trial {trial.trial_id} failed; error kept in {trial.local_path}/error.txt", flush=True)

        return _Console(*args, **kwargs)


def use_token_auth_if_available(address: str | None) -> None:
    """`ray start` turns token authentication on when a token exists (Ray 2.60), but a driver
    given an explicit address does not, and the head refuses it. Ray reads the mode when it
    is imported, so this runs before any ``import ray``."""
    if address and "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def start_ray(address: str | None, dashboard_port: int, space: SearchSpace) -> SearchSpace:
    """Join a cluster or start a local Ray with its dashboard on 127.0.0.1; say where it is."""
    use_token_auth_if_available(address)
    import ray

    if address:
        host = address.split("://")[-1].rsplit(":", 1)[0]
        # A head bound to loopback registers its node as 127.0.0.1; a driver on that machine
        # must say the same, or Ray looks for a local raylet at the machine's public IP.
        local = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
        context = ray.init(address=address, log_to_driver=False, **local)
    else:
        context = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=dashboard_port,
                           log_to_driver=False)
    url = context.dashboard_url
    if url:
        url = url if url.startswith("http") else f"http://{url}"
        print(f"Ray dashboard: {url} (if it asks for a token: ray get-auth-token)", flush=True)
    gpus = ray.cluster_resources().get("GPU", 0)
    wanted = space.sweep.resources.gpu
    if wanted > 0 and gpus < wanted:
        print(f"warning: sweep.resources.gpu={wanted} but the cluster has {gpus:g} GPUs; "
              f"running trials on CPU instead", flush=True)
        space.sweep.resources.gpu = 0.0
    return space


def run_sweep(plan: SweepPlan, *, address: str | None = None, dashboard_port: int = 8265,
              resume: bool = False):
    """Run (or resume) the sweep; returns Ray Tune's ResultGrid."""
    use_token_auth_if_available(address)
    from ray import tune

    from derm.data.splits import read_split

    space = start_ray(address, dashboard_port, plan.space)
    settings = space.sweep
    split = read_split(plan.sweep_dir / "split.csv")
    trainable = tune.with_parameters(train_trial, space=space, split_records={str(k): v for k, v in split.items()},
                                     tracking_uri=plan.tracking_uri, parent_run_id=plan.parent_run_id,
                                     cpus=settings.resources.cpu)
    return build_tuner(plan, trainable, resume=resume).fit()


def build_tuner(plan: SweepPlan, trainable, *, resume: bool = False, reuse_actors: bool = True):
    """The sweep's Tuner around ``trainable`` (a function trainable; the plan's resources are added).

    ``reuse_actors`` keeps each trial's worker process for the next trial with the same
    resources: starting a fresh Ray actor costs about 1.5 s per trial on 2 cores
    (benchmarks/trial_startup.py), which a sweep of short trials pays many times over.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from derm.search_space import build_searcher

    space, settings = plan.space, plan.space.sweep
    trainable = tune.with_resources(trainable, {"cpu": settings.resources.cpu, "gpu": settings.resources.gpu})
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # lose little to a killed driver
    # Every epoch checkpoints (for resume); Ray's warning about frequent snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume:
        return tune.Tuner.restore(plan.experiment_path, trainable, resume_unfinished=True, resume_errored=False)
    scheduler = (ASHAScheduler(time_attr="training_iteration", metric=settings.metric, mode=settings.mode,
                               max_t=space.max_epochs, grace_period=settings.grace_period,
                               reduction_factor=settings.reduction_factor)
                 if settings.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=build_searcher(space), scheduler=scheduler,
                                    num_samples=settings.num_samples,
                                    max_concurrent_trials=settings.max_concurrent,
                                    reuse_actors=reuse_actors,
                                    trial_name_creator=lambda t: t.trial_id,
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=tune.RunConfig(
            name=plan.sweep_dir.name, storage_path=plan.experiment_path.rsplit("/", 1)[0], verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints,
                                                    checkpoint_score_attribute=settings.metric,
                                                    checkpoint_score_order=settings.mode),
            failure_config=tune.FailureConfig(max_failures=settings.max_retries),
            callbacks=[SweepConsole(settings.metric, settings.mode, space.max_epochs),
                       ChildRunStatus(plan.tracking_uri, f"derm-sweep-{space.name}", plan.parent_run_id)],
        ),
    )


def finish_sweep(plan: SweepPlan) -> Path:
    """Write and print the leaderboard, attach it to the MLflow parent run."""
    from derm.leaderboard import load_trials, rank_trials
    from derm.leaderboard_export import export_board
    from derm.tracking import RunLogger

    board = rank_trials(load_trials(plan.experiment_path), plan.space.sweep.metric, plan.space.sweep.mode,
                        plan.space.max_epochs)
    path = plan.sweep_dir / "leaderboard.csv"
    board.to_csv(path, index=False)
    shown = ["rank", "trial_id", "status", "epochs_trained", plan.space.sweep.metric, "balanced_accuracy",
             "dice", "jaccard_micro", *(f"config.{k}" for k in plan.space.searched_keys)]
    print(board[[c for c in dict.fromkeys(shown) if c in board]].to_string(index=False, max_colwidth=30))
    (markdown,) = export_board(board, plan.space, plan.sweep_dir, formats=("md",), plots=False)
    print(f"leaderboard: {path} and {markdown.name}; all formats and plots: python -m derm.leaderboard {plan.sweep_dir}")
    if plan.parent_run_id:
        parent = RunLogger(plan.tracking_uri, "", "", run_id=plan.parent_run_id)
        parent.log_artifact(path)
        parent.log_artifact(markdown)
        parent.finish()
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("space", nargs="?", help="search-space YAML (see docs/search_spaces.md)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sweep.num_samples=8 train.epochs=5")
    parser.add_argument("--demo", action="store_true", help="the embedded synthetic data, CPU-sized settings")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="join an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--dashboard-port", type=int, default=8265, help="local Ray dashboard port (127.0.0.1)")
    parser.add_argument("--storage", help="where trials write checkpoints: a path every node can read (NFS) "
                                          "or a URI (s3://bucket/sweeps, gs://..., file://...)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite in the sweep folder)")
    parser.add_argument("--out", default="sweeps", help="root folder of sweep outputs (default: sweeps)")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.resume:
            plan = load_plan(Path(args.resume))
        else:
            if not args.space:
                raise ConfigError("give a search-space file, e.g. search_spaces/unet.yaml, or --resume SWEEP_DIR")
            space = load_search_space(args.space, args.overrides)
            demo_root = None
            if args.demo:
                demo_root, layout = demo_dataset(space.task)
                space = apply_demo(space, demo_root, layout)
            check_data_exists(space)
            plan = plan_sweep(space, Path(args.out), args.storage, args.mlflow_uri, demo_root)
        print(f"sweep folder: {plan.sweep_dir}")
        from derm.tracking import ui_command

        print(f"MLflow: {ui_command(plan.tracking_uri)}", flush=True)
        run_sweep(plan, address=args.address, dashboard_port=args.dashboard_port, resume=bool(args.resume))
        finish_sweep(plan)
    except DermError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
