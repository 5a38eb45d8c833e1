"""derm.predict: submission files at original size that the official scorer accepts; TTA; errors."""

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from isic_challenge_scoring import task2 as official_task2
from isic_challenge_scoring.segmentation import SegmentationScore
from PIL import Image
from terminal import seen_as_terminal

from derm.checkpoint import load_checkpoint, save_checkpoint
from derm.config import config_from_dict
from derm.inference import TTA_FLIPS, Predictor
from derm.labels import ATTRIBUTES, CLASSES
from derm.predict import main
from derm.scoring import score_task1, score_task2, score_task3
from derm.submission import predict_folder
from derm.sweep.plan import load_plan
from derm.training import fit

REAL = Path(__file__).resolve().parent / "data" / "real"
ISIC_IMAGES = REAL / "isic2018" / "images"
HAM_IMAGES = REAL / "ham10000" / "images"
CSV_HEADER = ["image", *CLASSES]

# The official package uses pandas keywords deprecated in pandas 3; their warnings are not ours.
# Task 2 data has no lesion ids; derm warns about its image-level split when training on it.
pytestmark = [pytest.mark.filterwarnings("ignore:The inplace keyword"),
              pytest.mark.filterwarnings("ignore:The 'verify_integrity' keyword"),
              pytest.mark.filterwarnings("ignore::derm.data.formats.LesionIdsMissingWarning")]


def train_tiny(root, task, folder) -> Path:
    cfg = config_from_dict({
        "name": f"{task}-predict", "task": task, "out_dir": str(folder),
        "data": {"root": str(root), "image_size": 32, "augment": "none", "num_workers": 0},
        "model": {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None},
        "optim": {"lr": 1e-3, "scheduler": "none"},
        "train": {"epochs": 1, "batch_size": 16, "seed": 0},
        "mlflow": {"enabled": False},
    })
    return fit(cfg, folder / "run").best_checkpoint


@pytest.fixture(scope="module")
def multitask_checkpoint(ham_demo, tmp_path_factory):
    return train_tiny(ham_demo, "multitask", tmp_path_factory.mktemp("multitask"))


@pytest.fixture(scope="module")
def attributes_checkpoint(task2_demo, tmp_path_factory):
    return train_tiny(task2_demo, "attributes", tmp_path_factory.mktemp("attributes"))


@pytest.fixture(scope="module")
def multitask_predictor(multitask_checkpoint):
    return Predictor.from_checkpoint(multitask_checkpoint, device="cpu")


@pytest.fixture
def mixed_folder(tmp_path):
    """The real ISIC 2018 images, one more at an odd size as PNG, and a file that is no image."""
    folder = tmp_path / "images"
    shutil.copytree(ISIC_IMAGES, folder)
    with Image.open(ISIC_IMAGES / "ISIC_0000000.jpg") as image:
        image.resize((333, 250)).save(folder / "ISIC_0000100.png")
    (folder / "LICENSE.txt").write_text("not an image\n")
    return folder


def image_sizes(folder: Path) -> dict[str, tuple[int, int]]:
    sizes = {}
    for path in folder.iterdir():
        if path.suffix in (".jpg", ".png"):
            with Image.open(path) as image:
                sizes[path.stem] = image.size
    return sizes


def assert_submission_mask(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as mask:
        assert mask.mode == "L" and mask.size == size, path
        assert set(np.unique(np.asarray(mask))) <= {0, 255}, path


# ---------------------------------------------------------------- submission files

def test_multitask_cli_writes_masks_csv_and_overlays_at_original_sizes(multitask_checkpoint, mixed_folder,
                                                                      tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(multitask_checkpoint), str(mixed_folder), "--out", str(out), "--batch-size", "3", "--tta"]) == 0
    assert "predicted 7 images" in capsys.readouterr().out

    sizes = image_sizes(mixed_folder)
    assert (333, 250) in sizes.values() and (1022, 767) in sizes.values()
    for image_id, size in sizes.items():
        assert_submission_mask(out / f"{image_id}_segmentation.png", size)
        with Image.open(out / "overlays" / f"{image_id}.jpg") as overlay:
            assert overlay.size == size
    assert not list(out.glob("LICENSE*"))

    table = pd.read_csv(out / "diagnosis.csv")
    assert list(table.columns) == CSV_HEADER
    assert sorted(table["image"]) == sorted(sizes)
    assert np.allclose(table[list(CLASSES)].sum(axis=1), 1.0, atol=1e-9)
    assert ((table[list(CLASSES)] >= 0) & (table[list(CLASSES)] <= 1)).all().all()


