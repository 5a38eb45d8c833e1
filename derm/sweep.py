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
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from derm.errors import ConfigError, DermError
from derm.search_space import (
    SearchSpace, apply_demo, build_search_space, load_search_space, trial_overrides,
)

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
    reported: tuple[str, ...] = ()  # data problems the driver printed (trials need not repeat them)

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
    from derm.data.loaders import load_split
    from derm.tracking import RunLogger, absolute_tracking_uri, default_tracking_uri

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    if storage and "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())  # trials run in folders of their own
    base = Path(storage) if storage and "://" not in storage else out_root
    sweep_dir = (base / space.name / stamp).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=False)
    cfg = space.base_config
    table = load_table(cfg.data.root, cfg.data.layout)
    reported = []
    for problem in table.attrs.get("problems", []):
        if problem.severity == "error":
            reported.append(f"skipping {problem.path}: {problem.problem}")
            print(f"data: {reported[-1]}")
        else:
            print(f"data: {problem} (warning)")
    # Made over every image the dataset lists: trials drop bad files from their parts, so
    # the split stays the same whichever files turn out to be broken.
    split = load_split(cfg, table, sweep_dir)
    (sweep_dir / SPACE_FILE).write_text(yaml.safe_dump(space.file_values, sort_keys=False))
    tracking_uri = absolute_tracking_uri(mlflow_uri) if mlflow_uri else default_tracking_uri(sweep_dir)
    parent = RunLogger(tracking_uri, f"derm-sweep-{space.name}", stamp,
                       tags={"derm.sweep_dir": str(sweep_dir)})
    parent.log_params({"sweep": space.sweep.model_dump(mode="json"), "searched": list(space.searched_keys)})
    plan = SweepPlan(sweep_dir, space, tracking_uri, parent.run_id, demo_root, storage, tuple(reported))
    (sweep_dir / SWEEP_FILE).write_text(json.dumps({
        "source": space.source, "overrides": list(space.overrides), "demo_root": demo_root,
        "tracking_uri": tracking_uri, "parent_run_id": parent.run_id, "storage": storage,
        "working_dir": space.base_dir,
    }, indent=2))
    print(f"split: {', '.join(f'{n} {(split == n).sum()}' for n in ('train', 'val', 'test'))} images "
          f"({sweep_dir / 'split.csv'}; the test split is not read by the sweep)")
    return plan


def load_plan(sweep_dir: Path) -> SweepPlan:
    """Rebuild the plan of an interrupted sweep from its folder (for --resume)."""
    info_file = sweep_dir / SWEEP_FILE
    if not info_file.is_file():
        raise DermError(f"--resume: {sweep_dir} is not a derm sweep folder (no {SWEEP_FILE})")
    info = json.loads(info_file.read_text())
    file_values = yaml.safe_load((sweep_dir / SPACE_FILE).read_text())
    # Relative paths mean what they meant where the sweep was started, not where it resumes.
    space = build_search_space(file_values, info["source"], tuple(info["overrides"]),
                               base_dir=info.get("working_dir") or str(Path.cwd()))
    if info["demo_root"]:
        space = apply_demo(space, info["demo_root"], DEMO_LAYOUTS.get(space.task, "ham10000"))
    return SweepPlan(sweep_dir.resolve(), space, info["tracking_uri"], info["parent_run_id"], info["demo_root"],
                     info.get("storage"))


def trial_device(requested: str, gpu_ids: list) -> str:
    """The device a trial trains on: the GPU Ray assigned it, else the CPU.

    Ray 2.60 no longer hides the GPUs from a task that reserved none (it leaves
    ``CUDA_VISIBLE_DEVICES`` alone), so ``train.device: auto`` would put a CPU trial on
    cuda:0, beside the trials that did reserve it. Ray sets ``CUDA_VISIBLE_DEVICES`` to
    the assigned GPUs, so "cuda" then means exactly those.

    >>> trial_device("auto", []), trial_device("auto", [2]), trial_device("cpu", [0])
    ('cpu', 'cuda', 'cpu')
    """
    if not gpu_ids or requested == "cpu":
        return "cpu"
    return "cuda"


