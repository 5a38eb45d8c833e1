"""What mattered: parameter importance from a sweep's board, and its place in the exports."""

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derm.search_space import build_search_space
from derm.sweep.board import rank_trials
from derm.sweep.export import export_board
from derm.sweep.importance import MIN_TRIALS, parameter_importance, sweep_study

EPOCHS = 3
NAN = float("nan")


def space_with(mode="max", **sections):
    """A segmentation space over ``sections`` (e.g. ``optim={...}``), 3 epochs, ranked by dice."""
    values = {"name": "imp", "task": "segmentation", "data": {"root": "data", "image_size": 32},
              "model": {"encoder": "resnet18", "encoder_weights": None}, "train": {"epochs": EPOCHS},
              "sweep": {"metric": "dice", "mode": mode}}
    for section, entries in sections.items():
        values[section] = {**values.get(section, {}), **entries}
    return build_search_space(values, "space.yaml")


def trial(number, score, config, ray_status="TERMINATED", epochs=EPOCHS):
    """One row of `load_trials`: its best epoch, the one before its last, scores ``score``."""
    history = None
    if epochs:
        scores = [score - 0.1] * epochs
        scores[max(epochs - 2, 0)] = score
        history = pd.DataFrame({"epoch": range(1, epochs + 1), "dice": scores})
    return {"trial_id": f"t{number:02d}", "_history": history, "_status": ray_status, "error": "",
            "started": float(number), **{f"config.{k}": v for k, v in config.items()}}


def board_of(trials, space):
    return rank_trials(pd.DataFrame(trials), "dice", space.sweep.mode, EPOCHS)


LR_SPACE = {"optim": {"lr": {"loguniform": [1e-5, 1e-2]}}, "loss": {"seg": {"choice": ["dice", "bce"]}}}


