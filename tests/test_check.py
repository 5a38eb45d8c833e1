import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from terminal import seen_as_terminal

from derm.data.check import main
from derm.data.decoding import check_table, decode_image, drop_bad_rows, inspect_sample
from derm.data.formats import load_table
from derm.data.problems import Problem
from derm.errors import DataError

REAL = Path(__file__).parent / "data" / "real" / "ham10000"
# One real image per class; ISIC_0024354 and ISIC_0024412 have palette-PNG masks.
IMAGE_IDS = ["ISIC_0024354", "ISIC_0024412", "ISIC_0025599", "ISIC_0026468", "ISIC_0027825",
             "ISIC_0030119", "ISIC_0026789"]


def make_ham_folder(root: Path) -> Path:
    """A HAM10000-layout folder of real files: images, masks and their metadata rows (CRLF)."""
    images = root / "HAM10000_images_part_1"
    masks = root / "HAM10000_segmentations_lesion_tschandl"
    images.mkdir(parents=True)
    masks.mkdir()
    for image_id in IMAGE_IDS:
        shutil.copy(REAL / "images" / f"{image_id}.jpg", images)
        shutil.copy(REAL / "masks" / f"{image_id}_segmentation.png", masks)
    metadata = pd.read_csv(REAL / "HAM10000_metadata.csv")
    metadata[metadata["image_id"].isin(IMAGE_IDS)].to_csv(root / "HAM10000_metadata.csv", index=False,
                                                          lineterminator="\r\n")
    return root


@pytest.fixture
def ham_folder(tmp_path):
    return make_ham_folder(tmp_path / "ham")


def test_cli_names_each_broken_file_and_exits_1(ham_folder, capsys):
    images = ham_folder / "HAM10000_images_part_1"
    masks = ham_folder / "HAM10000_segmentations_lesion_tschandl"
    truncated = images / "ISIC_0025599.jpg"
    truncated.write_bytes(truncated.read_bytes()[:20_000])
    (masks / "ISIC_0026468_segmentation.png").unlink()
    wrong_size = masks / "ISIC_0027825_segmentation.png"
    Image.open(wrong_size).resize((300, 225)).save(wrong_size)
    metadata = ham_folder / "HAM10000_metadata.csv"
    metadata.write_bytes(metadata.read_bytes().replace(b"ISIC_0030119,mel", b"ISIC_0030119,melanoma"))

    code = main([str(ham_folder)])

    out = capsys.readouterr().out
    lines = out.splitlines()
    assert code == 1

    def line_naming(path) -> str:
        named = [line for line in lines if line.startswith(f"{path}: ")]
        assert len(named) == 1, f"expected one line for {path} in:\n{out}"
        return named[0]

    assert "cannot decode image: image file is truncated" in line_naming(truncated)
    assert "missing mask" in line_naming(images / "ISIC_0026468.jpg")
    assert "lesion mask is 300x225 but its image is 600x450" in line_naming(wrong_size)
    assert " (ISIC_0030119): unknown diagnosis 'melanoma'" in line_naming(metadata)
    # The two palette-PNG masks (ISIC_0024354, ISIC_0024412) and the others are fine.
    assert not any("ISIC_0024354" in line or "ISIC_0024412" in line or "ISIC_0026789" in line for line in lines)
    assert "4 errors, 0 warnings" in out


def test_cli_prints_counts_per_class_and_split_and_exits_0_on_clean_folder(ham_folder, capsys):
    assert main([str(ham_folder), "--layout", "ham10000"]) == 0
    out = capsys.readouterr().out
    counts = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
    # columns: test, train, val, total; every class has exactly one image here.
    for diagnosis in ("AKIEC", "BCC", "BKL", "DF", "MEL", "NV", "VASC"):
        assert counts[diagnosis][-1] == "1", out
    assert counts["total"][-1] == "7"
    assert "0 errors, 0 warnings" in out


