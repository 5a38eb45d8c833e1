"""ISIC 2018 submission files from a Predictor: masks, the diagnosis CSV and overlays.

For each JPEG or PNG in a folder (other files are ignored; the image id is the file stem),
``predict_folder`` writes, at the image's original size:

- ``<id>_segmentation.png``: the lesion mask, 0/255 single-channel (segmentation and
  multitask models; ISIC 2018 Task 1);
- ``<id>_attribute_<name>.png``: one 0/255 mask per Task 2 attribute (attribute models);
- ``diagnosis.csv``: ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` probabilities, one row per
  image (models with a classifier; Task 3);
- ``overlays/<id>.jpg``: the image with the predicted outlines and, for classifiers,
  the label and its probability in the corner.

A model trained with ``model.metadata`` reads each image's age, sex and lesion site from a
CSV (``metadata.csv`` beside the images, or the file given; `folder_metadata`).

An image that cannot be decoded is named and skipped. ``python -m derm.predict`` is the
command; ``python -m derm.evaluate`` scores the files.

    predictor = Predictor.from_checkpoint("best.pt", tta=True)
    predict_folder(predictor, "images/", "predictions/").predicted[:2]   # ['ISIC_0000000', 'ISIC_0000001']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from derm.data.formats import IMAGE_SUFFIXES
from derm.data.metadata import encode_metadata, read_metadata_csv
from derm.errors import ConfigError, DataError
from derm.inference import DEFAULT_BATCH_SIZE, Prediction, Predictor, load_image
from derm.labels import ATTRIBUTES, CLASSES
from derm.progress import progress

PROBABILITIES_CSV = "diagnosis.csv"
METADATA_CSV = "metadata.csv"  # read beside the images for a model trained with model.metadata
NAMED_IMAGES = 10  # images named in a one-line report before "and N more"
OVERLAY_DIR = "overlays"
# The decode errors PIL raises for truncated, corrupt or non-image files.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# Outline colours (RGB): the lesion in green; attributes each in their own colour.
LESION_COLOUR = (0, 255, 0)
ATTRIBUTE_COLOURS = dict(zip(ATTRIBUTES, [(255, 215, 0), (0, 191, 255), (255, 64, 64), (255, 255, 255),
                                          (255, 0, 255)]))


@dataclass
class FolderResult:
    """What `predict_folder` wrote: the ids predicted, the files skipped (path, reason), the CSV."""

    out_dir: Path
    predicted: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    probabilities_csv: Path | None = None


def list_images(images_dir: str | Path) -> list[Path]:
    """The JPEG and PNG files directly in `images_dir`, sorted; DataError if there are none.

    Two files with one stem (a.jpg, a.png) would write to the same outputs, so they are an error.
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such image folder")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{folder}: no JPEG or PNG images in this folder")
    seen: dict[str, Path] = {}
    for path in images:
        if path.stem in seen:
            raise DataError(f"{path}: same image id {path.stem} as {seen[path.stem].name}; rename one of them")
        seen[path.stem] = path
    return images


def mask_png(mask: np.ndarray) -> Image.Image:
    """A boolean mask as the ISIC submission format: single-channel 8-bit, 0 and 255."""
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")


def write_masks(image_id: str, prediction: Prediction, out_dir: Path) -> list[Path]:
    """``<id>_segmentation.png`` and/or ``<id>_attribute_<name>.png`` files for one prediction."""
    masks = {}
    if prediction.lesion_mask is not None:
        masks[f"{image_id}_segmentation.png"] = prediction.lesion_mask
    for name, mask in (prediction.attribute_masks or {}).items():
        masks[f"{image_id}_attribute_{name}.png"] = mask
    for file_name, mask in masks.items():
        mask_png(mask).save(out_dir / file_name)
    return [out_dir / name for name in masks]


def write_probabilities(rows: Sequence[tuple[str, dict[str, float]]], path: Path) -> Path:
    """The ISIC 2018 Task 3 CSV: ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, one row per image."""
    table = pd.DataFrame([probabilities for _, probabilities in rows], columns=list(CLASSES))
    table.insert(0, "image", [image_id for image_id, _ in rows])
    table.to_csv(path, index=False)
    return path


def draw_overlay(image: np.ndarray, prediction: Prediction) -> np.ndarray:
    """The image (H, W, 3 uint8 RGB) with the predicted outlines and the label in the top-left corner."""
    canvas = np.ascontiguousarray(image.copy())
    thickness = max(2, round(min(canvas.shape[:2]) / 250))
    if prediction.lesion_mask is not None:
        _draw_outline(canvas, prediction.lesion_mask, LESION_COLOUR, thickness)
    lines = []
    for name, mask in (prediction.attribute_masks or {}).items():
        _draw_outline(canvas, mask, ATTRIBUTE_COLOURS[name], thickness)
        if mask.any():
            lines.append((name.replace("_", " "), ATTRIBUTE_COLOURS[name]))
    if prediction.label is not None:
        lines.insert(0, (f"{prediction.label} {prediction.probabilities[prediction.label]:.2f}", (255, 255, 255)))
    _draw_text_lines(canvas, lines)
    return canvas


def _draw_outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, colour, thickness, lineType=cv2.LINE_AA)