def test_cli_shows_a_bar_by_images_at_a_terminal_and_none_with_quiet(multitask_checkpoint, tmp_path, capsys,
                                                                     monkeypatch):
    seen_as_terminal(monkeypatch)
    common = [str(multitask_checkpoint), str(ISIC_IMAGES), "--batch-size", "4", "--no-overlays"]
    assert main([*common, "--out", str(tmp_path / "shown")]) == 0
    captured = capsys.readouterr()
    # 6 images in batches of 4: the bar counts images, not batches.
    assert re.search(r"predicting: 100%.* 6/6 .*image/s", captured.err), captured.err
    assert "predicted 6 images" in captured.out

    assert main([*common, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "predicted 6 images" in captured.out
    assert len(list((tmp_path / "quiet").glob("*_segmentation.png"))) == 6


def test_attribute_model_writes_the_five_task2_masks(attributes_checkpoint, mixed_folder, tmp_path):
    out = tmp_path / "out"
    predictor = Predictor.from_checkpoint(attributes_checkpoint, device="cpu")
    result = predict_folder(predictor, mixed_folder, out, overlays=False, log=lambda line: None)
    sizes = image_sizes(mixed_folder)
    assert sorted(result.predicted) == sorted(sizes) and not result.skipped
    for image_id, size in sizes.items():
        for name in ("pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules"):
            assert_submission_mask(out / f"{image_id}_attribute_{name}.png", size)
    assert not (out / "diagnosis.csv").exists() and not (out / "overlays").exists()
    assert not list(out.glob("*_segmentation.png"))


def test_predicted_lesion_masks_score_as_the_official_scorer_does(multitask_predictor, tmp_path):
    out = tmp_path / "out"
    predict_folder(multitask_predictor, ISIC_IMAGES, out, overlays=False, log=lambda line: None)
    truth = REAL / "isic2018" / "task1_masks"
    official = SegmentationScore.from_dir(truth, out)
    ours = score_task1(truth, out)
    assert ours["isic_task1_jaccard"] == pytest.approx(official.overall, abs=1e-6)
    assert ours["iou_per_image"] == pytest.approx(official.macro_average["jaccard"], abs=1e-6)
    assert ours["dice_per_image"] == pytest.approx(official.macro_average["dice"], abs=1e-6)
    assert ours["dice_per_image"] > 0  # real masks were compared, not empty ones


def test_predicted_attribute_masks_score_as_the_official_scorer_does(attributes_checkpoint, tmp_path):
    out = tmp_path / "out"
    predictor = Predictor.from_checkpoint(attributes_checkpoint, device="cpu")
    predict_folder(predictor, ISIC_IMAGES, out, overlays=False, log=lambda line: None)
    # The real sample has pigment network truth only; the other attributes are truly absent there.
    truth = tmp_path / "truth"
    shutil.copytree(REAL / "isic2018" / "task2_masks", truth)
    for path in (REAL / "isic2018" / "task2_masks").iterdir():
        with Image.open(path) as mask:
            empty = Image.new("L", mask.size)
        for name in ATTRIBUTES[1:]:
            empty.save(truth / path.name.replace("pigment_network", name))
    official = official_task2.score(truth, out)
    ours = score_task2(truth, out)
    assert ours["jaccard_micro"] == pytest.approx(official["overall"], abs=1e-6)
    for name in ATTRIBUTES:
        assert ours[f"jaccard_{name}"] == pytest.approx(official[name]["jaccard"], abs=1e-6)


def test_predicted_diagnoses_score_as_the_official_scorer_does(multitask_predictor, tmp_path,
                                                               official_classification):
    out = tmp_path / "out"
    result = predict_folder(multitask_predictor, HAM_IMAGES, out, overlays=False, log=lambda line: None)
    truth = pd.read_csv(REAL / "ham10000" / "ISIC2018_Task3_Training_GroundTruth.csv")
    truth = truth[truth["image"].isin(result.predicted)]
    assert len(truth) == len(list(HAM_IMAGES.glob("*.jpg"))) == 14
    truth_csv = tmp_path / "truth.csv"
    truth.to_csv(truth_csv, index=False)
    ours = score_task3(truth_csv, result.probabilities_csv)
    official = official_classification(truth_csv, result.probabilities_csv)
    assert ours["balanced_accuracy"] == pytest.approx(official.overall, abs=1e-6)


# ---------------------------------------------------------------- the Python API

def test_predict_takes_a_path_a_pil_image_or_an_array_alike(multitask_predictor, tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "ISIC_0000200.png")
    by_path = multitask_predictor.predict(tmp_path / "ISIC_0000200.png")
    by_pil = multitask_predictor.predict(Image.fromarray(pixels))
    by_array = multitask_predictor.predict(pixels)
    for other in (by_pil, by_array):
        assert other.label == by_path.label
        assert other.probabilities == pytest.approx(by_path.probabilities)
        assert np.array_equal(other.lesion_mask, by_path.lesion_mask)
    assert by_path.label in CLASSES and by_path.label == max(by_path.probabilities, key=by_path.probabilities.get)
    assert sum(by_path.probabilities.values()) == pytest.approx(1.0)
    assert by_path.lesion_mask.shape == (40, 56) and by_path.lesion_mask.dtype == bool
    assert by_path.attribute_masks is None


def test_masks_come_from_resized_probabilities_not_resized_masks(multitask_predictor):
    with Image.open(ISIC_IMAGES / "ISIC_0000000.jpg") as image:
        rgb = image.convert("RGB")
    prediction = multitask_predictor.predict(rgb)
    small = np.asarray(rgb.resize((32, 32), Image.Resampling.BILINEAR))
    lesion = multitask_predictor.probabilities(multitask_predictor.to_tensor(small)[None])["seg"][0, 0].numpy()
    assert 0 < (lesion > 0.5).mean() < 1  # an outline exists to compare

    upsampled = cv2.resize(lesion, (1022, 767), interpolation=cv2.INTER_LINEAR)
    decided = np.abs(upsampled - 0.5) > 1e-4
    assert prediction.lesion_mask.shape == (767, 1022)
    assert np.array_equal(prediction.lesion_mask[decided], (upsampled > 0.5)[decided])
    # Nearest neighbour on the 32 px mask would give a staircase outline instead.
    blocky = np.asarray(Image.fromarray(lesion > 0.5).resize((1022, 767), Image.Resampling.NEAREST))
    assert (blocky != prediction.lesion_mask).sum() > 100


def test_tta_is_the_mean_of_the_four_flipped_predictions(multitask_checkpoint):
    plain = Predictor.from_checkpoint(multitask_checkpoint, device="cpu")
    tta = Predictor.from_checkpoint(multitask_checkpoint, device="cpu", tta=True)
    # At the model's own size no resize happens, so flipping the pixels flips the input exactly.
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    views = [pixels, pixels[:, ::-1], pixels[::-1, :], pixels[::-1, ::-1]]
    unflips = [lambda m: m, lambda m: m[..., ::-1], lambda m: m[..., ::-1, :], lambda m: m[..., ::-1, ::-1]]
    assert len(views) == len(TTA_FLIPS)

    seg, cls = [], []
    for view, unflip in zip(views, unflips):
        probs = plain.probabilities(plain.to_tensor(np.ascontiguousarray(view))[None])
        seg.append(unflip(probs["seg"][0, 0].numpy()))
        cls.append(probs["cls"][0].numpy())
    mean_seg, mean_cls = np.mean(seg, axis=0), np.mean(cls, axis=0)
    assert not np.allclose(seg[0], seg[1], atol=1e-4)  # the views really differ

    got = tta.probabilities(tta.to_tensor(pixels)[None])
    assert np.allclose(got["seg"][0, 0].numpy(), mean_seg, atol=1e-6)
    assert np.allclose(got["cls"][0].numpy(), mean_cls, atol=1e-6)

    prediction = tta.predict(pixels)
    assert np.allclose([prediction.probabilities[name] for name in CLASSES], mean_cls, atol=1e-6)
    decided = np.abs(mean_seg - 0.5) > 1e-5
    assert np.array_equal(prediction.lesion_mask[decided], (mean_seg > 0.5)[decided])


def test_latest_and_sweep_trial_checkpoints_load_too(multitask_checkpoint, finished_sweep):
    latest = multitask_checkpoint.with_name("latest.pt")
    assert "optimizer" in load_checkpoint(latest)
    image = ISIC_IMAGES / "ISIC_0000001.jpg"
    from_best = Predictor.from_checkpoint(multitask_checkpoint, device="cpu").predict(image)
    from_latest = Predictor.from_checkpoint(latest, device="cpu").predict(image)
    assert from_latest.probabilities == pytest.approx(from_best.probabilities)  # one epoch: the same model

    trial_checkpoints = sorted(Path(load_plan(finished_sweep).experiment_path).glob("trial_*/checkpoint_*/latest.pt"))
    assert trial_checkpoints
    prediction = Predictor.from_checkpoint(trial_checkpoints[-1], device="cpu").predict(image)
    assert prediction.lesion_mask.shape == (767, 1022) and prediction.label in CLASSES


# ---------------------------------------------------------------- user mistakes

def assert_one_error_line(capsys, *fragments):
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in captured.err


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere.pt"), str(ISIC_IMAGES), "--out", str(tmp_path / "out")]) == 2
    assert_one_error_line(capsys, "nowhere.pt", "no such checkpoint")


def test_non_derm_files_are_one_line(multitask_checkpoint, tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    # A file that is there but unusable is a data failure (1); a path to nothing a usage mistake (2).
    assert main([str(tmp_path / "notes.pt"), str(ISIC_IMAGES), "--out", str(tmp_path / "out")]) == 1
    assert_one_error_line(capsys, "notes.pt", "cannot be loaded as a derm checkpoint")

    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    assert main([str(tmp_path / "other.pt"), str(ISIC_IMAGES), "--out", str(tmp_path / "out")]) == 1
    assert_one_error_line(capsys, "other.pt", "not a derm checkpoint")

    # A derm checkpoint whose config names another encoder than its weights were trained with.
    payload = load_checkpoint(multitask_checkpoint)
    payload["config"]["model"]["encoder"] = "mobilenet_v2"
    save_checkpoint(payload, tmp_path / "mismatch.pt")
    assert main([str(tmp_path / "mismatch.pt"), str(ISIC_IMAGES), "--out", str(tmp_path / "out")]) == 1
    assert_one_error_line(capsys, "mismatch.pt", "do not fit")


def test_folder_without_images_is_one_line(multitask_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no images here\n")
    assert main([str(multitask_checkpoint), str(empty), "--out", str(tmp_path / "out")]) == 1
    assert_one_error_line(capsys, "empty", "no JPEG or PNG images")
    assert main([str(multitask_checkpoint), str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 2
    assert_one_error_line(capsys, "absent", "no such image folder")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_device_is_one_line(multitask_checkpoint, tmp_path, capsys):
    assert main([str(multitask_checkpoint), str(ISIC_IMAGES), "--out", str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert_one_error_line(capsys, "--device: cuda is not available")


def test_corrupt_images_are_named_and_the_others_predicted(multitask_checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("ISIC_0000000.jpg", "ISIC_0000001.jpg"):
        shutil.copy(ISIC_IMAGES / name, folder / name)
    (folder / "ISIC_0000098.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = (ISIC_IMAGES / "ISIC_0000006.jpg").read_bytes()
    (folder / "ISIC_0000099.jpg").write_bytes(data[: len(data) // 2])  # truncated download
    out = tmp_path / "out"

    assert main([str(multitask_checkpoint), str(folder), "--out", str(out), "--no-overlays"]) == 1
    captured = capsys.readouterr()
    assert "predicted 2 images" in captured.out
    assert "skipped" in captured.err and "ISIC_0000098.jpg" in captured.err and "ISIC_0000099.jpg" in captured.err
    assert "2 images could not be read" in captured.err
    assert sorted(p.name for p in out.glob("*_segmentation.png")) == [
        "ISIC_0000000_segmentation.png", "ISIC_0000001_segmentation.png"]
    assert sorted(pd.read_csv(out / "diagnosis.csv")["image"]) == ["ISIC_0000000", "ISIC_0000001"]
    assert not (out / "overlays").exists()
