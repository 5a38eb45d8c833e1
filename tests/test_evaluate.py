"""derm.evaluate: scores equal the official isic-challenge-scoring package; errors name the file."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from isic_challenge_scoring import task2 as official_task2
from isic_challenge_scoring.segmentation import SegmentationScore
from PIL import Image
from terminal import seen_as_terminal

from derm.errors import DataError
from derm.evaluate import main
from derm.labels import ATTRIBUTES, CLASSES
from derm.metrics import UNDECIDED, predicted_labels
from derm.scoring import score_task1, score_task2, score_task3

ROOT = Path(__file__).resolve().parents[1]

# The official package uses pandas keywords deprecated in pandas 3 (rename(inplace=True),
# set_index(verify_integrity=...)); their warnings are not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:The inplace keyword"),
              pytest.mark.filterwarnings("ignore:The 'verify_integrity' keyword")]


def save_mask(path: Path, mask: np.ndarray, mode: str = "L") -> None:
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")
    (image.convert("1") if mode == "1" else image).save(path)


def random_blob(rng, shape) -> np.ndarray:
    mask = np.zeros(shape, bool)
    top, left = rng.integers(0, shape[0] // 2), rng.integers(0, shape[1] // 2)
    mask[top:top + rng.integers(3, shape[0] // 2 + 3), left:left + rng.integers(3, shape[1] // 2 + 3)] = True
    return mask


def write_task1(folder: Path, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    truth_dir, pred_dir = folder / "truth", folder / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    (truth_dir / "LICENSE.txt").write_text("not a mask\n")
    for i in range(10):
        shape = (20, 30) if i % 2 else (30, 20)
        truth = random_blob(rng, shape) if i % 4 else np.zeros(shape, bool)  # some empty truths
        pred = np.roll(truth, (rng.integers(-2, 3), rng.integers(-2, 3)), axis=(0, 1))
        if i == 8:
            pred[3, 3] = True  # a false positive on an empty truth
        if i in (3, 5):
            pred[:] = False    # an empty prediction of a real lesion
        image_id = f"ISIC_{i + 10:07d}"
        save_mask(truth_dir / f"{image_id}_segmentation.png", truth)
        save_mask(pred_dir / f"{image_id}.png", pred, mode="1" if i == 1 else "L")
    return truth_dir, pred_dir


def write_task2(folder: Path, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    truth_dir, pred_dir = folder / "truth", folder / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    for i, shape in enumerate([(20, 30), (24, 16), (12, 40), (30, 30)]):
        for name in ATTRIBUTES:
            if name in ("negative_network", "milia_like_cyst"):  # absent everywhere
                truth = pred = np.zeros(shape, bool)
            else:
                truth = random_blob(rng, shape) if rng.random() < 0.7 else np.zeros(shape, bool)
                pred = random_blob(rng, shape) if rng.random() < 0.7 else np.zeros(shape, bool)
            stem = f"ISIC_{i + 20:07d}_attribute_{name}"
            save_mask(truth_dir / f"{stem}.png", truth)
            save_mask(pred_dir / f"{stem}.png", pred)
    return truth_dir, pred_dir


def write_task3(folder: Path, seed: int, n: int = 35) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 7)
    ids = [f"ISIC_{i + 24306:07d}" for i in range(n)]
    truth = pd.DataFrame(np.eye(7)[labels], columns=list(CLASSES))
    truth.insert(0, "image", ids)
    # one decimal place: many rows tie for the top probability
    probs = np.round(rng.dirichlet(np.ones(7), n) * 0.5 + 0.5 * np.eye(7)[labels] * rng.random((n, 1)), 1)
    pred = pd.DataFrame(probs, columns=list(CLASSES))
    pred.insert(0, "image", [f"{i}.jpg" if k % 3 == 0 else i for k, i in enumerate(ids)])
    truth_csv, pred_csv = folder / "truth.csv", folder / "pred.csv"
    truth.to_csv(truth_csv, index=False)
    pred.sample(frac=1.0, random_state=seed).to_csv(pred_csv, index=False, float_format="%.1f")
    return truth_csv, pred_csv, probs


@pytest.mark.parametrize("seed", range(3))
def test_task1_equals_official_scorer(tmp_path, seed):
    truth_dir, pred_dir = write_task1(tmp_path, seed)
    official = SegmentationScore.from_dir(truth_dir, pred_dir)
    ours = score_task1(truth_dir, pred_dir)
    assert ours["isic_task1_jaccard"] == pytest.approx(official.overall, abs=1e-6)
    assert ours["iou_per_image"] == pytest.approx(official.macro_average["jaccard"], abs=1e-6)
    assert ours["dice_per_image"] == pytest.approx(official.macro_average["dice"], abs=1e-6)
    assert ours["iou"] <= ours["dice"]


@pytest.mark.parametrize("seed", range(3))
def test_task2_equals_official_scorer(tmp_path, seed):
    truth_dir, pred_dir = write_task2(tmp_path, seed)
    official = official_task2.score(truth_dir, pred_dir)
    ours = score_task2(truth_dir, pred_dir)
    for name in ATTRIBUTES:
        assert ours[f"jaccard_{name}"] == pytest.approx(official[name]["jaccard"], abs=1e-6)
        assert ours[f"dice_{name}"] == pytest.approx(official[name]["dice"], abs=1e-6)
    assert ours["jaccard_micro"] == pytest.approx(official["overall"], abs=1e-6)
    assert ours["dice_micro"] == pytest.approx(official["micro_average"]["dice"], abs=1e-6)
    assert ours["jaccard_milia_like_cyst"] == 1.0  # absent everywhere: 1, as the official scorer says


@pytest.mark.parametrize("seed", range(3))
def test_task3_equals_official_scorer_including_ties(tmp_path, seed, official_classification):
    truth_csv, pred_csv, probs = write_task3(tmp_path, seed)
    assert (predicted_labels(probs) == UNDECIDED).any()  # the tie rule is exercised
    official = official_classification(truth_csv, pred_csv)
    ours = score_task3(truth_csv, pred_csv)
    assert ours["balanced_accuracy"] == pytest.approx(official.overall, abs=1e-6)
    assert ours["auroc"] == pytest.approx(official.macro_average["auc"], abs=1e-6)
    for name in CLASSES:
        assert ours[f"auroc_{name}"] == pytest.approx(official.per_category.loc[name, "auc"], abs=1e-6)


def test_cli_task1_end_to_end_equals_official(tmp_path):
    truth_dir, pred_dir = write_task1(tmp_path, seed=7)
    result = subprocess.run([sys.executable, "-m", "derm.evaluate", "--task", "task1", str(truth_dir), str(pred_dir)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["isic_task1_jaccard"] == pytest.approx(SegmentationScore.from_dir(truth_dir, pred_dir).overall,
                                                          abs=1e-6)


def test_cli_task2_and_task3_print_official_scores(tmp_path, capsys, official_classification):
    (tmp_path / "t2").mkdir()
    truth_dir, pred_dir = write_task2(tmp_path / "t2", seed=4)
    assert main(["--task", "task2", str(truth_dir), str(pred_dir)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["jaccard_micro"] == pytest.approx(official_task2.score(truth_dir, pred_dir)["overall"], abs=1e-6)

    truth_csv, pred_csv, _ = write_task3(tmp_path, seed=4)
    assert main(["--task", "task3", str(truth_csv), str(pred_csv)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["balanced_accuracy"] == pytest.approx(official_classification(truth_csv, pred_csv).overall,
                                                         abs=1e-6)


def test_cli_shows_a_bar_while_reading_masks_at_a_terminal_and_none_with_quiet(tmp_path, capsys, monkeypatch):
    seen_as_terminal(monkeypatch)
    truth_dir, pred_dir = write_task1(tmp_path, seed=1)
    assert main(["--task", "task1", str(truth_dir), str(pred_dir)]) == 0
    captured = capsys.readouterr()
    assert re.search(r"scoring: 100%.* 10/10 .*mask/s", captured.err), captured.err
    shown = json.loads(captured.out)  # the bar never reaches stdout

    assert main(["--task", "task1", str(truth_dir), str(pred_dir), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert json.loads(captured.out) == shown


# ---------------------------------------------------------------- user mistakes

def test_missing_prediction_names_the_truth_file(tmp_path):
    truth_dir, pred_dir = write_task1(tmp_path, seed=0)
    (pred_dir / "ISIC_0000012.png").unlink()
    with pytest.raises(DataError, match=r"no prediction for ISIC_0000012 \(truth file ISIC_0000012_segmentation.png\)"):
        score_task1(truth_dir, pred_dir)


def test_wrong_size_and_multichannel_predictions_are_named(tmp_path):
    truth_dir, pred_dir = write_task1(tmp_path, seed=0)
    Image.new("L", (31, 20)).save(pred_dir / "ISIC_0000011.png")  # truth is 30x20 (WxH)
    with pytest.raises(DataError, match=r"ISIC_0000011.png: mask is 31x20 \(WxH\), expected 30x20"):
        score_task1(truth_dir, pred_dir)
    Image.new("RGB", (30, 20)).save(pred_dir / "ISIC_0000011.png")
    with pytest.raises(DataError, match=r"ISIC_0000011.png: mask has image mode RGB"):
        score_task1(truth_dir, pred_dir)


def test_ambiguous_and_unnamed_files(tmp_path):
    truth_dir, pred_dir = write_task1(tmp_path, seed=0)
    Image.new("L", (20, 30)).save(pred_dir / "ISIC_0000010_copy.png")
    with pytest.raises(DataError, match="two files for ISIC_0000010"):
        score_task1(truth_dir, pred_dir)
    (pred_dir / "ISIC_0000010_copy.png").unlink()
    Image.new("L", (20, 30)).save(truth_dir / "lesion.png")
    with pytest.raises(DataError, match=r"truth file .*lesion.png does not name an ISIC_nnnnnnn id"):
        score_task1(truth_dir, pred_dir)


def test_task2_truth_needs_every_attribute(tmp_path):
    truth_dir, pred_dir = write_task2(tmp_path, seed=0)
    (truth_dir / "ISIC_0000021_attribute_streaks.png").unlink()
    with pytest.raises(DataError, match="no attribute_streaks mask for ISIC_0000021"):
        score_task2(truth_dir, pred_dir)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.drop(columns=["VASC"]), "missing VASC"),
    (lambda t: t.assign(extra=1.0), "unexpected extra"),
    (lambda t: t.assign(MEL=t["MEL"] + 1.5), r"outside \[0, 1\] for ISIC_"),
    (lambda t: t.iloc[1:], "no row for 1 truth images, e.g. ISIC_"),
    (lambda t: pd.concat([t, t.iloc[:1].assign(image="ISIC_9999999")]), "not in the truth: ISIC_9999999"),
    (lambda t: pd.concat([t, t.iloc[:1]]), "listed twice"),
    (lambda t: t.assign(NV="high"), "non-numeric values"),
])
def test_bad_prediction_csvs_are_named(tmp_path, edit, message):
    truth_csv, pred_csv, _ = write_task3(tmp_path, seed=0)
    edit(pd.read_csv(pred_csv).sort_values("image")).to_csv(pred_csv, index=False)
    with pytest.raises(DataError, match=f"prediction CSV .*pred.csv.*{message}"):
        score_task3(truth_csv, pred_csv)


def test_truth_csv_must_be_one_hot(tmp_path):
    truth_csv, pred_csv, _ = write_task3(tmp_path, seed=0)
    truth = pd.read_csv(truth_csv)
    truth.loc[2, list(CLASSES)] = 0.0
    truth.to_csv(truth_csv, index=False)
    with pytest.raises(DataError, match=f"truth CSV .*no single diagnosis .*{truth.loc[2, 'image']}"):
        score_task3(truth_csv, pred_csv)


def test_cli_reports_errors_on_one_line(tmp_path, capsys):
    truth_csv, _, _ = write_task3(tmp_path, seed=0)
    (tmp_path / "empty.csv").write_text("")
    assert main(["--task", "task3", str(truth_csv), str(tmp_path / "empty.csv")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: prediction CSV ") and "empty.csv cannot be parsed" in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert main(["--task", "task1", str(tmp_path / "nowhere"), str(tmp_path)]) == 1
    assert "truth folder" in capsys.readouterr().err
