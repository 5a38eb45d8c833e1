"""`python -m derm.leaderboard`: ranking, the Pareto front, and the four exports of a finished sweep."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derm.leaderboard import main
from derm.search_space import build_search_space
from derm.sweep.board import rank_trials
from derm.sweep.export import markdown_table, parse_formats
from derm.sweep.plots import best_so_far
from derm.sweep.table import annotate, caption, pareto_front

NAN = float("nan")


# --- ranking ---------------------------------------------------------------------------------

def history(scores, metric="score"):
    return pd.DataFrame({"epoch": range(1, len(scores) + 1), metric: scores, "dice": [0.5] * len(scores)})


def trials_frame(rows):
    return pd.DataFrame([{"trial_id": t, "_history": h, "_status": s, "error": e, "config.optim.lr": 1e-3}
                         for t, h, s, e in rows])


def test_rank_trials_orders_completed_then_stopped_early_then_failed_by_best_epoch():
    trials = trials_frame([
        ("failed", None, "ERROR", "ValueError: boom"),
        ("early", history([0.9, 0.95]), "TERMINATED", ""),      # best of all, but stopped by ASHA
        ("peaked", history([0.2, 0.8, 0.3]), "TERMINATED", ""),  # best epoch 2, not its last
        ("steady", history([0.5, 0.6, 0.7]), "TERMINATED", ""),
    ])
    board = rank_trials(trials, "score", "max", max_epochs=3)
    assert list(board["trial_id"]) == ["peaked", "steady", "early", "failed"]
    assert list(board["rank"]) == [1, 2, 3, 4]
    assert list(board["status"]) == ["completed", "completed", "stopped early", "failed"]
    assert board.loc[0, "score"] == 0.8 and board.loc[0, "epoch"] == 2
    assert list(board["epochs_trained"]) == [3, 3, 2, 0]
    assert board.loc[3, "error"] == "ValueError: boom" and math.isnan(board.loc[3, "score"])


def test_rank_trials_mode_min_ranks_the_lowest_best_epoch_first():
    trials = trials_frame([
        ("b", history([0.9, 0.4], "val_loss"), "TERMINATED", ""),
        ("a", history([0.3, 0.5], "val_loss"), "TERMINATED", ""),
        ("c", history([0.1], "val_loss"), "TERMINATED", ""),     # lowest, but stopped after 1 of 2
        ("nan", history([NAN, NAN], "val_loss"), "TERMINATED", ""),
    ])
    board = rank_trials(trials, "val_loss", "min", max_epochs=2)
    assert list(board["trial_id"]) == ["a", "b", "c", "nan"]
    assert list(board["val_loss"][:3]) == [0.3, 0.4, 0.1]
    assert list(board["status"]) == ["completed", "completed", "stopped early", "stopped early"]


# --- Pareto front ----------------------------------------------------------------------------

def test_pareto_front_keeps_the_non_dominated_points():
    # (0.6, 0.6) is dominated by (0.7, 0.8); (0.5, 0.9) and (0.9, 0.5) trade off.
    front = pareto_front([0.5, 0.7, 0.6, 0.9], [0.9, 0.8, 0.6, 0.5])
    assert front.tolist() == [True, True, False, True]


def test_pareto_front_ties_and_weak_domination():
    # Equal points are both on the front; equal in one coordinate and worse in the other is dominated.
    assert pareto_front([0.5, 0.5], [0.5, 0.5]).tolist() == [True, True]
    assert pareto_front([0.5, 0.5, 0.4], [0.5, 0.4, 0.5]).tolist() == [True, False, False]


def test_pareto_front_ignores_nan_points():
    front = pareto_front([0.5, NAN, 0.9, 0.4], [0.5, 1.0, NAN, 0.4])
    assert front.tolist() == [True, False, False, False]
    assert pareto_front([], []).tolist() == []


def test_best_so_far_keeps_the_best_through_failed_trials():
    assert best_so_far([0.2, NAN, 0.5, 0.3], "max").tolist() == [0.2, 0.2, 0.5, 0.5]
    assert best_so_far([0.4, 0.6, 0.1], "min").tolist() == [0.4, 0.4, 0.1]


# --- tables for other tasks ------------------------------------------------------------------

def space_for(task, metric):
    return build_search_space({
        "name": f"t-{task}", "task": task, "data": {"root": "data", "image_size": 32},
        "model": {"encoder": {"choice": ["resnet18", "mobilenet_v2"]}, "encoder_weights": None},
        "optim": {"lr": {"loguniform": [1e-4, 1e-2]}, "weight_decay": {"choice": [0.0, 1e-4]}},
        "train": {"epochs": 2},
        "sweep": {"metric": metric, "mode": "max"},
    }, "test.yaml", ())


def header_of(table: str) -> list[str]:
    return [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]


@pytest.mark.parametrize("task, metric, shown, absent", [
    ("attributes", "jaccard_micro", ["Jaccard pigment network", "Jaccard streaks", "Jaccard (micro)",
                                     "Dice (micro)"], ["Bal. acc.", "Pareto", "Dice"]),
    ("classification", "balanced_accuracy", ["Bal. acc.", "F1 (w)", "F1 (macro)", "AUROC"],
     ["Dice", "Pareto", "Jaccard (thr. 0.65)"]),
    ("segmentation", "dice", ["Dice", "IoU", "Jaccard (thr. 0.65)"], ["Bal. acc.", "Pareto"]),
])
def test_tables_show_the_metrics_of_their_task(task, metric, shown, absent):
    space = space_for(task, metric)
    trials = trials_frame([("t1", history([0.4, 0.6], metric), "TERMINATED", "")])
    trials["config.model.encoder"] = "mobilenet_v2"
    trials["config.optim.weight_decay"] = 0.0001
    board = annotate(rank_trials(trials, metric, "max", max_epochs=2), space)
    table = markdown_table(board, space, caption(space, board))
    header = header_of(table)
    assert header[:2] == ["#", "Model/Backbone"]
    assert set(shown) <= set(header) and not set(absent) & set(header)
    # Searched keys under headers that say what they are (not a bare "lr" or "name").
    assert ["learning rate", "weight decay", "Epochs", "Params (M)", "ms/image", "Status", "Trial"] == header[-7:]
    row = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    expected_model = "MobileNetV2 (encoder only)" if task == "classification" else "Unet/MobileNetV2"
    assert row[1] == expected_model and row[header.index("weight decay")] == "0.0001"


def test_parse_formats_rejects_unknown_names():
    assert parse_formats("md, CSV,md") == ("md", "csv")
    with pytest.raises(Exception, match="allowed: .*md, csv, html, json"):
        parse_formats("md,pdf")


# --- the command on a finished sweep ---------------------------------------------------------

def read_markdown(path):
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return pd.DataFrame(rows[2:], columns=rows[0])


MULTITASK_HEADERS = ["#", "Model/Backbone", "Pareto", "≈ #1", "Score", "Accuracy", "Bal. acc.", "Precision (w)",
                     "Recall (w)", "F1 (w)", "F1 (macro)", "AUROC", "Dice", "IoU", "Jaccard (thr. 0.65)",
                     "score 95% CI", "Epochs", "Params (M)", "ms/image", "Status", "Trial"]


def test_export_writes_all_formats_ranked_with_the_failed_trial_last(finished_sweep, tmp_path, capsys):
    out = tmp_path / "results"
    assert main([str(finished_sweep), "--out", str(out)]) == 0
    assert "| # | Model/Backbone |" in capsys.readouterr().out

    table = read_markdown(out / "leaderboard.md")
    assert list(table.columns) == MULTITASK_HEADERS  # encoder is the searched key, shown as the model
    assert list(table["Status"]) == ["completed", "completed", "failed"]
    assert sorted(table["Model/Backbone"][:2]) == ["Unet/MobileNetV2", "Unet/ResNet-18"]
    assert table["Model/Backbone"][2] == "Unet/not_a_timm_model" and table["Score"][2] == "–"
    scores = [float(s) for s in table["Score"][:2]]
    assert scores[0] >= scores[1]
    assert all(re.fullmatch(r"\d\.\d{3}", s) for s in table["Dice"][:2])
    assert "*" in set(table["Pareto"][:2]) and table["Pareto"][2] == ""
    assert "best epoch" in (out / "leaderboard.md").read_text()

    csv = pd.read_csv(out / "leaderboard.csv")
    document = json.loads((out / "leaderboard.json").read_text())
    rows = pd.DataFrame(document["rows"])
    assert document["metric"] == "score" and document["mode"] == "max"
    assert list(csv["trial_id"]) == list(rows["trial_id"]) == list(table["Trial"])
    assert np.allclose(csv["score"][:2], rows["score"][:2], rtol=0, atol=1e-15)
    assert [round(s, 3) for s in csv["score"][:2]] == scores
    assert "not_a_timm_model" in csv["error"].iloc[2] and "not_a_timm_model" in rows["error"].iloc[2]
    assert document["rows"][2]["score"] is None  # NaN as null: strict JSON
    assert {"model", "pareto_front", "param.model.encoder", "config.model.encoder", "params_m",
            "inference_ms_per_image", "epochs_trained"} <= set(csv.columns)

    page = (out / "leaderboard.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<script>" in page and "addEventListener(\"click\"" in page and "<style>" in page
    assert page.count("<tr class=") == 3 and 'class="failed"' in page

    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["best_so_far.png", "metric_vs_model.encoder.png"]
    for name in plots:
        with Image.open(out / "plots" / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100


def test_command_in_a_subprocess_keeps_the_top_rows(finished_sweep, tmp_path):
    done = subprocess.run([sys.executable, "-m", "derm.leaderboard", str(finished_sweep), "--format", "md,json",
                           "--top", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "results" / "finished" / finished_sweep.name  # the default --out
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.json", "leaderboard.md", "plots"]
    table = read_markdown(out / "leaderboard.md")
    assert len(table) == 1 and table["#"][0] == "1" and table["Status"][0] == "completed"
    assert len(json.loads((out / "leaderboard.json").read_text())["rows"]) == 1
    assert "3 trials" in (out / "leaderboard.md").read_text()


def test_errors_are_one_line_usage_mistakes_exit_2_a_sweep_without_trials_1(finished_sweep, tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "is not a derm sweep folder" in capsys.readouterr().err

    not_started = tmp_path / "not-started"
    not_started.mkdir()
    for name in ("sweep.json", "search_space.yaml"):
        (not_started / name).write_text((finished_sweep / name).read_text())
    assert main([str(not_started), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no trials" in err and err.count("\n") == 1

    assert main([str(finished_sweep), "--format", "md,pdf"]) == 2
    assert main([str(finished_sweep), "--top", "0"]) == 2
    assert all(line.startswith("error:") for line in capsys.readouterr().err.splitlines())


def test_a_sweep_too_small_for_parameter_importance_says_so_in_every_format(finished_sweep, tmp_path):
    out = tmp_path / "results"
    assert main([str(finished_sweep), "--out", str(out), "--format", "md,html,json"]) == 0
    line = ("Parameter importance not computed: 2 trials count, fewer than the 8 it needs "
            "(2 completed, 0 stopped early; not counted: 1 failed).")
    assert (out / "leaderboard.md").read_text().splitlines()[-1] == line
    assert line in (out / "leaderboard.html").read_text()
    importance = json.loads((out / "leaderboard.json").read_text())["importance"]
    assert importance["computed"] is False and importance["note"] == line
    assert not {"importance.png", "parallel_coordinates.png"} & {p.name for p in (out / "plots").iterdir()}


def test_the_shipped_spaces_hyperparameter_headers_say_what_they_are():
    from derm.search_space import load_search_space
    from derm.sweep.table import hyperparameter_headers

    root = Path(__file__).resolve().parents[1]
    for name in ("unet", "multitask", "classification", "attributes"):
        headers = hyperparameter_headers(load_search_space(root / "search_spaces" / f"{name}.yaml"))
        assert not {"name", "seg", "cls", "lr"} & set(headers.values()), (name, headers)
    unet = hyperparameter_headers(load_search_space(root / "search_spaces" / "unet.yaml"))
    assert (unet["optim.name"], unet["loss.seg"], unet["loss.cls"]) == ("optimizer", "seg loss", "cls loss")
