"""`python -m derm.sweep` end to end: a failing trial, the dashboard, MLflow, the leaderboard."""

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml


def write_space(tmp_path, data_root, **sweep):
    space = {
        "name": "tiny",
        "task": "multitask",
        "data": {"root": str(data_root), "image_size": 32, "augment": "none"},
        "model": {"arch": "Unet", "encoder": {"choice": ["resnet18", "mobilenet_v2", "tu-not_a_timm_model"]},
                  "encoder_weights": None},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 16},
        "sweep": {"search": "grid", "scheduler": "fifo", "max_concurrent": 2,
                  "resources": {"cpu": 1, "gpu": 0}, **sweep},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def auth_token() -> str | None:
    done = subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token"], capture_output=True, text=True)
    token = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else None
    if token is None and (Path.home() / ".ray" / "auth_token").is_file():
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    return token


def read_dashboard(url: str) -> dict:
    request = urllib.request.Request(f"{url}/api/version")
    token = auth_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_sweep_with_a_failing_trial_marks_it_failed_and_completes_the_others(ham_demo, tmp_path):
    space = write_space(tmp_path, ham_demo)
    process = subprocess.Popen(
        [sys.executable, "-m", "derm.sweep", str(space), "--out", str(tmp_path / "sweeps"),
         "--dashboard-port", "8377"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, dashboard = [], None
    for line in process.stdout:
        output.append(line)
        match = re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", line)
        if match and dashboard is None:
            url = match.group(1)
            for _ in range(30):  # the dashboard's HTTP server may start a moment later
                try:
                    dashboard = read_dashboard(url)
                    break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(1)
    assert process.wait(timeout=900) == 0, "".join(output)
    text = "".join(output)
    assert dashboard is not None and "ray_version" in dashboard, text
    assert "mlflow ui --backend-store-uri" in text

    (sweep_dir,) = (tmp_path / "sweeps" / "tiny").iterdir()
    for name in ("search_space.yaml", "split.csv", "sweep.json", "leaderboard.csv", "leaderboard.md"):
        assert (sweep_dir / name).is_file(), name
    board = pd.read_csv(sweep_dir / "leaderboard.csv")
    assert len(board) == 3
    assert list(board["status"]) == ["completed", "completed", "failed"]
    failed = board.iloc[-1]
    assert failed["config.model.encoder"] == "tu-not_a_timm_model"
    assert "not_a_timm_model" in failed["error"]
    assert board["score"].iloc[0] >= board["score"].iloc[1]
    assert (board["epochs_trained"].iloc[:2] == 2).all()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("derm-sweep-tiny").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED", "FINISHED"]
    assert "leaderboard.csv" in [a.path for a in client.list_artifacts(parents[0].info.run_id)]
    for child in children:
        if child.info.status == "FINISHED":
            assert {"config.yaml", "history.csv"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
            assert "dice" in child.data.metrics and "encoder" in str(child.data.params)


@pytest.mark.parametrize("change, expected", [
    ({"sweep": {"bogus": 1}}, "sweep.bogus"),
    ({"model": {"encoder": {"choice": []}}}, "model.encoder"),
    ({"optim": {"lr": {"loguniform": [0.1, 0.001]}}}, "optim.lr"),
    ({"sweep": {"resources": {"gpu": 1.5}}}, "sweep.resources.gpu"),
    ({"model": {"arch": {"choice": ["Unet", "Uent"]}}}, "model.arch"),
])
def test_bad_search_spaces_fail_in_one_line_before_ray_starts(tmp_path, change, expected):
    space = {"name": "bad", "model": {"encoder_weights": None}, "sweep": {}}
    for section, values in change.items():
        space.setdefault(section, {}).update(values)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(space))
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}") and expected in line
    assert "ray" not in done.stdout.lower()


def test_missing_data_names_the_folder_and_suggests_demo(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "data": {"root": str(tmp_path / "HAM10000"), "layout": "ham10000"}}))
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert str(tmp_path / "HAM10000") in done.stderr and "ham10000" in done.stderr and "--demo" in done.stderr


def test_storage_uri_holds_the_trials_and_the_sweep_folder_the_leaderboard(ham_demo, tmp_path):
    space = write_space(tmp_path, ham_demo)
    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-m", "derm.sweep", str(space), "model.encoder=resnet18", "train.epochs=1",
         "--out", str(tmp_path / "sweeps"), "--storage", store.as_uri(), "--dashboard-port", "8378"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (sweep_dir,) = (tmp_path / "sweeps" / "tiny").iterdir()
    board = pd.read_csv(sweep_dir / "leaderboard.csv")
    assert list(board["status"]) == ["completed"]
    # Ray Tune's state and the trial's checkpoint went to the storage URI, not the sweep folder.
    experiment = store / "tiny" / sweep_dir.name
    assert list(experiment.glob("experiment_state-*.json"))
    assert list(experiment.glob("trial_*/checkpoint_*/latest.pt"))
    assert not list(sweep_dir.glob("trial_*"))