def train_trial(config: dict[str, Any], *, space: SearchSpace, split_records: dict[str, str],
                tracking_uri: str, parent_run_id: str | None, cpus: float, messages=None) -> None:
    """The Ray Tune trainable: one trial = the training loop with Ray's report and checkpoints."""
    import pandas as pd
    import ray
    from ray import tune

    from derm.data.loaders import loader_workers
    from derm.search_space import resolve_trial_config
    from derm.tracking import trial_run
    from derm.training import fit

    context = tune.get_context()
    trial_id = context.get_trial_id()
    cfg = resolve_trial_config(space, config)
    cfg.name = trial_id
    cfg.data.num_workers = loader_workers(cpus)

    def log(message: str) -> None:
        print(f"trial {trial_id}: {message}", file=sys.stderr, flush=True)  # the worker's log
        if messages is not None:
            messages.send(trial_id, message)

    device = trial_device(cfg.train.device, ray.get_gpu_ids())
    if cfg.train.device == "cuda" and device == "cpu":
        log("train.device is cuda but the trial reserved no GPU (sweep.resources.gpu); training on cpu")
    cfg.train.device = device

    # One MLflow child run per trial, found again by its trial id when the trial is resumed
    # or retried: Ray's per-session working directory does not survive a restart.
    logger, created = trial_run(tracking_uri, f"derm-sweep-{space.name}", trial_id, parent_run_id)
    if created:
        logger.log_params(trial_overrides(space, config))

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume = Path(checkpoint.to_directory()) / "latest.pt"

    logged_config = False

    def report(metrics: dict[str, Any], latest: Path | None) -> None:
        # Everything is logged before tune.report: a trial the scheduler cuts ends inside it
        # (SystemExit) and may never run another line. Its final status is the driver's
        # to set (ChildRunStatus), which sees every way a trial ends.
        nonlocal logged_config
        logger.log_metrics(metrics, step=int(metrics["epoch"]))
        logger.set_tags({"derm.best_epoch": metrics["best_epoch"], "derm.best_score": metrics["best_score"]})
        if not logged_config:
            logger.log_artifact(run_dir / "config.yaml")
            logged_config = True
        logger.log_artifact(run_dir / "history.csv")
        if latest is None:  # train.checkpoint_every: no checkpoint this epoch
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            os.link(latest, Path(folder) / "latest.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    split = pd.Series(split_records, name="split")
    split.index.name = "image_id"
    with tempfile.TemporaryDirectory(prefix="derm-trial-") as folder:
        run_dir = Path(folder)
        fit(cfg, run_dir, reporter=report, resume=resume, split=split, log=log)


class TrialMessages:
    """Lines trials send to the sweep's console: skipped files, waiting for a cache, device notes.

    Ray runs trials in worker processes whose output the console does not show
    (``log_to_driver=False`` keeps Ray's own noise out); a small named Ray actor carries the
    lines worth a user's attention to the driver, which prints them between trial events.
    Only the actor's name is pickled, so the console callback Ray Tune restores on
    ``--resume`` finds the new session's actor.
    """

    NAME = "derm-trial-messages"

    def __init__(self, name: str = NAME):
        self.name = name
        self._actor = None

    @classmethod
    def start(cls, name: str = NAME) -> "TrialMessages":
        """Create the actor (in the driver, once per session)."""
        import ray

        @ray.remote(num_cpus=0)
        class Inbox:
            def __init__(self):
                self.lines: list = []

            def send(self, line) -> None:
                self.lines.append(line)

            def take(self) -> list:
                lines, self.lines = self.lines, []
                return lines

        messages = cls(name)
        messages._actor = Inbox.options(name=name, get_if_exists=True).remote()
        return messages

    def _inbox(self):
        if self._actor is None:
            import ray

            self._actor = ray.get_actor(self.name)
        return self._actor

    def send(self, trial_id: str, message: str) -> None:
        self._inbox().send.remote((trial_id, message))

    def receive(self) -> list[tuple[str, str]]:
        import ray

        try:
            return ray.get(self._inbox().take.remote(), timeout=10)
        except (ValueError, ray.exceptions.RayError):  # the actor is gone (shutdown)
            return []

    def __getstate__(self) -> dict:
        return {"name": self.name, "_actor": None}


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
                from derm.tracking import find_trial_run

                run_id = find_trial_run(self.tracking_uri, self.experiment, trial_id, self.parent_run_id)
                if run_id is not None:
                    from mlflow.tracking import MlflowClient

                    MlflowClient(self.tracking_uri).set_terminated(run_id, status=status)

        return _Status(*args, **kwargs)


class SweepConsole:
    """Ray Tune callback: one line per trial event, with the counts and the best so far."""

    def __new__(cls, *args, **kwargs):
        from ray.tune import Callback

        class _Console(Callback):
            def __init__(self, metric: str, mode: str, max_epochs: int, messages: TrialMessages | None = None,
                         already_said: tuple[str, ...] = ()):
                self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
                self.messages = messages
                # Every trial reads the same data: a skipped file is said once per sweep.
                self.said = set(already_said)
                self.best: tuple[float, str] | None = None
                self.counts = {"finished": 0, "stopped early": 0, "failed": 0}
                self.polled = 0.0

            def _better(self, value: float) -> bool:
                return self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])

            def on_step_end(self, iteration, trials, **info):
                if self.messages is not None and time.monotonic() - self.polled >= 1.0:
                    self.polled = time.monotonic()
                    self.print_messages()

            def print_messages(self) -> None:
                for trial_id, message in self.messages.receive():
                    if message.startswith("skipping "):
                        if message not in self.said:
                            self.said.add(message)
                            print(f"data: {message}", flush=True)
                    else:
                        print(f"trial {trial_id}: {message}", flush=True)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if self.messages is not None:
                    self.print_messages()
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
                if self.messages is not None:
                    self.print_messages()
                self.counts["failed"] += 1
                # trial.path is the trial's folder in the sweep's storage (the sweep folder),
                # where Ray copies error.txt; local_path is a staging folder under /tmp/ray.
                print(f"trial {trial.trial_id} failed: {error_summary(trial)} "
                      f"(traceback: {trial.path}/error.txt)", flush=True)

            def on_experiment_end(self, trials, **info):
                if self.messages is not None:
                    self.print_messages()

        return _Console(*args, **kwargs)