def _draw_text_lines(canvas: np.ndarray, lines: list[tuple[str, tuple[int, int, int]]]) -> None:
    # Text scales with the image so the label stays legible on 600 px and 6000 px images alike.
    scale = max(0.5, min(canvas.shape[:2]) / 600)
    weight = max(1, round(scale * 2))
    x = y = round(10 * scale)
    for text, colour in lines:
        (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, weight)
        cv2.rectangle(canvas, (x - 4, y - 4), (x + width + 4, y + height + baseline + 4), (0, 0, 0), cv2.FILLED)
        cv2.putText(canvas, text, (x, y + height), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, weight, cv2.LINE_AA)
        y += height + baseline + round(12 * scale)


def write_overlay(image_path: Path, prediction: Prediction, path: Path) -> Path:
    """Draw `prediction` on the full-size image at `image_path` and save it as JPEG."""
    with Image.open(image_path) as image:
        rgb = np.asarray(image.convert("RGB"))
    Image.fromarray(draw_overlay(rgb, prediction)).save(path, quality=90)
    return path


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def folder_metadata(predictor: Predictor, images_dir: str | Path, images: Sequence[Path],
                    metadata_csv: str | Path | None,
                    log: Callable[[str], None] = print) -> dict[str, np.ndarray] | None:
    """image id -> its encoded metadata vector, for a model trained with ``model.metadata``.

    Read from `metadata_csv`, else ``metadata.csv`` in `images_dir` when there is one
    (`derm.data.metadata.read_metadata_csv`: image_id or image, age, sex, localization, or
    ISIC 2019's names). One line through `log` each says when there is no CSV (every image's
    metadata is missing) and which images have no row in it (theirs is missing). None for a
    model without metadata (a `metadata_csv` given then is said to be unused).
    """
    if not predictor.uses_metadata:
        if metadata_csv is not None:
            log(f"{metadata_csv} is not used: the model was trained without model.metadata")
        return None
    path = Path(metadata_csv) if metadata_csv is not None else Path(images_dir) / METADATA_CSV
    if not path.is_file():
        if metadata_csv is not None:
            raise ConfigError(f"--metadata {path}: no such file")
        log(f"no metadata CSV ({path}, or give --metadata FILE): predictions use missing age, sex and site "
            f"for all {len(images)} images")
        table = pd.DataFrame(index=range(len(images)))
    else:
        rows = read_metadata_csv(path).set_index("image_id")
        lacking = [image.stem for image in images if image.stem not in rows.index]
        if lacking:
            more = f" and {len(lacking) - NAMED_IMAGES} more" if len(lacking) > NAMED_IMAGES else ""
            log(f"{len(lacking)} of {len(images)} images have no row in {path} (their age, sex and site are "
                f"encoded as missing): {', '.join(lacking[:NAMED_IMAGES])}{more}")
        table = rows.reindex([image.stem for image in images]).reset_index(drop=True)
    # Encoded once for the folder, so an unknown value is reported once, not once per batch.
    return dict(zip((image.stem for image in images), encode_metadata(table)))


def predict_folder(predictor: Predictor, images_dir: str | Path, out_dir: str | Path, *, overlays: bool = True,
                   batch_size: int = DEFAULT_BATCH_SIZE, log: Callable[[str], None] = print,
                   metadata_csv: str | Path | None = None) -> FolderResult:
    """Predict every JPEG/PNG in `images_dir` and write the submission files into `out_dir`.

    An image that cannot be decoded is reported through `log` by name and skipped;
    the others are still predicted. Draws a progress bar by images (`derm.progress`).
    A metadata model reads its inputs as `folder_metadata` says. Returns what was
    written and what was skipped.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    images = list_images(images_dir)
    metadata = folder_metadata(predictor, images_dir, images, metadata_csv, log)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if overlays:
        (out_dir / OVERLAY_DIR).mkdir(exist_ok=True)
    result = FolderResult(out_dir)
    probability_rows: list[tuple[str, dict[str, float]]] = []
    with progress(total=len(images), desc="predicting", unit="image") as bar:
        for paths in chunks(images, batch_size):
            loaded = []
            for path in paths:
                try:
                    loaded.append((path, load_image(path, predictor.input_size, predictor.preprocessing)))
                except DECODE_ERRORS as err:
                    result.skipped.append((path, f"cannot decode image: {err}"))
                    log(f"skipped {path}: cannot decode image: {err}")
            vectors = None if metadata is None or not loaded else np.stack([metadata[p.stem] for p, _ in loaded])
            predictions = predictor.predict_prepared([prepared for _, prepared in loaded], vectors)
            for (path, _), prediction in zip(loaded, predictions):
                write_masks(path.stem, prediction, out_dir)
                if prediction.probabilities is not None:
                    probability_rows.append((path.stem, prediction.probabilities))
                if overlays:
                    write_overlay(path, prediction, out_dir / OVERLAY_DIR / f"{path.stem}.jpg")
                result.predicted.append(path.stem)
            bar.update(len(paths))
    if predictor.task in ("multitask", "classification"):
        result.probabilities_csv = write_probabilities(probability_rows, out_dir / PROBABILITIES_CSV)
    return result
