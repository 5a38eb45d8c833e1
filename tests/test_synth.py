"""The synthetic demo dataset: real on-disk layouts, exact masks, HAM10000's statistics, learnable."""

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from terminal import seen_as_terminal

from derm.data.synth import main
from derm.data.synthetic import ham10000_class_counts, write_synthetic_dataset
from derm.errors import ConfigError
from derm.labels import ATTRIBUTES, CLASSES, DX_TO_CLASS

HAM_SIZE = (64, 48)  # width x height: not square, so a swapped axis shows
HAM_N = 120
TASK2_SIZE = (48, 40)
TASK2_N = 40


@pytest.fixture(scope="module")
def ham(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "ham", "ham10000", HAM_N, HAM_SIZE, seed=3)


@pytest.fixture(scope="module")
def ham_metadata(ham) -> pd.DataFrame:
    return pd.read_csv(ham / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def task2(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "task2", "isic2018-task2", TASK2_N,
                                   TASK2_SIZE, seed=5)


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as mask:
        assert mask.mode == "L", path
        return np.asarray(mask)


def ham_image_path(root: Path, image_id: str) -> Path:
    (path,) = root.glob(f"HAM10000_images_part_*/{image_id}.jpg")
    return path


def test_ham10000_layout_and_names(ham, ham_metadata):
    assert sorted(p.name for p in ham.iterdir()) == [
        "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_metadata.csv",
        "HAM10000_segmentations_lesion_tschandl"]
    ids = sorted(ham_metadata.image_id)
    assert ids == [f"ISIC_{24306 + i:07d}" for i in range(HAM_N)]
    part_1 = sorted(p.stem for p in (ham / "HAM10000_images_part_1").iterdir())
    part_2 = sorted(p.stem for p in (ham / "HAM10000_images_part_2").iterdir())
    assert part_1 == ids[:HAM_N // 2] and part_2 == ids[HAM_N // 2:]
    masks = sorted(p.name for p in (ham / "HAM10000_segmentations_lesion_tschandl").iterdir())
    assert masks == [f"{image_id}_segmentation.png" for image_id in ids]
    assert all(re.fullmatch(r"HAM_\d{7}", lesion_id) for lesion_id in ham_metadata.lesion_id)


def test_ham10000_metadata_is_crlf_with_the_real_columns(ham, ham_metadata):
    raw = (ham / "HAM10000_metadata.csv").read_bytes()
    lines = raw.split(b"\r\n")
    assert lines[0] == b"lesion_id,image_id,dx,dx_type,age,sex,localization"
    assert b"\n" not in raw.replace(b"\r\n", b"") and lines[-1] == b"" and len(lines) == HAM_N + 2
    assert set(ham_metadata.dx) == set(DX_TO_CLASS)
    assert set(ham_metadata.dx_type) <= {"histo", "follow_up", "consensus", "confocal"}
    assert set(ham_metadata.sex) <= {"male", "female", "unknown"}
    ages = pd.to_numeric(ham_metadata.age.replace("", None))
    assert ages.dropna().between(0, 85).all() and (ages.dropna() % 5 == 0).all()


def test_class_counts_follow_ham10000_imbalance():
    # 500 * (6705, 1113, 1099, 514, 327, 142, 115) / 10015 = 334.75, 55.57, 54.87, 25.66, 16.33, 7.09, 5.74:
    # floors sum to 496, the four largest remainders (bkl .87, nv .75, df .74, bcc .66) get one more
    assert ham10000_class_counts(500) == {"nv": 335, "mel": 55, "bkl": 55, "bcc": 26, "akiec": 16,
                                          "vasc": 7, "df": 6}
    # every class keeps 3 images; nv gives up the rest
    assert ham10000_class_counts(30) == {"nv": 12, "mel": 3, "bkl": 3, "bcc": 3, "akiec": 3, "vasc": 3, "df": 3}
    assert set(ham10000_class_counts(21).values()) == {3}
    with pytest.raises(ConfigError, match="at least 21"):
        ham10000_class_counts(20)


def test_written_classes_match_the_counts(ham_metadata):
    assert ham_metadata.dx.value_counts().to_dict() == ham10000_class_counts(HAM_N)


def test_lesions_have_several_images_that_agree(ham, ham_metadata):
    per_lesion = ham_metadata.groupby("lesion_id").size()
    assert per_lesion.max() >= 2
    images_per_lesion = HAM_N / len(per_lesion)  # HAM10000: 10,015 images of 7,470 lesions = 1.34
    assert images_per_lesion >= 1.15
    assert images_per_lesion <= 1.6
    shared = ham_metadata.groupby("lesion_id")[["dx", "dx_type", "age", "sex", "localization"]].nunique()
    assert (shared == 1).all().all()
    # repeat images are slight variations: the lesion keeps about its size
    for lesion_id in per_lesion[per_lesion >= 2].index:
        ids = ham_metadata.image_id[ham_metadata.lesion_id == lesion_id]
        areas = [(read_mask(ham / "HAM10000_segmentations_lesion_tschandl" / f"{i}_segmentation.png") > 0).sum()
                 for i in ids]
        assert max(areas) <= 1.8 * min(areas), (lesion_id, areas)


def test_ham10000_masks_are_binary_non_empty_and_image_sized(ham, ham_metadata):
    for image_id in ham_metadata.image_id:
        with Image.open(ham_image_path(ham, image_id)) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", HAM_SIZE)
        mask = read_mask(ham / "HAM10000_segmentations_lesion_tschandl" / f"{image_id}_segmentation.png")
        assert mask.shape == (HAM_SIZE[1], HAM_SIZE[0])
        assert set(np.unique(mask)) == {0, 255}, image_id


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first = files(write_synthetic_dataset(tmp_path / "a", n=21, size=(32, 32), seed=7))
    again = files(write_synthetic_dataset(tmp_path / "b", n=21, size=(32, 32), seed=7))
    other = files(write_synthetic_dataset(tmp_path / "c", n=21, size=(32, 32), seed=8))
    assert first == again
    assert first.keys() == other.keys()
    assert sum(first[name] != other[name] for name in first) > 40


def test_task2_layout_names_and_masks(task2):
    assert sorted(p.name for p in task2.iterdir()) == [
        "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth",
        "ISIC2018_Task2_Training_GroundTruth_v3"]
    ids = [f"ISIC_{i:07d}" for i in range(TASK2_N)]
    assert sorted(p.name for p in (task2 / "ISIC2018_Task1-2_Training_Input").iterdir()) == [f"{i}.jpg" for i in ids]
    expected = sorted(f"{i}_attribute_{name}.png" for i in ids for name in ATTRIBUTES)
    assert sorted(p.name for p in (task2 / "ISIC2018_Task2_Training_GroundTruth_v3").iterdir()) == expected
    for image_id in ids:
        lesion = read_mask(task2 / "ISIC2018_Task1_Training_GroundTruth" / f"{image_id}_segmentation.png")
        assert lesion.shape == (TASK2_SIZE[1], TASK2_SIZE[0]) and set(np.unique(lesion)) == {0, 255}


def test_task2_attributes_lie_inside_the_lesion_and_are_mostly_absent(task2):
    present = dict.fromkeys(ATTRIBUTES, 0)
    for i in range(TASK2_N):
        image_id = f"ISIC_{i:07d}"
        lesion = read_mask(task2 / "ISIC2018_Task1_Training_GroundTruth" / f"{image_id}_segmentation.png") > 0
        for name in ATTRIBUTES:
            mask = read_mask(task2 / "ISIC2018_Task2_Training_GroundTruth_v3" / f"{image_id}_attribute_{name}.png")
            assert mask.shape == lesion.shape and set(np.unique(mask)) <= {0, 255}
            assert not (mask[~lesion] > 0).any(), (image_id, name)
            present[name] += bool(mask.any())
    assert min(present.values()) >= 2, present
    assert present["pigment_network"] <= 0.85 * TASK2_N  # ISIC 2018: about 60% of images
    for rare in ("negative_network", "streaks", "milia_like_cyst", "globules"):
        assert present[rare] <= 0.5 * TASK2_N, present


def test_every_attribute_occurs_twice_even_in_tiny_datasets(tmp_path):
    root = write_synthetic_dataset(tmp_path / "tiny", "isic2018-task2", n=3, size=(32, 32), seed=0)
    for name in ATTRIBUTES:
        masks = sorted((root / "ISIC2018_Task2_Training_GroundTruth_v3").glob(f"*_attribute_{name}.png"))
        assert sum(read_mask(p).any() for p in masks) >= 2, name


def test_user_mistakes_raise_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown synthetic layout 'kaggle'"):
        write_synthetic_dataset(tmp_path / "x", layout="kaggle")
    with pytest.raises(ConfigError, match="at least 32x32"):
        write_synthetic_dataset(tmp_path / "x", n=30, size=(16, 16))
    with pytest.raises(ConfigError, match="isic2018-task2.*at least 2"):
        write_synthetic_dataset(tmp_path / "x", layout="isic2018-task2", n=1)
    with pytest.raises(ConfigError, match="ham10000 layout: need at least 21"):
        write_synthetic_dataset(tmp_path / "x", n=20)
    assert not (tmp_path / "x").exists()  # a refused request leaves nothing behind
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        write_synthetic_dataset(tmp_path / "full", n=21, size=(32, 32))
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_command_line(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--layout", "isic2018-task2", "--n", "4", "--size", "40x32"]) == 0
    with Image.open(tmp_path / "cli" / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000003.jpg") as image:
        assert image.size == (40, 32)
    assert main([str(tmp_path / "bad"), "--size", "big"]) != 0
    assert capsys.readouterr().err.strip() == "error: --size 'big' is not WIDTHxHEIGHT, e.g. 128x128"


def test_command_line_shows_a_bar_while_writing_at_a_terminal_and_none_with_quiet(tmp_path, capsys, monkeypatch):
    seen_as_terminal(monkeypatch)
    assert main([str(tmp_path / "ham"), "--n", "21", "--size", "32x32"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"writing: 100%.* 21/21 .*image/s", captured.err), captured.err
    assert captured.out.startswith("wrote 21 ham10000 images")
    assert main([str(tmp_path / "task2"), "--layout", "isic2018-task2", "--n", "4", "--size", "32x32"]) == 0
    assert re.search(r"writing: 100%.* 4/4 ", capsys.readouterr().err)

    assert main([str(tmp_path / "quiet"), "--n", "21", "--size", "32x32", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.startswith("wrote 21 ham10000 images")


def test_load_table_reads_both_layouts_without_problems(ham, task2):
    from derm.data.formats import load_table

    table = load_table(ham)
    assert table.attrs["layout"] == "ham10000" and table.attrs["has_lesion_ids"]
    assert table.attrs["problems"] == [] and len(table) == HAM_N
    assert set(table.diagnosis) == set(CLASSES) and table.lesion_mask_path.notna().all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Task 2 has no lesion ids, which load_table warns about
        table = load_table(task2)
    assert table.attrs["layout"] == "isic2018-task2" and table.attrs["problems"] == []
    assert len(table) == TASK2_N
    assert table[[f"attribute_{name}_path" for name in ATTRIBUTES]].notna().all().all()


def colour_statistics(image: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    inside, outside = image[lesion], image[~lesion]
    return np.concatenate([inside.mean(0), inside.std(0), outside.mean(0),
                           np.percentile(inside, [10, 90], axis=0).ravel(), [lesion.mean()]])


def test_classes_are_learnable_but_not_trivially(tmp_path):
    root = write_synthetic_dataset(tmp_path / "learn", n=300, size=(64, 64), seed=0)
    metadata = pd.read_csv(root / "HAM10000_metadata.csv")
    features = []
    for image_id in metadata.image_id:
        with Image.open(ham_image_path(root, image_id)) as image:
            pixels = np.asarray(image, dtype=float) / 255
        lesion = read_mask(root / "HAM10000_segmentations_lesion_tschandl" / f"{image_id}_segmentation.png") > 0
        features.append(colour_statistics(pixels, lesion))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    folds = StratifiedGroupKFold(3, shuffle=True, random_state=0)  # a lesion's images stay in one fold
    labels = metadata.dx.to_numpy(str)
    predicted = cross_val_predict(model, np.array(features), labels, cv=folds,
                                  groups=metadata.lesion_id.to_numpy(str))
    score = balanced_accuracy_score(labels, predicted)
    assert 0.4 < score < 0.95, score  # chance is 1/7