def error_summary(trial) -> str:
    """The last line of a failed trial's error (the exception), from the staging copy Ray just wrote."""
    path = trial.error_file
    try:
        lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except (OSError, TypeError):
        return "see its error file"
    return lines[-1][:300] if lines else "see its error file"


def use_token_auth_if_available(address: str | None) -> None:
    """`ray start` turns token authentication on when a token exists (Ray 2.60), but a driver
    given an explicit address does not, and the head refuses it. Ray reads the mode when it
    is imported, so this runs before any ``import ray``."""
    if address and "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


@dataclass(frozen=True)
class Cluster:
    """What the sweep runs on: Ray's totals, its largest node, and whether derm started it."""

    cpus: float
    gpus: float
    nodes: int
    largest_node_cpus: float
    local: bool


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def start_ray(address: str | None, dashboard_port: int | None) -> Cluster:
    """Join the cluster at ``address``, or start a new local Ray (never one already running).

    Without an address Ray itself would join whatever cluster ``/tmp/ray/ray_current_cluster``
    names (another project's, a colleague's, a dead one); ``address="local"`` always starts
    this sweep's own instance, with its dashboard on 127.0.0.1 (8265, or the next free port).
    """
    use_token_auth_if_available(address)
    import ray

    # A failed trial's traceback is in its error.txt and SweepConsole names the file; Ray's
    # copy on the console (and its "Trials did not complete" list) would bury the summary.
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Workers inherit the driver's environment but not its working directory.
    if os.environ.get("DERM_CACHE_DIR"):
        os.environ["DERM_CACHE_DIR"] = os.path.abspath(os.path.expanduser(os.environ["DERM_CACHE_DIR"]))
    if address:
        host = address.split("://")[-1].rsplit(":", 1)[0]
        # A head bound to loopback registers its node as 127.0.0.1; a driver on that machine
        # must say the same, or Ray looks for a local raylet at the machine's public IP.
        local = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
        context = ray.init(address=address, log_to_driver=False, **local)
    else:
        if dashboard_port is not None and not port_is_free(dashboard_port):
            free = free_port()
            print(f"dashboard port {dashboard_port} is taken; using {free}", flush=True)
            dashboard_port = free
        # dashboard_port None: Ray tries 8265, then the next free ports.
        context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                           dashboard_port=dashboard_port, log_to_driver=False)
    url = context.dashboard_url
    if url:
        url = url if url.startswith("http") else f"http://{url}"
        taken = ""
        if not address and dashboard_port is None and not url.endswith(":8265"):
            taken = "; 8265 was taken, so Ray chose this port"
        print(f"Ray dashboard: {url} (if it asks for a token: ray get-auth-token{taken})", flush=True)
    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cluster = Cluster(cpus=resources.get("CPU", 0.0), gpus=resources.get("GPU", 0.0), nodes=len(nodes),
                      largest_node_cpus=max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0),
                      local=not address)
    where = "a new local Ray" if cluster.local else f"the Ray cluster at {address}"
    print(f"Ray: {where}, {cluster.nodes} node(s), {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs", flush=True)
    return cluster


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fit_resources(settings, cluster: Cluster) -> tuple[Any, list[str]]:
    """The per-trial resources the sweep will really reserve on ``cluster``, and why they differ.

    GPUs asked for but absent: trials run on the CPU. More CPUs per trial than this machine
    has (local Ray only; a cluster may add nodes): as many as it has. Returns the
    ``Resources`` and the lines to print.
    """
    resources = settings.resources
    notes = []
    if resources.gpu > 0 and cluster.gpus < resources.gpu:
        notes.append(f"warning: sweep.resources.gpu={resources.gpu:g} but the cluster has {cluster.gpus:g} "
                     f"GPUs; running trials on CPU instead")
        resources = resources.model_copy(update={"gpu": 0.0})
    if cluster.local and resources.cpu > cluster.largest_node_cpus > 0:
        notes.append(f"warning: sweep.resources.cpu={resources.cpu:g} but this machine has "
                     f"{cluster.largest_node_cpus:g} CPUs; each trial reserves {cluster.largest_node_cpus:g}")
        resources = resources.model_copy(update={"cpu": cluster.largest_node_cpus})
    elif not cluster.local and resources.cpu > cluster.largest_node_cpus:
        notes.append(f"warning: sweep.resources.cpu={resources.cpu:g} but no node of the cluster has more than "
                     f"{cluster.largest_node_cpus:g} CPUs; trials wait until one joins")
    usage = gpu_usage(cluster, resources, settings.max_concurrent, settings.num_samples)
    if usage:
        notes.append(usage)
    return resources, notes


