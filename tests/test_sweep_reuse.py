"""Reused Ray actors (derm.sweep.build_tuner) still give every trial a fresh start.

Two trials run one after the other in the same worker process; each must report exactly
what its configuration gives when trained alone, in its own MLflow child run and trial folder.
ASHA stops every trial (at its cut, or at max_t), so each ends by Ray Tune's SystemExit.
"""

import json
import subprocess
import sys

import pytest
import torch
from spaces import write_space

from derm.checkpoint import load_checkpoint
from derm.config import config_from_dict
from derm.training import fit


pytestmark = pytest.mark.slow  # each test starts Ray and runs a sweep

@pytest.fixture(scope="module")
def sequential_sweep(ham_demo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reuse")
    path = write_space(folder, ham_demo, "reuse", encoders=("mobilenet_v2", "resnet18"), scheduler="asha",
                       grace_period=1, reduction_factor=2, max_concurrent=1)
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(path), "--out",
                           str(folder / "sweeps"), "--dashboard-port", "8381"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (sweep_dir,) = (folder / "sweeps" / "reuse").iterdir()
    return sweep_dir


def trial_results(sweep_dir):
    return {path.parent.name: [json.loads(line) for line in path.read_text().splitlines()]
            for path in sweep_dir.glob("trial_*/result.json")}


def test_trials_share_one_worker_process(sequential_sweep):
    results = trial_results(sequential_sweep)
    assert len(results) == 2
    assert len({rows[0]["pid"] for rows in results.values()}) == 1


def test_each_reused_trial_reports_what_its_config_gives_alone(sequential_sweep, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what Ray gives a 1-CPU trial (OMP_NUM_THREADS=1)
    try:
        trial_dirs = sorted(sequential_sweep.glob("trial_*"))
        assert len(trial_dirs) == 2
        for trial_dir in trial_dirs:
            latest = max(trial_dir.glob("checkpoint_*/latest.pt"))  # the last epoch's
            state = load_checkpoint(latest)
            cfg = config_from_dict(state["config"], str(latest))
            alone = fit(cfg, tmp_path / trial_dir.name, split=_split(state["split"]))
            reported = [row["score"] for row in trial_results(sequential_sweep)[trial_dir.name]]
            assert len(reported) == state["epoch"]
            assert len(reported) >= 1
            expected = [row["score"] for row in alone.history][:len(reported)]
            assert reported == pytest.approx(expected, abs=1e-6), trial_dir.name
    finally:
        torch.set_num_threads(threads)


def test_each_trial_stopped_by_the_scheduler_has_its_own_finished_mlflow_child_run(sequential_sweep):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{sequential_sweep / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("derm-sweep-reuse").experiment_id])
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    results = {name.removeprefix("trial_"): rows for name, rows in trial_results(sequential_sweep).items()}
    assert sorted(children) == sorted(results)
    assert sorted(r.data.params["model.encoder"] for r in children.values()) == ["mobilenet_v2", "resnet18"]
    for trial_id, child in children.items():
        assert child.info.status == "FINISHED"
        assert len(client.get_metric_history(child.info.run_id, "score")) == len(results[trial_id])
        assert "config.yaml" in {a.path for a in client.list_artifacts(child.info.run_id)}
        best = max(results[trial_id], key=lambda row: row["score"])
        assert float(child.data.tags["derm.best_score"]) == pytest.approx(best["score"])


def _split(records):
    import pandas as pd

    split = pd.Series(records, name="split")
    split.index.name = "image_id"
    return split
