"""Score ISIC 2018 submission files against the ground truth, as the challenge did.

``score_task1(truth_dir, pred_dir)`` (lesion masks), ``score_task2(truth_dir, pred_dir)``
(attribute masks) and ``score_task3(truth_csv, pred_csv)`` (diagnosis probabilities) give
the metrics of ``derm.metrics`` (names as there). The scores are those of the official
``isic-challenge-scoring`` 5.6 package (Task 1: ``isic_task1_jaccard``; Task 2:
``jaccard_micro``; Task 3: ``balanced_accuracy``). ``python -m derm.evaluate`` is the command.

Masks: truth and prediction files are matched by the ``ISIC_\\d{7}`` id in the name
(and, for Task 2, ``attribute_<name>``); both must be single-channel (mode L or 1)
and of equal size, and are binarised at > 128. Task 2 truth needs all five attribute
masks of each image. Prediction files that match no truth file are ignored.

The mask scorers draw a progress bar (`derm.progress`) while they read the files.

CSVs: columns ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``; the truth is one-hot, the
prediction holds probabilities in [0, 1] for exactly the truth's images (``.jpg``
suffixes on ids are dropped). Unlike the official scorer, truth CSVs with
``score_weight``/``validation_weight`` columns are not supported: every image counts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from derm.errors import DataError
from derm.labels import ATTRIBUTES, CLASSES
from derm.metrics import AttributeAccumulator, ClassificationAccumulator, SegmentationAccumulator
from derm.progress import progress

ISIC_ID = re.compile(r"ISIC_\d{7}")
MASK_SUFFIXES = {".png", ".gif", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"}
# The official scorer binarises 8-bit masks with "> 128".
MASK_THRESHOLD = 128


def read_mask(path: Path) -> np.ndarray:
    """A single-channel mask file as a uint8 (H, W) array; 1-bit images become 0/255."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "1":
                image = image.convert("L")
            if image.mode != "L":
                raise DataError(f"{path}: mask has image mode {image.mode}, expected a single-channel "
                                f"8-bit (mode L) or 1-bit mask")
            return np.asarray(image)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{path}: cannot be read as an image ({error})") from None


def _attribute_of(path: Path) -> str | None:
    found = [name for name in ATTRIBUTES if f"attribute_{name}" in path.stem]
    return found[0] if len(found) == 1 else None


def _mask_key(path: Path, with_attribute: bool) -> str | tuple[str, str] | None:
    match = ISIC_ID.search(path.stem)
    if match is None:
        return None
    if not with_attribute:
        return match.group(0)
    attribute = _attribute_of(path)
    return None if attribute is None else (match.group(0), attribute)


