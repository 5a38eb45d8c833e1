"""The sweep's console while trials run: a heartbeat that says where each trial is."""

import os
import re
import subprocess
import sys

import pytest
import yaml
from spaces import write_space

from derm.sweep.callbacks import SweepConsole, _minutes


class Running:
    status = "RUNNING"

    def __init__(self, trial_id):
        self.trial_id = trial_id


def test_the_heartbeat_names_each_running_trials_phase_and_a_bound_of_what_is_left():
    console = SweepConsole("score", "max", max_epochs=4, num_samples=3, heartbeat_seconds=30)
    console.phases = {"a": "epoch 2, batch 30/120, 2.5 batches/s", "b": "decoding 300 images at 256x256 into ..."}
    console.epochs_done, console.started = 2, console.started - 120  # two epochs in two minutes
    line = console.heartbeat([Running("a"), Running("b"), Running("c")])
    assert line.startswith("... 2:00 elapsed, at most ~10:00 left if every trial trains every epoch | ")
    assert "trial a: epoch 2, batch 30/120" in line and "trial b: decoding 300 images" in line
    assert "trial c: starting" in line
    assert _minutes(3909) == "1:05:09"


@pytest.mark.slow
def test_heartbeat_lines_with_batch_progress_come_between_epoch_lines_of_a_slow_trial(ham_demo, tmp_path):
    # 128 px images on 2 CPUs: an epoch of tens of seconds, long enough for several heartbeats.
    path = write_space(tmp_path, ham_demo, "slow", task="segmentation", encoders=("resnet18",), epochs=2)
    space = yaml.safe_load(path.read_text())
    space["data"]["image_size"] = 128
    path.write_text(yaml.safe_dump(space))
    environment = {**os.environ, "DERM_HEARTBEAT_SECONDS": "2", "DERM_PROGRESS_SECONDS": "0.5"}
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(path), "--out", str(tmp_path / "sweeps")],
                          capture_output=True, text=True, timeout=900, env=environment)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    epochs = [i for i, line in enumerate(lines) if re.match(r"trial \w+ epoch \d/2 ", line)]
    assert len(epochs) == 2, done.stdout
    beats = [i for i, line in enumerate(lines) if line.startswith("... ")]
    within = [lines[i] for i in beats if epochs[0] < i < epochs[1]]
    assert any(re.search(r"trial \w+: epoch 2, batch \d+/\d+", line) for line in within), done.stdout
    assert any("elapsed" in lines[i] for i in beats)
    # The decode cache (128 px: not built before) was built by the trial, and said so.
    assert any(re.match(r"trial \w+: decode cache: decoding \d+ images at 128x128", line) for line in lines)
