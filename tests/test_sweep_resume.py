"""A sweep whose driver is SIGKILLed resumes with --resume: every trial done once, none lost."""

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
from spaces import write_space


pytestmark = pytest.mark.slow  # each test starts Ray and runs a sweep

def test_killed_sweep_resumes_without_rerunning_or_losing_trials(ham_demo, tmp_path):
    path = write_space(tmp_path, ham_demo, "resumable", encoders=("resnet18", "mobilenet_v2", "efficientnet-b0"),
                       epochs=3, max_concurrent=1)
    out = tmp_path / "sweeps"
    driver = subprocess.Popen([sys.executable, "-m", "derm.sweep", str(path), "--out", str(out),
                               "--dashboard-port", "8378"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in driver.stdout:
        seen.append(line)
        if " epoch 2/3 " in line:  # the first trial is mid-way: kill the driver now
            break
    # SIGKILL the driver and the local Ray it started (same session): nothing shuts down cleanly.
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert any(" epoch 2/3 " in line for line in seen), "".join(seen)
    (sweep_dir,) = (out / "resumable").iterdir()
    assert not (sweep_dir / "leaderboard.csv").exists()

    resumed = subprocess.run([sys.executable, "-m", "derm.sweep", "--resume", str(sweep_dir),
                              "--dashboard-port", "8379"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    board = pd.read_csv(sweep_dir / "leaderboard.csv")
    assert sorted(board["config.model.encoder"]) == ["efficientnet-b0", "mobilenet_v2", "resnet18"]
    assert list(board["status"]) == ["completed"] * 3
    for trial_dir in sweep_dir.glob("trial_*"):
        epochs = [json.loads(line)["epoch"] for line in (trial_dir / "result.json").read_text().splitlines()]
        assert epochs == [1, 2, 3], (trial_dir.name, epochs)

    # One trial, one MLflow child run, across the kill and the resume: the interrupted trial's
    # epochs are all in its one run, which ends FINISHED.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("derm-sweep-resumable").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["derm.trial_id"] for r in children) == sorted(board["trial_id"])
    for child in children:
        # An epoch re-run after the resume (the last checkpoint Ray recorded may be one back)
        # is logged again at the same step, in the same run.
        steps = sorted({m.step for m in client.get_metric_history(child.info.run_id, "score")})
        assert steps == [1, 2, 3], (child.info.run_name, steps)
        assert child.info.status == "FINISHED"
