"""derm.data.formats on the four real layouts, built in tmp_path from the real files in tests/data/real."""

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from layouts import (
    HAM, HAM_IDS, HAM_TRUTH, ISIC, ISIC_IDS, build_ham10000, build_isic2018_task1_3, build_isic2018_task2,
    build_kaggle, link,
)
from PIL import Image

from derm.data.formats import COLUMNS, LAYOUTS, LesionIdsMissingWarning, detect_layout, load_table
from derm.data.problems import Problem
from derm.errors import ConfigError, DataError
from derm.labels import ATTRIBUTES


def load_quietly(root, layout="auto") -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LesionIdsMissingWarning)
        return load_table(root, layout)


def problem_texts(table) -> list[tuple]:
    return sorted((p.image_id, p.problem, p.severity) for p in table.attrs["problems"])


# --- the four layouts from real files ---------------------------------------

def test_ham10000_layout_gives_the_table_contract(tmp_path):
    root = build_ham10000(tmp_path / "ham")
    table = load_table(root)
    assert detect_layout(root) == "ham10000"
    assert list(table.columns) == list(COLUMNS)
    assert table["image_id"].tolist() == HAM_IDS
    assert dict(zip(table["image_id"], zip(table["lesion_id"], table["diagnosis"]))) == HAM_TRUTH
    assert table.attrs == {"layout": "ham10000", "root": str(root), "has_lesion_ids": True, "problems": []}
    for row in table.itertuples():
        assert os.path.isabs(row.image_path) and Path(row.image_path).name == f"{row.image_id}.jpg"
        assert Path(row.lesion_mask_path) == root / "HAM10000_segmentations_lesion_tschandl" / f"{row.image_id}_segmentation.png"
        assert all(getattr(row, f"attribute_{name}_path") is None for name in ATTRIBUTES)


@pytest.mark.parametrize("folders, metadata, with_jpg", [
    ("parts", "HAM10000_metadata.csv", False),
    ("images", "HAM10000_metadata_with_dataset_column.csv", False),
    ("parts", "HAM10000_metadata_with_dataset_column.csv", True),
    ("images", "HAM10000_metadata.csv", True),
])
def test_ham10000_variants_give_the_same_table(tmp_path, folders, metadata, with_jpg):
    reference = load_table(build_ham10000(tmp_path / "reference"))
    table = load_table(build_ham10000(tmp_path / "variant", folders, metadata, with_jpg))
    assert table.attrs["problems"] == []
    assert table.drop(columns=["image_path", "lesion_mask_path"]).equals(
        reference.drop(columns=["image_path", "lesion_mask_path"]))
    if folders == "parts":
        assert {Path(path).parent.name for path in table["image_path"]} == {
            "HAM10000_images_part_1", "HAM10000_images_part_2"}


def test_full_real_metadata_reports_rows_without_images(tmp_path):
    table = load_table(build_ham10000(tmp_path / "ham", full_metadata=True))
    assert table["image_id"].tolist() == HAM_IDS
    problems = table.attrs["problems"]
    assert len(problems) == 10_015 - 14
    assert all(p.severity == "error" and p.problem == f"row for {p.image_id} has no image file" for p in problems)
    assert {p.image_id for p in problems}.isdisjoint(HAM_IDS)


def test_kaggle_layout_with_one_hot_ground_truth(tmp_path):
    root = build_kaggle(tmp_path / "kaggle", "GroundTruth.csv")
    with pytest.warns(LesionIdsMissingWarning, match="image level"):
        table = load_table(root)
    assert table.attrs["layout"] == "ham10000-kaggle" and table.attrs["has_lesion_ids"] is False
    assert table["image_id"].tolist() == HAM_IDS
    assert table["diagnosis"].tolist() == [HAM_TRUTH[image_id][1] for image_id in HAM_IDS]
    assert table["lesion_id"].tolist() == HAM_IDS
    assert all(Path(path).parent.name == "masks" for path in table["lesion_mask_path"])
    assert table.attrs["problems"] == []


def test_kaggle_layout_with_dx_metadata_keeps_its_lesion_ids(tmp_path):
    table = load_table(build_kaggle(tmp_path / "kaggle", "metadata.csv"))
    assert table.attrs["has_lesion_ids"] is True
    assert dict(zip(table["image_id"], zip(table["lesion_id"], table["diagnosis"]))) == HAM_TRUTH


