"""Several objectives: sweep.metric as a list, Optuna's multi-objective samplers, a Pareto-ranked leaderboard."""

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from derm.errors import ConfigError
from derm.search_space import build_search_space, build_searcher
from derm.sweep.pareto import pareto_ranks

TWO = {"metric": ["balanced_accuracy", "dice"], "mode": ["max", "max"]}


def space_with(**sweep):
    return build_search_space({"name": "two", "task": "multitask", "model": {"encoder_weights": None},
                               "optim": {"lr": {"loguniform": [1e-4, 1e-2]}}, "sweep": sweep}, "two.yaml")


@pytest.mark.parametrize("sweep, message", [
    ({**TWO, "scheduler": "asha"}, "two.yaml: sweep.scheduler: asha stops trials by one number but the sweep has "
                                   "2 metrics; set sweep.asha_metric (one of balanced_accuracy, dice)"),
    ({"metric": ["balanced_accuracy", "dice"], "mode": "max", "scheduler": "fifo"}, "give one metric and one mode"),
    ({**TWO, "mode": ["max"], "scheduler": "fifo"}, "one mode per metric (2)"),
    ({**TWO, "scheduler": "asha", "asha_metric": "iou"}, "asha_metric: 'iou' is not one of the sweep's metrics"),
    ({"metric": ["balanced_accuracy", "dcie"], "mode": ["max", "max"], "scheduler": "fifo"}, "did you mean dice"),
])
def test_several_metrics_are_checked_at_load_in_one_line(sweep, message):
    with pytest.raises(ConfigError) as raised:
        space_with(**sweep)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_several_metrics_build_optunas_multi_objective_study():
    for search, sampler in (("tpe", "TPESampler"), ("nsga2", "NSGAIISampler")):
        space = space_with(**TWO, scheduler="fifo", search=search)
        searcher = build_searcher(space)
        assert [d.name for d in searcher.study.directions] == ["MAXIMIZE", "MAXIMIZE"]
        assert type(searcher.study.sampler).__name__ == sampler
    asha = space_with(**TWO, scheduler="asha", asha_metric="dice")
    assert asha.sweep.mode_of(asha.sweep.asha_metric) == "max" and asha.sweep.primary_metric == "balanced_accuracy"


def test_pareto_ranks_by_hand():
    # (0.9, 0.5) and (0.6, 0.8) are the front; (0.6, 0.6) is beaten by (0.6, 0.8) only; (0.5, 0.5) by all.
    values = [[0.9, 0.5], [0.6, 0.8], [0.6, 0.6], [0.5, 0.5]]
    assert pareto_ranks(values, [True, True]).tolist() == [1.0, 1.0, 2.0, 3.0]


@pytest.mark.slow
def test_a_two_objective_sweep_ranks_its_trials_by_pareto_rank_and_plots_the_front(ham_demo, tmp_path):
    from spaces import write_space

    path = write_space(tmp_path, ham_demo, "front", encoders=("resnet18", "mobilenet_v2"), epochs=1)
    space = yaml.safe_load(path.read_text())
    space["sweep"].update(TWO, search="random", num_samples=3)
    space["optim"]["lr"] = {"loguniform": [1e-4, 3e-2]}
    path.write_text(yaml.safe_dump(space))
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(path), "--out", str(tmp_path / "sweeps")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (sweep_dir,) = (tmp_path / "sweeps" / "front").iterdir()
    board = pd.read_csv(sweep_dir / "leaderboard.csv")
    assert len(board) == 3 and list(board["rank"]) == [1, 2, 3]
    assert list(board["pareto_rank"]) == sorted(board["pareto_rank"]) and board["pareto_rank"].iloc[0] == 1
    expected = pareto_ranks(board[["balanced_accuracy", "dice"]].to_numpy(), [True, True])
    assert board["pareto_rank"].tolist() == expected.tolist()
    markdown = (sweep_dir / "leaderboard.md").read_text()
    assert "Pareto rank" in markdown and "ranked by Pareto rank over `balanced_accuracy` (max) and `dice` (max)" \
        in markdown
    exported = subprocess.run([sys.executable, "-m", "derm.leaderboard", str(sweep_dir), "--out",
                               str(tmp_path / "out"), "--format", "md"], capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "out" / "plots" / "pareto_front.png").is_file()
