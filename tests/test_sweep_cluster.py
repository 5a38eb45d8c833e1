"""`--address` joins an existing Ray cluster: a head started here runs the sweep's trials."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml


RAY = str(Path(sys.executable).parent / "ray")
# `ray start` enables token authentication when a token exists; clients then must opt in.
TOKEN_AUTH = {"RAY_AUTH_MODE": "token"} if (Path.home() / ".ray" / "auth_token").is_file() else {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_head(address: str, head: subprocess.Popen, seconds: float = 180) -> None:
    """Until `ray status` reaches the head (its node registered); fail early if the head exited."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        status = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True,
                                timeout=60, env={**os.environ, **TOKEN_AUTH})
        if status.returncode == 0 and "CPU" in status.stdout:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray head at {address} did not come up in {seconds} s")


def test_sweep_runs_on_an_existing_cluster(ham_demo, tmp_path):
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    # --block keeps the head in the foreground of its own process group, so the test can stop
    # exactly this head (`ray stop` would stop every Ray on the machine).
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
                             "--temp-dir", temp_dir, "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        wait_for_head(address, head)
        space = {
            "name": "cluster", "task": "segmentation",
            "data": {"root": str(ham_demo), "image_size": 32, "augment": "none"},
            "model": {"encoder": {"choice": ["resnet18", "mobilenet_v2"]}, "encoder_weights": None},
            "train": {"epochs": 1, "batch_size": 16},
            "sweep": {"search": "grid", "scheduler": "fifo", "resources": {"cpu": 1, "gpu": 0}},
        }
        path = tmp_path / "space.yaml"
        path.write_text(yaml.safe_dump(space))
        done = subprocess.run([sys.executable, "-m", "derm.sweep", str(path), "--address", address,
                               "--out", str(tmp_path / "sweeps")], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        (sweep_dir,) = (tmp_path / "sweeps" / "cluster").iterdir()
        board = pd.read_csv(sweep_dir / "leaderboard.csv")
        assert list(board["status"]) == ["completed", "completed"]

        # The head's job table holds the sweep's driver: its trials ran on this cluster.
        jobs = subprocess.run([RAY, "list", "jobs", "--address", address, "--format", "json"],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, **TOKEN_AUTH})
        assert jobs.returncode == 0, jobs.stderr
        assert "derm.sweep" in jobs.stdout and "SUCCEEDED" in jobs.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
