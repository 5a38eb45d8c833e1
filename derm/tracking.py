"""MLflow tracking for runs, sweeps and their trials.

One small logger over ``MlflowClient`` serves ``derm.train``, every sweep trial and
retrain-best. It talks to an explicit tracking URI and run id instead of MLflow's
fluent global "active run": sweep trials run in Ray worker processes that may be
reused for several trials (and Ray's MLflowLoggerCallback makes no nested runs,
ray-project/ray#19978), so each trial opens its own child run, tagged with the sweep's
parent run id (``mlflow.parentRunId``), which MLflow's UI shows as nesting.

The default store is a SQLite file beside the outputs (``<folder>/mlflow.db``):
embedded, no server; ``mlflow ui --backend-store-uri sqlite:///...`` opens it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from derm.config import flatten_dotted

PARENT_TAG = "mlflow.parentRunId"


def default_tracking_uri(folder: str | Path) -> str:
    path = Path(folder).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def is_local_store(uri: str) -> bool:
    """True for a store only this machine can open: a SQLite file or a local folder."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri and not uri.startswith("databricks")


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store live beside it (``mlartifacts/``).

    Without this MLflow writes them to ``./mlruns`` of whatever folder the command ran
    in, far from the sweep they belong to. Servers choose their own artifact store.
    """
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store (bound to localhost)."""
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


class RunLogger:
    """One MLflow run: params once, metrics per epoch, artifacts, a final status."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str,
                 parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                 run_id: str | None = None):
        # Imported here: mlflow takes seconds to import and most commands log nothing.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        if run_id is not None:  # continue a run (resume)
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=artifact_location(tracking_uri))
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten_dotted(params).items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


TRIAL_TAG = "derm.trial_id"


def find_trial_run(tracking_uri: str, experiment: str, trial_id: str, parent_run_id: str | None) -> str | None:
    """The run id of a sweep trial's child run, or None when it has none yet."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = f"tags.`{TRIAL_TAG}` = '{trial_id}'"
    if parent_run_id:
        query += f" and tags.`{PARENT_TAG}` = '{parent_run_id}'"
    runs = client.search_runs([found.experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def trial_run(tracking_uri: str, experiment: str, trial_id: str, parent_run_id: str | None) -> tuple["RunLogger", bool]:
    """The trial's child run, continued when it exists (a resumed or retried trial), else created.

    Returns the logger and whether the run is new. One trial is one run, across any number
    of resumes: its epochs are never split over two runs.
    """
    run_id = find_trial_run(tracking_uri, experiment, trial_id, parent_run_id)
    if run_id is not None:
        return RunLogger(tracking_uri, experiment, trial_id, run_id=run_id), False
    return RunLogger(tracking_uri, experiment, trial_id, parent_run_id=parent_run_id,
                     tags={TRIAL_TAG: trial_id}), True
