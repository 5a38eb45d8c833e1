"""`python -m derm.train`: progress, outputs, MLflow, and config mistakes caught first."""

import re
import subprocess
import sys

import yaml
from terminal import seen_as_terminal


def run_train(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "derm.train", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_train_prints_progress_and_writes_checkpoint_config_and_mlflow_run(ham_demo, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "name": "cli", "task": "multitask", "out_dir": str(tmp_path / "runs"),
        "data": {"root": str(ham_demo), "image_size": 64, "num_workers": 0},
        "model": {"encoder": "resnet18", "encoder_weights": None},
        "train": {"epochs": 1, "batch_size": 16},
    }))
    done = run_train(config, "train.epochs=2", "optim.lr=0.001")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["epoch"])
    assert "score" in header and "dice" in header and "balanced_accuracy" in header
    assert sum(1 for line in lines if line.split()[:1] in (["1"], ["2"])) == 2
    assert "mlflow ui --backend-store-uri" in done.stdout

    run_dir = tmp_path / "runs" / "cli"
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == 2 and resolved["optim"]["lr"] == 0.001
    assert resolved["optim"]["name"] == "adam"  # defaults are written out too

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("derm-train")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "score")] == [1, 2]


def test_train_draws_one_bar_per_epoch_at_a_terminal_and_none_with_quiet(ham_demo, tmp_path, capsys, monkeypatch):
    from derm.train import main

    seen_as_terminal(monkeypatch)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "name": "bar", "task": "multitask", "out_dir": str(tmp_path / "runs"),
        "data": {"root": str(ham_demo), "image_size": 32, "num_workers": 0},
        "model": {"encoder": "resnet18", "encoder_weights": None},
        "train": {"epochs": 2, "batch_size": 16},
    }))
    assert main([str(config), "--no-mlflow"]) == 0
    captured = capsys.readouterr()
    on_screen = [line.rsplit("\r", 1)[-1] for line in captured.err.split("\n")[:-1]]  # each bar's last state
    assert len(on_screen) == 2, captured.err
    for epoch, line in enumerate(on_screen, 1):
        assert re.match(rf"epoch {epoch}: 100%.* (\d+)/\1 .*batch.*, loss=\d+\.\d{{4}}\]", line), line
    assert "%|" not in captured.out  # the bar stays off stdout, where the table goes

    assert main([str(config), "name=quiet", "train.epochs=1", "--no-mlflow", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "best epoch" in captured.out and "train_loss" in captured.out  # the table still prints


def test_typos_fail_before_any_data_is_read(tmp_path):
    config = tmp_path / "typo.yaml"
    for section, key, value, expected in [
        ("model", "arch", "Uent", "did you mean Unet"),
        ("model", "encoder", "resnet343", "did you mean resnet34"),
        ("loss", "seg", "dice+bcee", "did you mean bce"),
    ]:
        config.write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "no-such-data")}, section: {key: value}}))
        done = run_train(config, timeout=60)
        assert done.returncode == 2
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"error: {config}: {section}.{key}:") and expected in line
        assert "Traceback" not in done.stderr


def test_unknown_override_key_names_the_allowed_keys(tmp_path):
    config = tmp_path / "ok.yaml"
    config.write_text("task: segmentation\n")
    done = run_train(config, "train.epoch=3", timeout=60)
    assert done.returncode == 2
    assert "train.epoch: unknown key; did you mean epochs?" in done.stderr
