"""--warm-start: a sweep's study starts with an earlier sweep's trials that fit its space."""

import json
import pickle
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from spaces import write_space

from derm.sweep.warm_start import WARM_START_ATTR

pytestmark = pytest.mark.slow  # two sweeps


def study_of(sweep_dir):
    """The Optuna study Ray Tune saved with the sweep's searcher state (OptunaSearch.save: its __dict__)."""
    (state,) = sweep_dir.glob("searcher-state-*.pkl")
    return pickle.loads(state.read_bytes())["_ot_study"]


def test_a_second_sweep_starts_with_the_first_ones_trials_and_counts_those_outside_its_space(ham_demo, tmp_path):
    first = write_space(tmp_path, ham_demo, "first", encoders=("resnet18", "mobilenet_v2"), epochs=1)
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(first), "--out", str(tmp_path / "sweeps")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (first_dir,) = (tmp_path / "sweeps" / "first").iterdir()

    # The same data and schedule; mobilenet_v2 is no longer in the space, efficientnet-b0 is new.
    second = write_space(tmp_path, ham_demo, "second", encoders=("resnet18", "efficientnet-b0"), epochs=1,
                         search="random", num_samples=1)
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(second), "--out", str(tmp_path / "sweeps"),
                           "--warm-start", str(first_dir)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (f"warm start: 1 of 2 trials of {first_dir} added; skipped: 1 with model.encoder outside this space"
            in done.stdout), done.stdout
    (second_dir,) = (tmp_path / "sweeps" / "second").iterdir()

    trials = study_of(second_dir).get_trials(deepcopy=False)
    warm = [t for t in trials if WARM_START_ATTR in t.user_attrs]
    own = [t for t in trials if WARM_START_ATTR not in t.user_attrs]
    assert [t.params["model.encoder"] for t in warm] == ["resnet18"]
    assert warm[0].state.name == "COMPLETE" and warm[0].intermediate_values
    assert max(t.number for t in warm) < min(t.number for t in own)  # there before the first suggestion
    assert len(pd.read_csv(second_dir / "leaderboard.csv")) == 1  # its own trials only
    recorded = json.loads((second_dir / "sweep.json").read_text())["warm_start"]
    assert recorded == [{"sweep": str(first_dir), "added": 1, "skipped": 1}]


def test_a_sweep_with_other_fixed_settings_adds_nothing(finished_sweep, ham_demo, tmp_path):
    from derm.search_space import build_search_space
    from derm.sweep.warm_start import collect

    other = build_search_space(yaml.safe_load((finished_sweep / "search_space.yaml").read_text())
                               | {"train": {"epochs": 5, "batch_size": 16}}, "other.yaml")
    warm = collect(other, [finished_sweep])
    assert warm.trials == []
    (note,) = warm.notes
    assert "nothing added, its fixed settings differ (train.epochs 2 -> 5)" in note
