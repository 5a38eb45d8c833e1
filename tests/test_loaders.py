"""derm.data.loaders: the one way runs build their data; bad files skipped per dataset, not per split."""

import math
import shutil

import pytest
from layouts import HAM_IDS, build_isic2018_task1_3

from derm.config import config_from_dict
from derm.data.formats import load_table
from derm.data.loaders import prepare_data
from derm.data.splits import make_split
from derm.errors import DataError
from derm.fit_callbacks import LogOnly
from derm.training import fit

# ISIC 2018 folders have no lesion ids; derm says so once per load, which is not under test here.
pytestmark = pytest.mark.filterwarnings("ignore::derm.data.formats.LesionIdsMissingWarning")


def config(root, task="multitask", **data):
    return config_from_dict({
        "task": task,
        "data": {"root": str(root), "image_size": 32, "augment": "none", "num_workers": 0, **data},
        "model": {"encoder": "resnet18", "encoder_weights": None},
        "optim": {"lr": 1e-3, "scheduler": "none"},
        "train": {"epochs": 1, "batch_size": 8},
        "mlflow": {"enabled": False},
    })


def test_one_bad_validation_image_is_skipped_when_the_dataset_is_within_its_bad_fraction(ham_demo, tmp_path):
    # 1 bad image of 100 is 1% of the dataset but 1 of the ~15 validation images (7%):
    # the limit is the dataset's, so 5% lets the run go on without that image.
    root = tmp_path / "HAM10000"
    shutil.copytree(ham_demo, root)
    table = load_table(root)
    split = make_split(table)
    bad = sorted(split[split == "val"].index)[0]
    path = table.set_index("image_id").at[bad, "image_path"]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    said = []
    prepared = prepare_data(config(root, max_bad_fraction=0.05), log=said.append)
    val_ids = set(prepared.tables["val"]["image_id"])
    assert bad not in val_ids and len(val_ids) == (split == "val").sum() - 1
    assert any(line.startswith(f"skipping {path}: cannot decode image") for line in said), said
    with pytest.raises(DataError, match="1 of 100 images"):
        prepare_data(config(root, max_bad_fraction=0.005), log=said.append)


def test_a_split_made_before_a_file_broke_still_applies(ham_demo, tmp_path):
    # The sweep's split names every image; a mask that goes missing drops its image from its part.
    root = tmp_path / "HAM10000"
    shutil.copytree(ham_demo, root)
    split = make_split(load_table(root))
    mask = sorted((root / "HAM10000_segmentations_lesion_tschandl").iterdir())[0]
    mask.unlink()
    prepared = prepare_data(config(root, max_bad_fraction=0.05), split=split, log=lambda line: None)
    image_id = mask.name.removesuffix("_segmentation.png")
    part = split[image_id]
    assert part in ("train", "val", "test")
    for name, rows in prepared.tables.items():
        assert image_id not in set(rows["image_id"])


def test_multitask_on_the_isic2018_task1_3_layout_trains_each_head_on_the_images_with_its_target(tmp_path):
    # Task 1-2 images have a lesion mask and no diagnosis; Task 3 images the reverse.
    root = build_isic2018_task1_3(tmp_path / "ISIC2018", task3_ids=HAM_IDS)
    said = []
    cfg = config(root, val_fraction=0.3, test_fraction=0.1)
    result = fit(cfg, tmp_path / "run", callbacks=LogOnly(said.append))
    assert any(line == "multitask: of 20 images, 6 have a lesion mask (segmentation loss and Dice) "
               "and 14 a diagnosis (classification loss and accuracy)" for line in said), said
    metrics = result.last_metrics
    assert 0.0 <= metrics["dice"] <= 1.0 and 0.0 <= metrics["balanced_accuracy"] <= 1.0
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])


def test_segmentation_on_the_isic2018_task1_3_layout_uses_only_the_images_with_masks(tmp_path):
    root = build_isic2018_task1_3(tmp_path / "ISIC2018", task3_ids=HAM_IDS)
    said = []
    prepared = prepare_data(config(root, task="segmentation", val_fraction=0.3, test_fraction=0.1),
                            log=said.append)
    used = set().union(*(set(rows["image_id"]) for rows in prepared.tables.values()))
    assert used and not used & set(HAM_IDS)
    assert "task segmentation: 14 of 20 images have no masks and are not used" in said