def test_cli_shows_a_bar_while_decoding_at_a_terminal_and_none_with_quiet(ham_folder, capsys, monkeypatch):
    seen_as_terminal(monkeypatch)
    assert main([str(ham_folder)]) == 0
    captured = capsys.readouterr()
    assert re.search(r"checking: 100%.* 7/7 .*image/s", captured.err), captured.err
    assert "0 errors, 0 warnings" in captured.out and "checking" not in captured.out

    assert main([str(ham_folder), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "0 errors, 0 warnings" in captured.out and "total" in captured.out


def test_no_decode_reports_only_file_level_problems(ham_folder, capsys):
    truncated = ham_folder / "HAM10000_images_part_1" / "ISIC_0025599.jpg"
    truncated.write_bytes(truncated.read_bytes()[:20_000])
    assert main([str(ham_folder), "--no-decode"]) == 0
    assert main([str(ham_folder)]) == 1


def test_cli_reports_an_unreadable_folder_in_one_line_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "derm.data.check", str(tmp_path / "nowhere")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_palette_mask_is_read_as_values_not_palette_indices():
    # HAM10000's palette masks map index 0 to white and 255 to black: reading the
    # indices would invert the mask. The lesion sits in the centre, skin at the corners.
    mask_path = REAL / "masks" / "ISIC_0024354_segmentation.png"
    raw = Image.open(mask_path)
    assert raw.mode == "P" and np.array(raw)[225, 300] == 0 and np.array(raw)[0, 0] == 255  # the trap
    row = {"image_id": "ISIC_0024354", "image_path": str(REAL / "images" / "ISIC_0024354.jpg"),
           "lesion_mask_path": str(mask_path)}
    sample, problems = inspect_sample(row, ["lesion_mask_path"])
    assert problems == []
    mask = sample.masks[..., 0]
    assert mask[225, 300] == 1 and mask[0, 0] == 0
    np.testing.assert_array_equal(mask, np.array(raw) == 0)
    assert sample.image.shape == (450, 600, 3) and sample.original_size == (450, 600)


def test_mask_with_values_other_than_0_and_255_is_a_problem(tmp_path):
    image_path, mask_path = tmp_path / "ISIC_0000001.jpg", tmp_path / "ISIC_0000001_segmentation.png"
    Image.new("RGB", (40, 30), (120, 80, 60)).save(image_path)
    Image.fromarray(np.eye(30, 40, dtype=np.uint8)).save(mask_path)  # a 0/1 mask
    row = {"image_id": "ISIC_0000001", "image_path": str(image_path), "lesion_mask_path": str(mask_path)}
    sample, problems = inspect_sample(row, ["lesion_mask_path"], size=32)
    assert sample is None
    assert problems == [Problem("ISIC_0000001", str(mask_path), "lesion mask must hold only 0 and 255, found 1")]


def test_check_table_does_not_report_a_missing_mask_twice(ham_folder):
    (ham_folder / "HAM10000_segmentations_lesion_tschandl" / "ISIC_0026468_segmentation.png").unlink()
    problems = check_table(load_table(ham_folder))
    assert [(p.image_id, p.problem) for p in problems] == [("ISIC_0026468", "missing mask")]


def bad_table(n_rows: int, n_bad: int) -> tuple[pd.DataFrame, list[Problem]]:
    ids = [f"ISIC_{i:07d}" for i in range(n_rows)]
    table = pd.DataFrame({"image_id": ids, "image_path": [f"/d/{i}.jpg" for i in ids]})
    table.attrs["layout"] = "ham10000"
    problems = [Problem(i, f"/d/{i}.jpg", "cannot decode image: truncated") for i in ids[:n_bad]]
    problems.append(Problem(ids[-1], f"/d/{ids[-1]}_segmentation.png", "mask without image", "warning"))
    return table, problems


def test_drop_bad_rows_removes_error_rows_and_logs_each(caplog):
    table, problems = bad_table(50, 2)
    with caplog.at_level(logging.WARNING, logger="derm.data.check"):
        kept = drop_bad_rows(table, problems, max_bad_fraction=0.05)
    assert list(kept["image_id"]) == [f"ISIC_{i:07d}" for i in range(2, 50)]  # the warning row stays
    assert kept.attrs["layout"] == "ham10000"
    assert [r.getMessage() for r in caplog.records] == [
        "skipping /d/ISIC_0000000.jpg: cannot decode image: truncated",
        "skipping /d/ISIC_0000001.jpg: cannot decode image: truncated",
    ]


def test_drop_bad_rows_refuses_when_too_many_are_bad():
    table, problems = bad_table(100, 25)
    with pytest.raises(DataError) as raised:
        drop_bad_rows(table, problems, max_bad_fraction=0.2)
    message = str(raised.value)
    assert message.startswith("25 of 100 images (25.0%) have problems, more than data.max_bad_fraction=0.2")
    assert "/d/ISIC_0000019.jpg: cannot decode" in message and "/d/ISIC_0000020.jpg" not in message
    assert message.endswith("and 5 more") and "\n" not in message


def test_images_missing_from_the_table_count_as_bad():
    # load_table leaves out a metadata row without its image; it is still one bad image of 3.
    table, _ = bad_table(2, 0)
    problems = [Problem("ISIC_0000009", "/d/HAM10000_metadata.csv", "row for ISIC_0000009 has no image file")]
    assert len(drop_bad_rows(table, problems, max_bad_fraction=0.34)) == 2
    with pytest.raises(DataError, match="1 of 3 images"):
        drop_bad_rows(table, problems, max_bad_fraction=0.3)


def test_task3_images_without_masks_are_not_problems(tmp_path):
    # ISIC 2018 Task 3 images never have lesion masks; only Task 1-2 images do.
    root = tmp_path / "isic2018"
    for folder in ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth",
                   "ISIC2018_Task3_Training_Input"):
        (root / folder).mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000000.jpg")
    Image.new("L", (40, 30)).save(root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png")
    Image.new("RGB", (40, 30)).save(root / "ISIC2018_Task3_Training_Input" / "ISIC_0024306.jpg")
    (root / "ISIC2018_Task3_Training_GroundTruth.csv").write_text(
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0\n")
    with pytest.warns(UserWarning, match="no lesion ids"):
        table = load_table(root, layout="isic2018-task1-3")
    assert table["lesion_mask_path"].isna().sum() == 1
    assert check_table(table) == []


# 0..65535 in 1200 steps: every 16-bit pixel above 255 used to come out white.
GRADIENT_16 = np.linspace(0, 65535, 30 * 40).round().astype(np.uint16).reshape(30, 40)


def save_16_bit(path: Path, mode: str) -> Path:
    """GRADIENT_16 as a grayscale PNG (I;16) or TIFF (big-endian I;16B, 32-bit I)."""
    if mode == "I;16B":
        Image.frombytes("I;16B", (40, 30), GRADIENT_16.astype(">u2").tobytes()).save(path)
    else:
        Image.fromarray(GRADIENT_16 if mode == "I;16" else GRADIENT_16.astype(np.int32)).save(path)
    assert Image.open(path).mode == mode
    return path


@pytest.mark.parametrize("name, mode", [("g.png", "I;16"), ("g.tif", "I;16B"), ("g.tif", "I")])
def test_16_bit_grayscale_is_rescaled_to_8_bits_not_saturated(tmp_path, name, mode):
    path = save_16_bit(tmp_path / name, mode)
    expected = np.floor(GRADIENT_16 / 257 + 0.5).astype(int)  # 65535 -> 255, 128 -> 0, 129 -> 1

    image, original_size = decode_image(str(path), None)
    assert image.dtype == np.uint8 and image.shape == (30, 40, 3) and original_size == (30, 40)
    assert (image < 255).mean() > 0.99
    for channel in range(3):
        assert np.abs(image[..., channel].astype(int) - expected).max() <= 1

    resized, original_size = decode_image(str(path), 16)
    assert resized.shape == (16, 16, 3) and original_size == (30, 40)
    reference = np.asarray(Image.fromarray(expected.astype(np.uint8)).resize((16, 16), Image.Resampling.BILINEAR))
    assert np.abs(resized[..., 0].astype(int) - reference).max() <= 1
    assert resized[0, 0, 0] < 20 and resized[-1, -1, 0] > 235  # the gradient survives resizing


def test_32_bit_image_beyond_16_bits_is_a_decode_problem(tmp_path):
    path = tmp_path / "ISIC_0000001.tif"
    Image.fromarray(GRADIENT_16.astype(np.int32) * 4).save(path)
    sample, problems = inspect_sample({"image_id": "ISIC_0000001", "image_path": str(path)}, [], size=16)
    assert sample is None
    assert problems == [Problem("ISIC_0000001", str(path), "cannot decode image: pixel values 0..262140 do not fit "
                                "16 bits (PIL mode I); save the image with 8 or 16 bits per channel")]
