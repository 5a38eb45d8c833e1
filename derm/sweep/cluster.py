"""Where a sweep runs: this sweep's own local Ray or an existing cluster, and what it can use there.

``start_ray`` never joins a cluster it was not given (``address="local"``), picks a free
dashboard port, and returns a ``Cluster`` summary; ``fit_resources`` turns the space's
per-trial resources into what the cluster can really give, with the lines that say so
(``gpu_usage``: how many GPUs the settings keep busy). ``check_tracking_reachable``
refuses a local MLflow store on a cluster of several nodes.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from derm.errors import ConfigError
from derm.search_space import Resources, SweepSettings


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
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def fit_resources(settings: SweepSettings, cluster: Cluster) -> tuple[Resources, list[str]]:
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


def gpu_usage(cluster: Cluster, resources: Resources, max_concurrent: int | None, num_samples: int) -> str | None:
    """One line: how many of the cluster's GPUs these settings keep busy, and how to use all.

    Ray packs fractional GPU requests onto one card before it uses the next, so
    ``gpu: 0.25`` with ``max_concurrent: 4`` fills one GPU of four.

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
        raise ConfigError(
            f"the cluster has {cluster.nodes} nodes, but the MLflow store {tracking_uri} is a file on this "
            f"machine that trials on the other nodes cannot open; start an MLflow server "
            f"(mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri sqlite:///mlflow.db) and "
            f"pass --mlflow-uri http://<this machine>:5000")