def lr_driven(n, seed=0, mode="max"):
    """``n`` trials whose score rises with log lr (falls, for ``mode="min"``); loss.seg is a coin flip."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-5, -2))
        score = (np.log10(lr) + 5) / 3 + rng.normal(0, 0.03)
        rows.append(trial(i, score if mode == "max" else 1 - score,
                          {"optim.lr": lr, "loss.seg": str(rng.choice(["dice", "bce"]))}))
    return rows


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_parameter_that_drives_the_score_ranks_first_under_both_evaluators(mode):
    space = space_with(mode, **LR_SPACE)
    board = board_of(lr_driven(20, mode=mode), space)
    importance = parameter_importance(board, space)
    assert importance.computed and importance.trials == 20
    assert list(importance.shares) == ["PED-ANOVA", "fANOVA"]
    for label, shares in importance.shares.items():
        assert set(shares) == {"optim.lr", "loss.seg"}
        assert max(shares, key=shares.get) == "optim.lr", label
        assert shares["optim.lr"] > 0.7 and sum(shares.values()) == pytest.approx(1.0)
    assert importance.parameters == ["optim.lr", "loss.seg"]
    assert importance.top_trials == 5  # the best tenth of 20 is 2; PED-ANOVA contrasts at least 5
    assert parameter_importance(board, space).shares == importance.shares  # seeded: the same numbers again


def test_fewer_counted_trials_than_the_minimum_is_not_computed_and_says_why_in_one_line():
    space = space_with(**LR_SPACE)
    rows = lr_driven(MIN_TRIALS - 1)
    rows += [trial(50, NAN, {"optim.lr": 1e-3, "loss.seg": "dice"}, "ERROR", epochs=0),
             trial(51, 0.9, {"optim.lr": 1e-3, "loss.seg": "dice"}, "RUNNING", epochs=2)]
    importance = parameter_importance(board_of(rows, space), space)
    assert not importance.computed and importance.shares == {} and importance.parameters == []
    assert importance.note == ("Parameter importance not computed: 7 trials count, fewer than the 8 it needs "
                               "(7 completed, 0 stopped early; not counted: 1 failed, 1 running).")
    assert importance.to_json()["computed"] is False and importance.to_json()["minimum_trials"] == MIN_TRIALS

    rows.append(trial(52, 0.4, {"optim.lr": 1e-4, "loss.seg": "bce"}, epochs=1))  # the 8th: stopped early
    assert parameter_importance(board_of(rows, space), space).computed


def test_stopped_early_trials_count_at_their_best_epoch_failed_running_and_unscored_never():
    space = space_with(**LR_SPACE)
    config = {"optim.lr": 1e-3, "loss.seg": "dice"}
    rows = lr_driven(8) + [
        trial(30, 0.25, config, epochs=1),   # stopped by ASHA after one epoch
        trial(31, 0.35, config, epochs=2),   # after two; its best epoch is the first
        trial(40, NAN, config, "ERROR", epochs=0),
        trial(41, 0.9, config, "RUNNING", epochs=2),
        trial(42, NAN, config),              # completed, but never reported the metric
        trial(43, 0.5, {"optim.lr": 0.5, "loss.seg": "dice"}),      # lr outside this space
    ]
    board = board_of(rows, space)
    board.loc[board["trial_id"] == "t00", "status"] = "completed (batch halved)"  # went on after running out of memory
    board.loc[board["trial_id"] == "t01", "status"] = "out of memory"
    importance = parameter_importance(board, space)
    assert importance.counted == {"completed": 7, "stopped early": 2}
    assert list(importance.not_counted.items()) == [("failed", 1), ("out of memory", 1), ("running", 1),
                                                    ("without a score", 1), ("outside this space", 1)]
    stopped = {t.user_attrs["trial_id"]: t for t in importance.study.trials if t.user_attrs["status"] != "completed"}
    assert stopped["t30"].value == 0.25 and stopped["t30"].user_attrs["epochs_trained"] == 1
    assert stopped["t31"].value == 0.35 and stopped["t31"].user_attrs["epochs_trained"] == 2
    assert "2 stopped early, each at its best epoch" in importance.note


def test_a_conditional_parameter_some_counted_trials_lack_is_left_out_of_both_and_named():
    space = space_with(optim={"name": {"choice": ["adam", "sgd"]}, "lr": {"loguniform": [1e-5, 1e-2]},
                              "momentum": {"uniform": [0.8, 0.99], "when": {"optim.name": "sgd"}}})
    rng = np.random.default_rng(0)
    rows = []
    for i, name in enumerate(["adam", "sgd"] * 8):
        lr = float(10 ** rng.uniform(-5, -2))
        config = {"optim.name": name, "optim.lr": lr}
        if name == "sgd":
            config["optim.momentum"] = float(rng.uniform(0.8, 0.99))
        rows.append(trial(i, (np.log10(lr) + 5) / 3, config))
    importance = parameter_importance(board_of(rows, space), space)
    assert importance.computed
    assert importance.left_out == ("optim.momentum",)
    assert all(set(shares) == {"optim.name", "optim.lr"} for shares in importance.shares.values())
    assert importance.note.endswith("Left out, not set in every counted trial: optim.momentum.")
    assert sum("optim.momentum" in t.params for t in importance.study.trials) == 8  # the study keeps it

    only_sgd = [r for r in rows if r["config.optim.name"] == "sgd"] + [
        trial(60 + i, 0.3, {"optim.name": "sgd", "optim.lr": 1e-3, "optim.momentum": 0.9}) for i in range(2)]
    importance = parameter_importance(board_of(only_sgd, space), space)
    assert importance.left_out == () and "optim.momentum" in importance.shares["fANOVA"]


def test_dependent_cases_merge_into_one_parameter_under_the_config_key():
    space = space_with(model={"arch": {"choice": ["Unet", "Segformer"]}, "encoder": {
        "depends_on": "model.arch", "cases": {"Segformer": "mit_b0", "default": {"choice": ["resnet18", "resnet34"]}}}},
        optim={"lr": {"loguniform": [1e-5, 1e-2]}})
    encoder_score = {"mit_b0": 0.2, "resnet18": 0.5, "resnet34": 0.8}
    rng = np.random.default_rng(1)
    rows = []
    for i in range(18):
        arch = "Segformer" if i % 3 == 0 else "Unet"
        encoder = "mit_b0" if arch == "Segformer" else ["resnet18", "resnet34"][i % 2]
        config = {"model.arch": arch, "optim.lr": float(10 ** rng.uniform(-5, -2))}
        # Ray records a searched case under its Optuna name, a fixed case (Segformer) under the key.
        config["model.encoder" if arch == "Segformer" else "model.encoder__default"] = encoder
        rows.append(trial(i, encoder_score[encoder] + rng.normal(0, 0.02), config))
    importance = parameter_importance(board_of(rows, space), space)
    assert importance.merged == ("model.encoder",) and importance.left_out == ()
    assert importance.parameters[0] == "model.encoder"
    assert {t.params["model.encoder"] for t in importance.study.trials} == set(encoder_score)
    assert importance.study.trials[0].distributions["model.encoder"].choices == ("mit_b0", "resnet18", "resnet34")


def test_dependent_cases_that_cannot_merge_stay_apart_as_conditional_parameters():
    space = space_with(optim={"name": {"choice": ["adam", "sgd"]}, "lr": {
        "depends_on": "optim.name", "cases": {"adam": {"loguniform": [1e-5, 1e-3]}, "sgd": {"choice": [0.01, 0.1]}}}})
    rows = [trial(i, 0.1 * i, {"optim.name": name, f"optim.lr__{name}": 1e-4 if name == "adam" else 0.1})
            for i, name in enumerate(["adam", "sgd"] * 5)]
    importance = parameter_importance(board_of(rows, space), space)
    assert importance.merged == () and importance.left_out == ("optim.lr__adam", "optim.lr__sgd")
    assert importance.parameters == ["optim.name"]


def test_the_study_is_rebuilt_with_the_spaces_distributions_and_values_as_optuna_would_have_them():
    space = space_with(optim={"lr": {"loguniform": [1e-5, 1e-2]}, "warmup_epochs": {"int": [0, 2]}})
    rows = [trial(i, 0.1 * i, {"optim.lr": 1e-4, "optim.warmup_epochs": float(i % 3)}) for i in range(9)]
    rows[0]["config.optim.warmup_epochs"] = NAN  # an int column with a gap holds floats
    study = sweep_study(board_of(rows, space), space)
    assert study.direction.name == "MAXIMIZE" and len(study.trials) == 8
    assert all(isinstance(t.params["optim.warmup_epochs"], int) for t in study.trials)
    assert study.best_trial.value == pytest.approx(0.8)
    lr = study.trials[0].distributions["optim.lr"]
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-2, True)


# --- in the exports --------------------------------------------------------------------------

def no_external_reference(page: str) -> bool:
    sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    return all(s.startswith("data:image/png;base64,") for s in sources) and not re.search(
        r"<link|@import|url\(|https?://", page)


def test_export_writes_both_figures_and_embeds_them_in_the_html(tmp_path):
    space = space_with(**LR_SPACE)
    paths = export_board(board_of(lr_driven(20), space), space, tmp_path)
    for name in ("importance.png", "parallel_coordinates.png"):
        assert tmp_path / "plots" / name in paths
        with Image.open(tmp_path / "plots" / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300

    page = (tmp_path / "leaderboard.html").read_text()
    encoded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(e) for e in encoded] == [(tmp_path / "plots" / name).read_bytes() for name in (
        "importance.png", "parallel_coordinates.png")] and "What mattered" in page
    assert no_external_reference(page)

    markdown = (tmp_path / "leaderboard.md").read_text()
    lines = markdown[markdown.index("### What mattered"):].splitlines()
    assert lines[2:4] == ["| Parameter | PED-ANOVA | fANOVA |", "|---|---:|---:|"]
    assert re.fullmatch(r"\| optim\.lr \| 0\.\d{3} \| 0\.\d{3} \|", lines[4]) and lines[5].startswith("| loss.seg |")
    section = "\n".join(lines)
    assert "over 20 trials (20 completed, 0 stopped early" in section

    document = json.loads((tmp_path / "leaderboard.json").read_text())
    assert document["importance"]["computed"] is True
    assert document["importance"]["parameters"] == ["optim.lr", "loss.seg"]
    assert document["importance"]["shares"]["fANOVA"]["optim.lr"] > 0.7


def test_export_below_the_minimum_says_why_in_every_format_and_draws_no_importance_figures(tmp_path):
    space = space_with(**LR_SPACE)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "importance.png").write_bytes(b"from an earlier export")
    export_board(board_of(lr_driven(5), space), space, tmp_path)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "best_so_far.png", "metric_vs_loss.seg.png", "metric_vs_optim.lr.png"]
    line = "Parameter importance not computed: 5 trials count, fewer than the 8 it needs"
    assert line in (tmp_path / "leaderboard.md").read_text().splitlines()[-1]
    page = (tmp_path / "leaderboard.html").read_text()
    assert line in page and "data:image" not in page and no_external_reference(page)
    importance = json.loads((tmp_path / "leaderboard.json").read_text())["importance"]
    assert importance["computed"] is False and importance["note"].startswith(line)


def test_export_without_plots_computes_no_importance(tmp_path, monkeypatch):
    import derm.sweep.importance

    def fail(*args, **kwargs):
        raise AssertionError("importance computed with plots=False")
    monkeypatch.setattr(derm.sweep.importance, "parameter_importance", fail)
    space = space_with(**LR_SPACE)
    paths = export_board(board_of(lr_driven(20), space), space, tmp_path, formats=("md", "json"), plots=False)
    assert [p.name for p in paths] == ["leaderboard.md", "leaderboard.json"]
    assert not (tmp_path / "plots").exists()
    assert "importance" not in (tmp_path / "leaderboard.md").read_text().lower()
    assert json.loads((tmp_path / "leaderboard.json").read_text())["importance"] is None