def test_kaggle_metadata_without_lesion_ids(tmp_path):
    root = build_kaggle(tmp_path / "kaggle", "metadata.csv")
    metadata = pd.read_csv(root / "metadata.csv")[["image_id", "dx"]]
    metadata.to_csv(root / "metadata.csv", index=False)
    with pytest.warns(LesionIdsMissingWarning):
        table = load_table(root)
    assert table["lesion_id"].tolist() == table["image_id"].tolist()
    assert table["diagnosis"].tolist() == [HAM_TRUTH[image_id][1] for image_id in HAM_IDS]


def test_isic2018_task1_3_joins_segmentation_and_classification_images(tmp_path):
    root = build_isic2018_task1_3(tmp_path / "isic")
    table = load_quietly(root)
    assert table.attrs["layout"] == "isic2018-task1-3" and table.attrs["problems"] == []
    assert table["image_id"].tolist() == ISIC_IDS + HAM_IDS[:3]
    by_id = table.set_index("image_id")
    for image_id in ISIC_IDS:
        assert Path(by_id.at[image_id, "lesion_mask_path"]).name == f"{image_id}_segmentation.png"
        assert by_id.at[image_id, "diagnosis"] is None
    for image_id in HAM_IDS[:3]:
        assert by_id.at[image_id, "lesion_mask_path"] is None
        assert by_id.at[image_id, "diagnosis"] == HAM_TRUTH[image_id][1]
        assert Path(by_id.at[image_id, "image_path"]).parent.name == "ISIC2018_Task3_Training_Input"


def test_isic2018_task2_reads_the_five_attribute_masks(tmp_path):
    root = build_isic2018_task2(tmp_path / "isic")
    table = load_quietly(root)
    assert table.attrs["layout"] == "isic2018-task2" and table.attrs["problems"] == []
    assert table["image_id"].tolist() == ISIC_IDS
    assert table["diagnosis"].isna().all() and table["lesion_mask_path"].isna().all()
    for row in table.to_dict("records"):
        for name in ATTRIBUTES:
            assert Path(row[f"attribute_{name}_path"]).name == f"{row['image_id']}_attribute_{name}.png"
    pigment = np.array(Image.open(table.at[0, "attribute_pigment_network_path"]))
    assert set(np.unique(pigment)) == {0, 255}


def test_the_two_palette_masks_are_among_the_real_copies():
    for image_id in ("ISIC_0024354", "ISIC_0024412"):
        mask = Image.open(HAM / "masks" / f"{image_id}_segmentation.png")
        assert mask.mode == "P"
        assert set(np.unique(np.array(mask.convert("L")))) == {0, 255}


# --- folders that are not what they should be -------------------------------

def test_folder_matching_no_layout_lists_what_is_expected_and_found(tmp_path):
    (tmp_path / "foo.csv").write_text("a,b\n")
    (tmp_path / "bar").mkdir()
    with pytest.raises(DataError) as raised:
        load_table(tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path} matches no known layout; expected one of: ")
    assert all(f"{layout} (" in message for layout in LAYOUTS)
    assert "HAM10000_metadata.csv + images/" in message
    assert message.endswith("found: bar/, foo.csv")


def test_missing_root_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"dataset folder {tmp_path / 'nowhere'} does not exist"):
        load_table(tmp_path / "nowhere")


def test_explicit_layout_names_the_missing_file(tmp_path):
    root = build_ham10000(tmp_path / "ham")
    (root / "HAM10000_metadata.csv").unlink()
    with pytest.raises(DataError, match="is not a ham10000 folder: missing HAM10000_metadata.csv"):
        load_table(root, layout="ham10000")
    with pytest.raises(DataError, match="unknown dataset layout 'ham'; allowed: auto, ham10000"):
        load_table(root, layout="ham")


