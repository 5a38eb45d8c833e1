"""`--address` joins an existing Ray cluster: a head started here runs the sweep's trials."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
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


def test_sweep_runs_on_an_existing_cluster(ham_demo, tmp_path):
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
                           "--temp-dir", temp_dir, "--disable-usage-stats"], capture_output=True, text=True, timeout=120)
    assert head.returncode == 0, head.stdout + head.stderr
    address = f"127.0.0.1:{port}"
    try:
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
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
