"""Which Ray a sweep runs on: `--address` joins a cluster; without one, a new local Ray of its own."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from spaces import write_space

pytestmark = pytest.mark.slow  # each test starts Ray and runs a sweep

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
        path = write_space(tmp_path, ham_demo, "cluster", task="segmentation", epochs=1)
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


def start_head(num_cpus: int) -> tuple[subprocess.Popen, str]:
    """`ray start --head` as a user (or another project) runs it: default temp dir, so it is
    recorded in /tmp/ray/ray_current_cluster, where a plain ray.init() would find it."""
    port = free_port()
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", str(num_cpus), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(free_port()), "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    wait_for_head(address, head)
    return head, address


def stop(head: subprocess.Popen) -> None:
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def one_trial_space(tmp_path, data_root, name: str) -> Path:
    return write_space(tmp_path, data_root, name, task="segmentation", encoders=("resnet18",), epochs=1)


def test_without_an_address_the_sweep_starts_its_own_ray_beside_a_running_cluster(ham_demo, tmp_path):
    head, address = start_head(num_cpus=1)
    try:
        environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        done = subprocess.run([sys.executable, "-m", "derm.sweep", str(one_trial_space(tmp_path, ham_demo, "own")),
                               "--out", str(tmp_path / "sweeps"), "--dashboard-port", str(free_port())],
                              capture_output=True, text=True, timeout=600, env=environment)
        assert done.returncode == 0, done.stdout + done.stderr
        # The sweep's Ray has this machine's CPUs, not the head's one.
        cpus = len(os.sched_getaffinity(0))
        assert f"Ray: a new local Ray, 1 node(s), {cpus:g} CPUs" in done.stdout, done.stdout
        assert "Connecting to existing Ray cluster" not in done.stdout + done.stderr
        jobs = subprocess.run([RAY, "list", "jobs", "--address", address, "--format", "json"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, **TOKEN_AUTH})
        assert jobs.returncode == 0, jobs.stderr
        assert "derm.sweep" not in jobs.stdout  # the head ran nothing of it
    finally:
        stop(head)


def test_two_sweeps_started_together_each_get_their_own_ray_and_dashboard(ham_demo, tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    sweeps = [subprocess.Popen([sys.executable, "-m", "derm.sweep", str(one_trial_space(tmp_path, ham_demo, name)),
                                "--out", str(tmp_path / "sweeps")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
              for name in ("first", "second")]
    outputs = [process.communicate(timeout=900)[0] for process in sweeps]
    for process, output in zip(sweeps, outputs):
        assert process.returncode == 0, output
    urls = [re.search(r"Ray dashboard: (http://127\.0\.0\.1:(\d+))", output) for output in outputs]
    assert all(urls), outputs
    assert urls[0].group(1) != urls[1].group(1)
    for url, output in zip(urls, outputs):
        if url.group(2) != "8265":
            assert "8265 was taken, so Ray chose this port" in output, output
    for name in ("first", "second"):
        (sweep_dir,) = (tmp_path / "sweeps" / name).iterdir()
        assert list(pd.read_csv(sweep_dir / "leaderboard.csv")["status"]) == ["completed"]