def test_task2_folder_with_task1_masks_is_task2_with_lesion_masks(tmp_path):
    root = build_isic2018_task2(tmp_path / "isic")
    for image_id in ISIC_IDS:
        link(ISIC / "task1_masks" / f"{image_id}_segmentation.png",
             root / "ISIC2018_Task1_Training_GroundTruth" / f"{image_id}_segmentation.png")
    assert detect_layout(root) == "isic2018-task2"
    table = load_quietly(root)
    assert [Path(path).name for path in table["lesion_mask_path"]] == [f"{i}_segmentation.png" for i in ISIC_IDS]
    assert table["attribute_globules_path"].notna().all() and table.attrs["problems"] == []
    assert load_quietly(root, "isic2018-task1-3")["attribute_globules_path"].isna().all()


def test_ambiguous_folder_asks_for_the_layout(tmp_path):
    root = build_isic2018_task1_3(tmp_path / "isic")
    link(ISIC / "task2_masks" / f"{ISIC_IDS[0]}_attribute_pigment_network.png",
         root / "ISIC2018_Task2_Training_GroundTruth_v3" / f"{ISIC_IDS[0]}_attribute_pigment_network.png")
    with pytest.raises(DataError, match=r"matches several layouts \(isic2018-task1-3, isic2018-task2\); "
                                        r"name the one to use explicitly"):
        load_table(root)
    assert load_quietly(root, "isic2018-task1-3")["diagnosis"].notna().sum() == 3


def test_missing_label_file_column_is_named(tmp_path):
    root = build_kaggle(tmp_path / "kaggle", "GroundTruth.csv")
    pd.read_csv(root / "GroundTruth.csv").drop(columns=["VASC"]).to_csv(root / "GroundTruth.csv", index=False)
    with pytest.raises(DataError, match="GroundTruth.csv lacks the expected columns: needs image,MEL,NV"):
        load_quietly(root)


# --- file-level problems ------------------------------------------------------

def test_ham10000_file_level_problems_are_reported_not_dropped(tmp_path):
    root = build_ham10000(tmp_path / "ham")
    removed_image, removed_mask, relabelled = HAM_IDS[0], HAM_IDS[1], HAM_IDS[3]  # HAM_IDS[3] is akiec
    (root / "images" / f"{removed_image}.jpg").unlink()
    (root / "HAM10000_segmentations_lesion_tschandl" / f"{removed_mask}_segmentation.png").unlink()
    link(HAM / "images" / f"{HAM_IDS[5]}.jpg", root / "images" / "ISIC_9999999.jpg")
    link(HAM / "masks" / f"{HAM_IDS[5]}_segmentation.png",
         root / "HAM10000_segmentations_lesion_tschandl" / "ISIC_8888888_segmentation.png")
    metadata = root / "HAM10000_metadata.csv"
    lines = metadata.read_bytes().split(b"\r\n")
    lines = [line.replace(b",akiec,", b",melanoma,") if relabelled.encode() in line else line for line in lines]
    relabelled_line = 1 + next(index for index, line in enumerate(lines) if relabelled.encode() in line)
    duplicate = next(line for line in lines if HAM_IDS[4].encode() in line)
    metadata.write_bytes(b"\r\n".join(lines[:-1] + [duplicate, b""]))

    table = load_table(root)
    assert table["image_id"].tolist() == HAM_IDS[1:]
    by_id = table.set_index("image_id")
    assert by_id.at[removed_mask, "lesion_mask_path"] is None
    assert by_id.at[relabelled, "diagnosis"] is None
    assert problem_texts(table) == sorted([
        (removed_image, f"row for {removed_image} has no image file", "error"),
        (removed_image, "mask without image", "warning"),
        (removed_mask, "missing mask", "error"),
        ("ISIC_9999999", "image has no row in HAM10000_metadata.csv", "error"),
        ("ISIC_8888888", "mask without image", "warning"),
        (relabelled, f"line {relabelled_line} ({relabelled}): unknown diagnosis 'melanoma' "
                     f"(allowed: mel, nv, bcc, akiec, bkl, df, vasc)", "error"),
        (HAM_IDS[4], f"line 16 ({HAM_IDS[4]}): duplicate row (the first row is used)", "error"),
    ])
    paths = {p.image_id: p.path for p in table.attrs["problems"] if p.severity == "error"}
    assert paths[removed_image] == str(metadata)
    assert paths[removed_mask] == str(root / "images" / f"{removed_mask}.jpg")
    assert str(Problem(removed_mask, paths[removed_mask], "missing mask")) == f"{paths[removed_mask]}: missing mask"


