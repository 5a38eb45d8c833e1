"""The real dataset layouts, built in a folder from the real files in tests/data/real.

One builder per published layout (HAM10000 on the Harvard Dataverse, its Kaggle copy, ISIC
2018 Tasks 1-3 and Task 2), linking the real images and masks and copying the real CSVs'
rows for them with their own line endings; the test modules that need a real layout
import these.
"""

import os
import shutil
from pathlib import Path

from PIL import Image

from derm.labels import ATTRIBUTES

REAL = Path(__file__).parent / "data" / "real"
HAM = REAL / "ham10000"
ISIC = REAL / "isic2018"

# The 14 real HAM10000 images in tests/data/real, with their lesion and
# diagnosis as HAM10000_metadata.csv gives them (2 per class).
HAM_TRUTH = {
    "ISIC_0024354": ("HAM_0004117", "NV"), "ISIC_0024412": ("HAM_0003835", "BKL"),
    "ISIC_0025599": ("HAM_0004765", "VASC"), "ISIC_0026468": ("HAM_0001023", "AKIEC"),
    "ISIC_0026789": ("HAM_0003110", "DF"), "ISIC_0026828": ("HAM_0000840", "NV"),
    "ISIC_0027825": ("HAM_0005268", "BCC"), "ISIC_0028232": ("HAM_0003123", "AKIEC"),
    "ISIC_0028995": ("HAM_0006945", "BKL"), "ISIC_0030021": ("HAM_0001164", "DF"),
    "ISIC_0030119": ("HAM_0005557", "MEL"), "ISIC_0030606": ("HAM_0002610", "VASC"),
    "ISIC_0031378": ("HAM_0002998", "BCC"), "ISIC_0031386": ("HAM_0000417", "MEL"),
}
HAM_IDS = sorted(HAM_TRUTH)
ISIC_IDS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000006", "ISIC_0000007", "ISIC_0000008", "ISIC_0000009"]


def link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, target)


def write_csv_subset(source: Path, target: Path, ids, id_column: str, with_jpg: bool = False) -> None:
    """Copy the header and the rows of `ids` of a real CSV, keeping its line endings."""
    raw = source.read_bytes()
    newline = b"\r\n" if b"\r\n" in raw else b"\n"
    lines = raw.split(newline)
    column = lines[0].decode().split(",").index(id_column)
    kept = [lines[0]]
    for line in lines[1:]:
        fields = line.decode().split(",")
        if len(fields) > column and fields[column] in ids:
            if with_jpg:
                fields[column] += ".jpg"
            kept.append(",".join(fields).encode())
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(newline.join(kept) + newline)


def build_ham10000(root: Path, folders: str = "images", metadata: str = "HAM10000_metadata.csv",
                   with_jpg: bool = False, full_metadata: bool = False) -> Path:
    """The Harvard Dataverse layout: images/ or part_1 + part_2, metadata, tschandl masks."""
    for index, image_id in enumerate(HAM_IDS):
        folder = "images" if folders == "images" else f"HAM10000_images_part_{1 + index % 2}"
        link(HAM / "images" / f"{image_id}.jpg", root / folder / f"{image_id}.jpg")
        link(HAM / "masks" / f"{image_id}_segmentation.png",
             root / "HAM10000_segmentations_lesion_tschandl" / f"{image_id}_segmentation.png")
    if full_metadata:
        shutil.copy(HAM / metadata, root / "HAM10000_metadata.csv")
    else:
        write_csv_subset(HAM / metadata, root / "HAM10000_metadata.csv", HAM_IDS, "image_id", with_jpg)
    return root


def build_kaggle(root: Path, labels: str = "GroundTruth.csv") -> Path:
    """The Kaggle layout: images/, masks/ and GroundTruth.csv (one-hot) or metadata.csv (dx)."""
    for image_id in HAM_IDS:
        link(HAM / "images" / f"{image_id}.jpg", root / "images" / f"{image_id}.jpg")
        link(HAM / "masks" / f"{image_id}_segmentation.png", root / "masks" / f"{image_id}_segmentation.png")
    if labels == "GroundTruth.csv":
        write_csv_subset(HAM / "ISIC2018_Task3_Training_GroundTruth.csv", root / labels, HAM_IDS, "image")
    else:
        write_csv_subset(HAM / "HAM10000_metadata.csv", root / labels, HAM_IDS, "image_id")
    return root


def build_isic2018_task1_3(root: Path, task3_ids=HAM_IDS[:3]) -> Path:
    """Tasks 1-2 input with Task 1 masks (the six ISIC images), Task 3 input with a small Task 3 CSV."""
    for image_id in ISIC_IDS:
        link(ISIC / "images" / f"{image_id}.jpg", root / "ISIC2018_Task1-2_Training_Input" / f"{image_id}.jpg")
        link(ISIC / "task1_masks" / f"{image_id}_segmentation.png",
             root / "ISIC2018_Task1_Training_GroundTruth" / f"{image_id}_segmentation.png")
    for image_id in task3_ids:
        link(HAM / "images" / f"{image_id}.jpg", root / "ISIC2018_Task3_Training_Input" / f"{image_id}.jpg")
    write_csv_subset(HAM / "ISIC2018_Task3_Training_GroundTruth.csv",
                     root / "ISIC2018_Task3_Training_GroundTruth.csv", task3_ids, "image")
    return root


def build_isic2018_task2(root: Path) -> Path:
    """Task 2: the real pigment-network masks, the other four attributes as empty masks."""
    truth = root / "ISIC2018_Task2_Training_GroundTruth_v3"
    for image_id in ISIC_IDS:
        link(ISIC / "images" / f"{image_id}.jpg", root / "ISIC2018_Task1-2_Training_Input" / f"{image_id}.jpg")
        link(ISIC / "task2_masks" / f"{image_id}_attribute_pigment_network.png",
             truth / f"{image_id}_attribute_pigment_network.png")
        size = Image.open(ISIC / "images" / f"{image_id}.jpg").size
        for name in ATTRIBUTES[1:]:
            Image.new("L", size, 0).save(truth / f"{image_id}_attribute_{name}.png")
    return root