def gpu_usage(cluster: Cluster, resources, max_concurrent: int | None, num_samples: int) -> str | None:
    """One line: how many of the cluster's GPUs these settings keep busy, and how to use all.

    Ray packs fractional GPU requests onto one card before it uses the next, so
    ``gpu: 0.25`` with ``max_concurrent: 4`` fills one GPU of four.

    >>> from derm.search_space import Resources
    >>> gpu_usage(Cluster(64, 4, 1, 64, True), Resources(cpu=4, gpu=0.25), 4, 40)
    'GPUs: the cluster has 4; sweep.resources.gpu=0.25 (4 trials per GPU) with sweep.max_concurrent=4 runs at most 4 trials at once, on 1 of the 4 GPUs; to use all 4, set sweep.max_concurrent=16 (or remove it)'
    """
    gpus = int(cluster.gpus)
    if gpus < 1:
        return None
    if resources.gpu == 0:
        return (f"GPUs: the cluster has {gpus}, but sweep.resources.gpu is 0, so trials train on CPU; "
                f"set sweep.resources.gpu=0.5 (two trials per GPU) or 1 to use them")
    if resources.gpu <= 1:
        per_gpu = int(1 / resources.gpu + 1e-9)
        gpu_slots = per_gpu * gpus
    else:
        per_gpu = 0
        gpu_slots = int(gpus // resources.gpu)
    cpu_slots = int(cluster.cpus // resources.cpu) if resources.cpu else gpu_slots
    limits = {"gpu": gpu_slots, "cpu": cpu_slots, "samples": num_samples}
    if max_concurrent is not None:
        limits["concurrent"] = max_concurrent
    concurrent = min(limits.values())
    used = min(gpus, math.ceil(concurrent / per_gpu) if per_gpu else int(concurrent * resources.gpu))
    sharing = f" ({per_gpu} trials per GPU)" if per_gpu > 1 else ""
    cap = f" with sweep.max_concurrent={max_concurrent}" if max_concurrent is not None else ""
    line = (f"GPUs: the cluster has {gpus}; sweep.resources.gpu={resources.gpu:g}{sharing}{cap} runs at most "
            f"{concurrent} trials at once, on {used} of the {gpus} GPUs")
    if used >= gpus or limits["samples"] == concurrent:
        return line
    if limits.get("concurrent") == concurrent:
        return line + f"; to use all {gpus}, set sweep.max_concurrent={min(gpu_slots, num_samples)} (or remove it)"
    if cpu_slots == concurrent:
        wanted = min(gpu_slots, num_samples)
        return line + (f"; each trial reserves {resources.cpu:g} CPUs of {cluster.cpus:g}: to use all {gpus}, "
                       f"set sweep.resources.cpu={max(1, int(cluster.cpus // wanted))}")
    return line


def check_tracking_reachable(tracking_uri: str, cluster: Cluster) -> None:
    """Trials on other machines cannot open the driver's SQLite file: refuse, with the fix."""
    from derm.tracking import is_local_store

    if cluster.nodes > 1 and is_local_store(tracking_uri):
        raise DermError(
            f"the cluster has {cluster.nodes} nodes, but the MLflow store {tracking_uri} is a file on this "
            f"machine that trials on the other nodes cannot open; start an MLflow server "
            f"(mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri sqlite:///mlflow.db) and "
            f"pass --mlflow-uri http://<this machine>:5000")


def run_sweep(plan: SweepPlan, resources, *, resume: bool = False):
    """Run (or resume) the sweep on the Ray started by ``start_ray``; returns Ray Tune's ResultGrid."""
    from ray import tune

    from derm.data.splits import read_split

    split = read_split(plan.sweep_dir / "split.csv")
    messages = TrialMessages.start()
    trainable = tune.with_parameters(train_trial, space=plan.space,
                                     split_records={str(k): v for k, v in split.items()},
                                     tracking_uri=plan.tracking_uri, parent_run_id=plan.parent_run_id,
                                     cpus=resources.cpu, messages=messages)
    return build_tuner(plan, trainable, resources=resources, resume=resume, messages=messages).fit()


def build_tuner(plan: SweepPlan, trainable, *, resources=None, resume: bool = False, reuse_actors: bool = True,
                messages: TrialMessages | None = None):
    """The sweep's Tuner around ``trainable`` (a function trainable; ``resources`` per trial are added,
    default the space's ``sweep.resources``).

    ``reuse_actors`` keeps each trial's worker process for the next trial with the same
    resources: starting a fresh Ray actor costs about 1.5 s per trial on 2 cores
    (benchmarks/trial_startup.py), which a sweep of short trials pays many times over.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from derm.search_space import build_searcher

    space, settings = plan.space, plan.space.sweep
    resources = resources or settings.resources
    trainable = tune.with_resources(trainable, {"cpu": resources.cpu, "gpu": resources.gpu})
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # lose little to a killed driver
    # The console is SweepConsole's: Ray's own reporter would add its boxes and, for a failed
    # trial, a path in Ray's staging folder under /tmp instead of the sweep folder.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Every epoch checkpoints (for resume); Ray's warning about frequent snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    callbacks = [SweepConsole(settings.metric, settings.mode, space.max_epochs, messages, plan.reported),
                 ChildRunStatus(plan.tracking_uri, f"derm-sweep-{space.name}", plan.parent_run_id)]
    if resume:
        # Ray restores the run config, callbacks included, from the experiment state; the
        # trainable (with its parameters) is the one given here.
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
            callbacks=callbacks,
        ),
    )


def finish_sweep(plan: SweepPlan):
    """Write and print the leaderboard, attach it to the MLflow parent run; returns the board."""
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
        parent.finish("FINISHED" if trials_trained(board) else "FAILED")
    return board


def trials_trained(board) -> int:
    """How many trials completed at least one epoch."""
    return int((board["epochs_trained"] > 0).sum()) if not board.empty else 0


def failure_summary(board, sweep_dir: Path) -> str | None:
    """One line on the failed trials: how many, their errors (the most common first), where
    the tracebacks are; None when no trial failed."""
    if board.empty:
        return None
    failed = board[board["status"] == "failed"]
    if failed.empty:
        return None
    errors = failed["error"].fillna("").replace("", "no error message").value_counts()
    listed = "; ".join(f"{count}x {error}" for error, count in errors.items())
    return (f"{len(failed)} of {len(board)} trials failed: {listed} "
            f"(tracebacks: {sweep_dir}/trial_*/error.txt)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("space", nargs="?", help="search-space YAML (see docs/search_spaces.md)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sweep.num_samples=8 train.epochs=5")
    parser.add_argument("--demo", action="store_true", help="the embedded synthetic data, CPU-sized settings")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep (reads Ray Tune's "
                                                              "pickled state: resume only sweep folders you trust)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                        help="join an existing Ray cluster (default: $RAY_ADDRESS, else a new local Ray)")
    parser.add_argument("--dashboard-port", type=int, default=None,
                        help="local Ray's dashboard port on 127.0.0.1 (default 8265, or the next free one)")
    parser.add_argument("--storage", help="where trials write checkpoints: a path every node can read (NFS) "
                                          "or a URI (s3://bucket/sweeps, gs://..., file://...)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite in the sweep folder; "
                                             "a server for a multi-node cluster)")
    parser.add_argument("--out", default="sweeps", help="root folder of sweep outputs (default: sweeps)")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.resume:
            plan = load_plan(Path(args.resume))
            space = plan.space
        else:
            if not args.space:
                raise ConfigError("give a search-space file, e.g. search_spaces/unet.yaml, or --resume SWEEP_DIR")
            space = load_search_space(args.space, args.overrides)
            demo_root = None
            if args.demo:
                demo_root, layout = demo_dataset(space.task)
                space = apply_demo(space, demo_root, layout)
            check_data_exists(space)
        cluster = start_ray(args.address, args.dashboard_port)
        resources, notes = fit_resources(space.sweep, cluster)
        for note in notes:
            print(note, flush=True)
        if not args.resume:
            from derm.tracking import absolute_tracking_uri

            check_tracking_reachable(absolute_tracking_uri(args.mlflow_uri) if args.mlflow_uri else "sqlite:///", cluster)
            plan = plan_sweep(space, Path(args.out), args.storage, args.mlflow_uri, demo_root)
        else:
            check_tracking_reachable(plan.tracking_uri, cluster)
        print(f"sweep folder: {plan.sweep_dir}")
        from derm.tracking import ui_command

        print(f"MLflow: {ui_command(plan.tracking_uri)}", flush=True)
        run_sweep(plan, resources, resume=bool(args.resume))
        board = finish_sweep(plan)
    except DermError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = failure_summary(board, plan.sweep_dir)
    if not trials_trained(board):
        print(f"error: no trial completed an epoch; {summary or 'no trial ran'}", file=sys.stderr)
        return 1
    if summary:
        print(f"warning: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