def test_one_hot_rows_without_exactly_one_class_are_errors(tmp_path):
    root = build_kaggle(tmp_path / "kaggle", "GroundTruth.csv")
    truth = pd.read_csv(root / "GroundTruth.csv")
    truth.loc[0, "MEL"] = 1.0   # row 0 (ISIC_0024354) is NV: now MEL and NV
    truth.loc[1, "BKL"] = 0.0   # row 1 (ISIC_0024412) is BKL: now no class
    truth.loc[2, "VASC"] = 0.5  # row 2 (ISIC_0025599) is VASC: not one-hot
    truth.to_csv(root / "GroundTruth.csv", index=False)
    table = load_quietly(root)
    by_id = table.set_index("image_id")["diagnosis"]
    assert by_id[HAM_IDS[:3]].isna().all() and by_id[HAM_IDS[3:]].notna().all()
    assert problem_texts(table) == [
        ("ISIC_0024354", "line 2 (ISIC_0024354): one-hot row has 2 ones (MEL, NV); expected exactly one", "error"),
        ("ISIC_0024412", "line 3 (ISIC_0024412): one-hot row has 0 ones (no class); expected exactly one", "error"),
        ("ISIC_0025599", "line 4 (ISIC_0025599): one-hot values must be 0 or 1, got 0.0, 0.0, 0.0, 0.0, 0.0, "
                         "0.0, 0.5", "error"),
    ]
    assert all(str(p).startswith(f"{root / 'GroundTruth.csv'}: line ") and p.image_id in str(p)
               for p in table.attrs["problems"])


def test_printed_label_file_problems_name_the_image_not_only_the_line(tmp_path):
    # A problem prints as `path: problem`, and for a label row the path is the CSV:
    # without the image id the user would have to count lines to find the image.
    root = build_kaggle(tmp_path / "kaggle", "metadata.csv")
    metadata = pd.read_csv(root / "metadata.csv", dtype=str)
    unknown, unlinked = metadata.at[2, "image_id"], metadata.at[5, "image_id"]
    metadata.loc[2, "dx"] = "xyz"
    metadata.loc[5, "lesion_id"] = ""
    metadata.to_csv(root / "metadata.csv", index=False)
    printed = sorted(str(p) for p in load_table(root).attrs["problems"])
    csv = root / "metadata.csv"
    assert printed == sorted([
        f"{csv}: line 4 ({unknown}): unknown diagnosis 'xyz' (allowed: mel, nv, bcc, akiec, bkl, df, vasc)",
        f"{csv}: line 7 ({unlinked}): no lesion_id; the image is treated as a lesion of its own",
    ])


def test_task2_missing_attribute_mask_and_unknown_attribute(tmp_path):
    root = build_isic2018_task2(tmp_path / "isic")
    truth = root / "ISIC2018_Task2_Training_GroundTruth_v3"
    (truth / f"{ISIC_IDS[0]}_attribute_streaks.png").unlink()
    Image.new("L", (4, 4)).save(truth / f"{ISIC_IDS[1]}_attribute_dots.png")
    table = load_quietly(root)
    assert table.at[0, "attribute_streaks_path"] is None and len(table) == 6
    assert problem_texts(table) == [
        (ISIC_IDS[0], "missing attribute mask streaks", "error"),
        (ISIC_IDS[1], "unknown attribute 'dots' (allowed: pigment_network, negative_network, streaks, "
                      "milia_like_cyst, globules)", "warning"),
    ]


def test_task3_image_without_label_row_is_reported(tmp_path):
    root = build_isic2018_task1_3(tmp_path / "isic", task3_ids=HAM_IDS[:2])
    link(HAM / "images" / f"{HAM_IDS[5]}.jpg", root / "ISIC2018_Task3_Training_Input" / f"{HAM_IDS[5]}.jpg")
    table = load_quietly(root)
    assert HAM_IDS[5] not in set(table["image_id"])
    assert problem_texts(table) == [
        (HAM_IDS[5], "image has no row in ISIC2018_Task3_Training_GroundTruth.csv", "error")]
