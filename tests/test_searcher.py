"""How the sweep's searcher tells Optuna that a trial ended: stopped early, completed, failed, out of memory.

Driven as Ray Tune drives it (no Ray cluster): ``suggest``, ``on_trial_result`` for every
result the scheduler lets the trial go on after, ``on_trial_complete`` with the last result
(also the one ASHA stopped the trial on, which never reaches ``on_trial_result``), or with
``error=True`` and no result for a trial that raised.
"""

import math
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from derm.search_space import build_searcher, load_search_space
from derm.search_space.trial_outcomes import OUT_OF_MEMORY

REPO = Path(__file__).resolve().parent.parent
SPACE = """
    task: multitask
    model: {arch: Unet, encoder: {choice: [resnet18, mobilenet_v2]}}
    optim: {lr: {loguniform: [1.0e-5, 1.0e-2]}}
    train: {epochs: 3}
    sweep: {num_samples: 8, grace_period: 1}
"""


def load_space(tmp_path: Path, *overrides: str):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(SPACE))
    return load_search_space(path, list(overrides))


def run_epochs(searcher, trial_id: str, scores, *, stopped: bool = False, first_epoch: int = 1) -> dict:
    """Report ``scores`` as epochs ``first_epoch``...; with ``stopped`` the last one is ASHA's stopping
    result, which Ray gives the scheduler but not the searcher's ``on_trial_result``. Returns the last result."""
    result = {}
    for k, score in enumerate(scores, start=first_epoch):
        result = {"score": score, "epoch": k, "training_iteration": k}
        if not (stopped and k == first_epoch + len(scores) - 1):
            searcher.on_trial_result(trial_id, result)
    return result


def optuna_trial(searcher, number: int) -> optuna.trial.FrozenTrial:
    return searcher.study.get_trials(deepcopy=False)[number]


def test_stopped_trial_is_pruned_at_its_epochs_completed_is_complete_failed_is_fail(tmp_path):
    searcher = build_searcher(load_space(tmp_path))
    for i in range(5):
        searcher.suggest(f"t{i}")

    searcher.on_trial_complete("t0", run_epochs(searcher, "t0", [0.4, 0.5, 0.6]))
    searcher.on_trial_complete("t1", run_epochs(searcher, "t1", [0.7], stopped=True))
    searcher.on_trial_complete("t2", run_epochs(searcher, "t2", [0.3, 0.35], stopped=True))
    run_epochs(searcher, "t3", [0.5])
    searcher.on_trial_complete("t3", error=True)  # what Ray 2.60 passes for a trial that raised
    searcher.on_trial_complete("t4", run_epochs(searcher, "t4", [0.5, 0.55]), error=True)

    complete, stopped_at_1, stopped_at_2, failed, failed_with_result = (optuna_trial(searcher, i) for i in range(5))
    assert (complete.state, complete.value, complete.intermediate_values) == \
        (TrialState.COMPLETE, 0.6, {1: 0.4, 2: 0.5, 3: 0.6})
    # The 1-epoch score is not a finished run's: PRUNED at step 1, although it is the highest.
    assert (stopped_at_1.state, stopped_at_1.value, stopped_at_1.intermediate_values) == \
        (TrialState.PRUNED, 0.7, {1: 0.7})
    assert (stopped_at_2.state, stopped_at_2.value, stopped_at_2.intermediate_values) == \
        (TrialState.PRUNED, 0.35, {1: 0.3, 2: 0.35})
    assert failed.state == failed_with_result.state == TrialState.FAIL


def test_tpe_ranks_the_stopped_trial_below_the_completed_one(tmp_path):
    """What the PRUNED state buys: TPE's good group is the completed trial, not the higher 1-epoch score."""
    from optuna.samplers._tpe.sampler import _split_trials

    searcher = build_searcher(load_space(tmp_path))
    for i in range(2):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", run_epochs(searcher, "t0", [0.4, 0.5, 0.6]))
    searcher.on_trial_complete("t1", run_epochs(searcher, "t1", [0.7], stopped=True))
    below, above = _split_trials(searcher.study, searcher.study.get_trials(deepcopy=False), n_below=1)
    assert [t.number for t in below] == [0] and [t.number for t in above] == [1]


def test_setting_off_tells_every_trial_with_a_result_complete_as_ray_does(tmp_path):
    searcher = build_searcher(load_space(tmp_path, "sweep.stopped_as_pruned=false"))
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", run_epochs(searcher, "t0", [0.7], stopped=True))
    trial = optuna_trial(searcher, 0)
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.7)


def test_out_of_memory_is_pruned_without_a_value(tmp_path):
    searcher = build_searcher(load_space(tmp_path))
    searcher.suggest("t0")
    oom = {"score": -math.inf, "epoch": 0, "training_iteration": 1, OUT_OF_MEMORY: 1}
    searcher.on_trial_result("t0", oom)
    searcher.on_trial_complete("t0", oom)
    trial = optuna_trial(searcher, 0)
    assert (trial.state, trial.value, trial.intermediate_values) == (TrialState.PRUNED, None, {})


def test_trial_suggested_before_save_ends_after_restore(tmp_path):
    """Ray checkpoints the searcher (``save``) and ``--resume`` restores it into a fresh one."""
    space = load_space(tmp_path)
    searcher = build_searcher(space)
    before = {f"t{i}": searcher.suggest(f"t{i}") for i in range(3)}
    run_epochs(searcher, "t0", [0.4])
    run_epochs(searcher, "t1", [0.3])
    searcher.save(str(tmp_path / "searcher.pkl"))

    restored = build_searcher(space)  # as Tuner.restore does: a fresh searcher, then restore
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t0") == before["t0"]  # the same Optuna trial, not a new one
    restored.on_trial_complete("t0", run_epochs(restored, "t0", [0.5, 0.6], first_epoch=2))
    restored.on_trial_complete("t1", run_epochs(restored, "t1", [0.2], stopped=True, first_epoch=2))
    restored.on_trial_complete("t2", error=True)
    restored.suggest("t3")

    states = [(t.state, t.intermediate_values) for t in restored.study.get_trials(deepcopy=False)]
    assert states == [(TrialState.COMPLETE, {1: 0.4, 2: 0.5, 3: 0.6}), (TrialState.PRUNED, {1: 0.3, 2: 0.2}),
                      (TrialState.FAIL, {}), (TrialState.RUNNING, {})]


@pytest.mark.parametrize("stopped_as_pruned", [True, False])
def test_whole_searcher_unpickles_in_a_fresh_process(tmp_path, stopped_as_pruned):
    """Tuner.restore unpickles the searcher object itself; its class must be found by name in a new process."""
    searcher = build_searcher(load_space(tmp_path, f"sweep.stopped_as_pruned={str(stopped_as_pruned).lower()}"))
    searcher.suggest("t0")
    (tmp_path / "searcher.pkl").write_bytes(pickle.dumps(searcher))
    code = ("import pickle, sys; s = pickle.load(open(sys.argv[1], 'rb')); "
            "print(type(s).__module__, type(s).__name__, s._max_epochs, s._stopped_as_pruned)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "searcher.pkl")], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["derm.search_space.optuna_search", "StoppedAsPrunedOptunaSearch", "3",
                                  str(stopped_as_pruned)]
