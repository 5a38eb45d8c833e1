"""Sweeps: a search space run as Ray Tune trials of the training loop, and their leaderboard.

Where things live:

- ``plan``: the sweep folder, its split and ``sweep.json`` (``plan_sweep``, ``load_plan``);
- ``cluster``: which Ray the sweep runs on and what its trials may use (``start_ray``);
- ``tuner``: where the sweep decides which trials run (the Tuner: Optuna, ASHA, resources);
- ``trainable``: one trial (the training loop on its assigned device);
- ``callbacks``: the console and the MLflow run status while trials run;
- ``driver``: a sweep from start to end (``sweep``, ``resume``);
- ``board``: where the leaderboard is built (each trial at its best epoch, ranked);
- ``uncertainty``: each trial's bootstrap interval and its paired comparison with rank 1;
- ``importance``: which searched parameters mattered (PED-ANOVA, fANOVA);
- ``table``, ``export``, ``plots``: the published table, its files and figures;
- ``__main__``: ``python -m derm.sweep``.

Importing this package imports neither Ray nor torch; ``driver``, ``tuner``, ``callbacks``
and ``trainable`` do (Ray), when a sweep runs.
"""

from derm.sweep.board import failure_summary, load_trials, rank_trials, sweep_board, trials_trained
from derm.sweep.plan import (
    SPACE_FILE, SWEEP_FILE, SweepPlan, check_data_exists, check_sweep_folder, demo_dataset, load_plan, plan_sweep,
)

__all__ = [
    "SPACE_FILE", "SWEEP_FILE", "SweepPlan", "check_data_exists", "check_sweep_folder", "demo_dataset",
    "failure_summary", "load_plan", "load_trials", "plan_sweep", "rank_trials", "sweep_board", "trials_trained",
]
