"""derm.progress: one bar on stderr, drawn only at a terminal, off in the whole process with --quiet."""

import re
import sys

from derm.progress import EpochBar, progress, set_quiet, shown, write
from derm.retrain.console import LoaderWithBar, RetrainCallbacks
from terminal import seen_as_terminal


def test_a_bar_at_a_terminal_counts_on_stderr_and_leaves_stdout_alone(capsys, monkeypatch):
    seen_as_terminal(monkeypatch)
    assert list(progress(range(5), desc="decoding", unit="image")) == [0, 1, 2, 3, 4]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.search(r"decoding: 100%.*5/5 .*image/s", captured.err), captured.err
    assert captured.err.endswith("\n")  # the finished bar keeps its line


def test_no_bar_when_stderr_is_not_a_terminal(capsys):
    assert not shown()
    assert sum(progress(range(5), desc="decoding")) == 10
    with progress(total=3, desc="writing") as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_quiet_turns_every_bar_off_even_a_forced_one(capsys, monkeypatch):
    seen_as_terminal(monkeypatch)
    set_quiet(True)
    assert not shown() and not shown(enabled=True)
    assert sum(progress(range(5), desc="decoding", enabled=True)) == 10
    assert capsys.readouterr().err == ""
    set_quiet(False)
    assert shown()


def test_a_hand_driven_bar_counts_what_it_is_given(capsys, monkeypatch):
    seen_as_terminal(monkeypatch)
    with progress(total=7, desc="predicting", unit="image") as bar:
        bar.update(3)
        bar.update(4)
    assert re.search(r"predicting: 100%.* 7/7 ", capsys.readouterr().err)


def test_epoch_bar_draws_one_bar_per_epoch_with_the_running_loss(capsys, monkeypatch):
    seen_as_terminal(monkeypatch)
    bar = EpochBar()
    for epoch in (1, 2):
        for step in (1, 2, 3):
            bar.on_step(epoch, step, 3, 0.5 / (epoch * step))
    err = capsys.readouterr().err
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")[:-1]]  # what stays on screen
    assert len(lines) == 2, err
    assert re.match(r"epoch 1: 100%.* 3/3 .*loss=0\.1667", lines[0]), lines[0]
    assert re.match(r"epoch 2: 100%.* 3/3 .*loss=0\.0833", lines[1]), lines[1]


def test_write_keeps_a_log_line_apart_from_an_open_bar(capsys, monkeypatch):
    seen_as_terminal(monkeypatch)
    with progress(total=2, desc="predicting") as bar:
        bar.update(1)
        write("skipped broken.jpg", sys.stderr)
        bar.update(1)
    err = capsys.readouterr().err
    before, after = err.split("skipped broken.jpg\n")
    assert before.startswith("\rpredicting") and before.endswith("\r")  # the bar's line is wiped first
    assert "2/2" in after  # and redrawn below it


def test_retrain_best_draws_the_same_training_bar_and_a_test_bar(capsys, monkeypatch):
    seen_as_terminal(monkeypatch)
    logged = []
    callbacks = RetrainCallbacks(logged.append)
    callbacks.log("retraining rank 1")
    for step in (1, 2):
        callbacks.on_step(1, step, 2, 0.25)

    class Loader(list):
        dataset = "the test dataset"

    loader = LoaderWithBar(Loader(["batch a", "batch b", "batch c"]), "testing")
    assert loader.dataset == "the test dataset" and len(loader) == 3
    assert list(loader) == ["batch a", "batch b", "batch c"]
    err = capsys.readouterr().err
    assert logged == ["retraining rank 1"]
    assert re.search(r"epoch 1: 100%.* 2/2 .*loss=0\.2500", err), err
    assert re.search(r"testing: 100%.* 3/3 .*batch/s", err), err