def index_masks(folder, role: str, with_attribute: bool = False) -> dict:
    """Mask files of ``folder`` by ISIC id (or (id, attribute)), in sorted name order.

    ``role`` ("truth" or "prediction") words the errors. A truth file whose name has
    no id (or no known attribute) is an error; such prediction files are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{role} folder {folder} does not exist or is not a folder")
    masks: dict = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in MASK_SUFFIXES or path.name.startswith("."):
            continue
        key = _mask_key(path, with_attribute)
        if key is None:
            if role == "truth":
                wanted = "an ISIC_nnnnnnn id" + (
                    f" and attribute_<name> with name one of {', '.join(ATTRIBUTES)}" if with_attribute else "")
                raise DataError(f"truth file {path} does not name {wanted}")
            continue
        if key in masks:
            raise DataError(f"{role} folder {folder} has two files for {key_text(key)}: "
                            f"{masks[key].name} and {path.name}")
        masks[key] = path
    if role == "truth" and not masks:
        raise DataError(f"truth folder {folder} holds no mask images")
    return masks


def key_text(key) -> str:
    return key if isinstance(key, str) else f"{key[0]} attribute_{key[1]}"


def read_mask_pair(truth_path: Path, predictions: dict, key) -> tuple[np.ndarray, np.ndarray]:
    """Binarised (truth, prediction) masks for ``key``; the prediction must exist and match in size."""
    if key not in predictions:
        raise DataError(f"no prediction for {key_text(key)} (truth file {truth_path.name})")
    truth, pred = read_mask(truth_path), read_mask(predictions[key])
    if pred.shape != truth.shape:
        raise DataError(f"{predictions[key]}: mask is {pred.shape[1]}x{pred.shape[0]} (WxH), "
                        f"expected {truth.shape[1]}x{truth.shape[0]} like {truth_path.name}")
    return truth > MASK_THRESHOLD, pred > MASK_THRESHOLD


def score_task1(truth_dir, pred_dir) -> dict[str, float]:
    """ISIC 2018 Task 1 metrics of a prediction folder against a truth folder.

    ``isic_task1_jaccard`` is the challenge score; also dice, iou, dice_per_image,
    iou_per_image.
    """
    truths = index_masks(truth_dir, "truth")
    predictions = index_masks(pred_dir, "prediction")
    accumulator = SegmentationAccumulator()
    # A bar closed by `with` ends its line, so an error about a file starts on a line of its own.
    with progress(truths.items(), total=len(truths), desc="scoring", unit="mask") as pairs:
        for key, truth_path in pairs:
            truth, pred = read_mask_pair(truth_path, predictions, key)
            accumulator.update(pred[None], truth[None])
    return accumulator.compute()


def score_task2(truth_dir, pred_dir) -> dict[str, float]:
    """ISIC 2018 Task 2 metrics: jaccard_/dice_<attribute>, jaccard_micro (the score), dice_micro."""
    truths = index_masks(truth_dir, "truth", with_attribute=True)
    predictions = index_masks(pred_dir, "prediction", with_attribute=True)
    accumulator = AttributeAccumulator()
    with progress(sorted({image_id for image_id, _ in truths}), desc="scoring", unit="image") as image_ids:
        for image_id in image_ids:
            missing = [name for name in ATTRIBUTES if (image_id, name) not in truths]
            if missing:
                raise DataError(f"truth folder {truth_dir} has no attribute_{missing[0]} mask for {image_id}; "
                                f"Task 2 truth needs all of {', '.join(ATTRIBUTES)}")
            pairs = [read_mask_pair(truths[(image_id, name)], predictions, (image_id, name)) for name in ATTRIBUTES]
            shapes = {truth.shape for truth, _ in pairs}
            if len(shapes) > 1:
                raise DataError(f"truth folder {truth_dir}: the attribute masks of {image_id} differ in size "
                                f"{sorted(shapes)}")
            truth = np.stack([t for t, _ in pairs])[None]
            pred = np.stack([p for _, p in pairs])[None]
            accumulator.update(pred, truth)
    return accumulator.compute()


def _read_csv(path, role: str) -> pd.DataFrame:
    path = Path(path)
    try:
        table = pd.read_csv(path, header=0, dtype={"image": str})
    except FileNotFoundError:
        raise DataError(f"{role} CSV {path} does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{role} CSV {path} cannot be parsed: {str(error).splitlines()[0]}") from None
    expected = ["image", *CLASSES]
    missing = [c for c in expected if c not in table.columns]
    extra = [c for c in table.columns if c not in expected]
    if missing or extra:
        raise DataError(f"{role} CSV {path}: columns must be {','.join(expected)}"
                        + (f"; missing {', '.join(missing)}" if missing else "")
                        + (f"; unexpected {', '.join(map(str, extra))}" if extra else ""))
    if table["image"].isna().any():
        raise DataError(f"{role} CSV {path}: row {int(table['image'].isna().argmax()) + 2} has no image id")
    table["image"] = table["image"].str.strip().str.replace(r"\.jpg$", "", case=False, regex=True)
    duplicated = table["image"][table["image"].duplicated()].unique().tolist()
    if duplicated:
        raise DataError(f"{role} CSV {path}: images listed twice: {', '.join(duplicated[:5])}")
    values = table[list(CLASSES)].apply(pd.to_numeric, errors="coerce")
    bad = table["image"][values.isna().any(axis=1)].tolist()
    if bad:
        raise DataError(f"{role} CSV {path}: missing or non-numeric values for {', '.join(bad[:5])}")
    return pd.DataFrame(values.to_numpy(np.float64), index=pd.Index(table["image"], name="image"),
                        columns=list(CLASSES))


def read_truth_csv(path) -> pd.Series:
    """Class index per image id from a one-hot ISIC 2018 Task 3 ground-truth CSV."""
    table = _read_csv(path, "truth")
    top = table.max(axis=1)
    ambiguous = table.index[(table.eq(top, axis=0).sum(axis=1) != 1) | (top <= 0)].tolist()
    if ambiguous:
        raise DataError(f"truth CSV {path}: no single diagnosis (one-hot row) for {', '.join(ambiguous[:5])}")
    return pd.Series(table.to_numpy().argmax(axis=1), index=table.index, name="label")


def read_prediction_csv(path, image_ids: Sequence[str]) -> np.ndarray:
    """(N, 7) probabilities of a Task 3 submission CSV, in the order of ``image_ids``."""
    table = _read_csv(path, "prediction")
    out_of_range = table.index[((table < 0) | (table > 1)).any(axis=1)].tolist()
    if out_of_range:
        raise DataError(f"prediction CSV {path}: probabilities outside [0, 1] for {', '.join(out_of_range[:5])}")
    missing = [i for i in image_ids if i not in table.index]
    if missing:
        raise DataError(f"prediction CSV {path} has no row for {len(missing)} truth images, "
                        f"e.g. {', '.join(missing[:5])}")
    extra = table.index.difference(pd.Index(image_ids)).tolist()
    if extra:
        raise DataError(f"prediction CSV {path} has rows for images not in the truth: {', '.join(extra[:5])}")
    return table.loc[list(image_ids)].to_numpy()


def score_task3(truth_csv, pred_csv) -> dict[str, float]:
    """ISIC 2018 Task 3 metrics; ``balanced_accuracy`` is the challenge score."""
    labels = read_truth_csv(truth_csv)
    probabilities = read_prediction_csv(pred_csv, labels.index.tolist())
    accumulator = ClassificationAccumulator()
    accumulator.update(probabilities, labels.to_numpy())
    return accumulator.compute()


SCORERS = {"task1": score_task1, "task2": score_task2, "task3": score_task3}
