"""MLflow logging: runs, nested children, and artifacts kept beside a local store."""

import os

from mlflow.tracking import MlflowClient

from derm.config import flatten_dotted as flatten
from derm.tracking import PARENT_TAG, RunLogger, default_tracking_uri


def test_flatten_joins_nested_keys_with_dots():
    assert flatten({"optim": {"lr": 1e-3, "name": "adam"}, "task": "multitask"}) == {
        "optim.lr": 1e-3, "optim.name": "adam", "task": "multitask"}


def test_artifacts_of_a_local_store_live_beside_it_not_in_the_working_folder(tmp_path, monkeypatch):
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    store = tmp_path / "sweep"
    uri = default_tracking_uri(store)
    parent = RunLogger(uri, "derm-test", "parent")
    child = RunLogger(uri, "derm-test", "child", parent_run_id=parent.run_id)
    report = tmp_path / "report.txt"
    report.write_text("hello")
    child.log_artifact(report)
    child.log_metrics({"dice": 0.5, "nan": float("nan"), "flag": True}, step=1)
    child.finish()

    assert list((store / "mlartifacts").rglob("report.txt"))
    assert not os.listdir(work)  # no ./mlruns
    run = MlflowClient(uri).get_run(child.run_id)
    assert run.data.tags[PARENT_TAG] == parent.run_id
    assert run.data.metrics == {"dice": 0.5}  # non-finite and boolean values are not metrics
    assert run.info.status == "FINISHED"
