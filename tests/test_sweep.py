"""`python -m derm.sweep` end to end: a failing trial, the dashboard, MLflow, the leaderboard."""

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from spaces import FAILING_ENCODER, write_space


def tiny_space(tmp_path, data_root, **sweep):
    return write_space(tmp_path, data_root, "tiny", encoders=("resnet18", "mobilenet_v2", FAILING_ENCODER),
                       max_concurrent=2, **sweep)


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


@pytest.mark.slow
def test_sweep_with_a_failing_trial_marks_it_failed_and_completes_the_others(ham_demo, tmp_path):
    space = tiny_space(tmp_path, ham_demo)
    taken = socket.socket()  # the dashboard port asked for is in use: the sweep takes another
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "derm.sweep", str(space), "--out", str(tmp_path / "sweeps"),
         "--dashboard-port", str(port)],
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
    taken.close()
    text = "".join(output)
    assert dashboard is not None and "ray_version" in dashboard, text
    assert f"dashboard port {port} is taken; using " in text
    # One trial failed, the others completed: a warning naming it, not a failed sweep.
    assert "warning: 1 of 3 trials failed: 1x " in text and "not_a_timm_model" in text
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


@pytest.mark.slow
def test_storage_uri_holds_the_trials_and_the_sweep_folder_the_leaderboard(ham_demo, tmp_path):
    space = tiny_space(tmp_path, ham_demo)
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


def test_a_trial_trains_on_the_gpu_ray_assigned_it_and_on_the_cpu_without_one():
    from derm.sweep.trainable import trial_device

    assert trial_device("auto", []) == "cpu"       # Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone then
    assert trial_device("cuda", []) == "cpu"
    assert trial_device("auto", ["0"]) == "cuda"   # Ray set CUDA_VISIBLE_DEVICES to the assigned card
    assert trial_device("cpu", ["1"]) == "cpu"


def test_the_start_up_message_says_how_many_gpus_the_settings_use_and_how_to_use_all():
    from derm.search_space import Resources
    from derm.sweep.cluster import Cluster, gpu_usage

    four = Cluster(cpus=64, gpus=4, nodes=1, largest_node_cpus=64, local=True)
    line = gpu_usage(four, Resources(cpu=4, gpu=0.25), max_concurrent=4, num_samples=40)
    assert "runs at most 4 trials at once, on 1 of the 4 GPUs" in line
    assert "set sweep.max_concurrent=16" in line
    line = gpu_usage(four, Resources(cpu=4, gpu=0.25), max_concurrent=None, num_samples=40)
    assert "16 trials at once, on 4 of the 4 GPUs" in line and "set " not in line
    few_cpus = Cluster(cpus=16, gpus=4, nodes=1, largest_node_cpus=16, local=True)
    line = gpu_usage(few_cpus, Resources(cpu=8, gpu=0.5), max_concurrent=None, num_samples=40)
    assert "on 1 of the 4 GPUs" in line and "set sweep.resources.cpu=2" in line
    assert "train on CPU" in gpu_usage(four, Resources(cpu=4, gpu=0), None, 40)
    assert gpu_usage(Cluster(2, 0, 1, 2, True), Resources(cpu=1, gpu=0), None, 10) is None


def test_cpu_trials_never_ask_for_more_cpus_than_the_local_machine_has():
    from derm.search_space import Resources, SweepSettings
    from derm.sweep.cluster import Cluster, fit_resources

    settings = SweepSettings(resources=Resources(cpu=4, gpu=0.25), num_samples=4)
    resources, notes = fit_resources(settings, Cluster(cpus=2, gpus=0, nodes=1, largest_node_cpus=2, local=True))
    assert (resources.cpu, resources.gpu) == (2, 0)
    assert any("running trials on CPU instead" in note for note in notes)
    assert any("this machine has 2 CPUs; each trial reserves 2" in note for note in notes)
    assert settings.resources.cpu == 4  # the space's own settings are left as they were


def test_a_multi_node_cluster_needs_an_mlflow_server_not_a_local_sqlite_file():
    from derm.errors import DermError
    from derm.sweep.cluster import Cluster, check_tracking_reachable

    two_nodes = Cluster(cpus=8, gpus=0, nodes=2, largest_node_cpus=4, local=False)
    with pytest.raises(DermError, match="--mlflow-uri http://"):
        check_tracking_reachable("sqlite:////tmp/sweeps/mlflow.db", two_nodes)
    check_tracking_reachable("http://mlflow.lab:5000", two_nodes)
    check_tracking_reachable("sqlite:////tmp/sweeps/mlflow.db", Cluster(8, 0, 1, 8, False))


def test_a_typo_in_sweep_metric_fails_at_load_before_ray_starts(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "task": "segmentation", "sweep": {"metric": "dcie"}}))
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: sweep.metric: task segmentation reports no metric 'dcie'")
    assert "did you mean dice" in line and "ray" not in done.stdout.lower()
