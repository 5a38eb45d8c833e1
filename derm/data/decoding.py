"""Decode-level checks of dataset files: the one place an image or mask is judged.

`derm.data.formats.load_table` finds file-level problems (a metadata row without
its image, an unknown label). This module opens every file: a truncated JPEG, a
mask that is missing, not the image's size, or not 0/255. `inspect_sample` is the
one place these checks live; the decode-once cache (`derm.data.cache`) and
``python -m derm.data.check`` call it, so a file is judged the same way whether
it is checked or trained on. `drop_bad_rows` and `check_bad_fraction` decide what
a run skips and when too much of a dataset is broken to go on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np
import pandas as pd
from PIL import Image, ImageFile

from derm.data.preprocess import Preprocessing, Resize
from derm.data.problems import Problem
from derm.errors import DataError
from derm.labels import ATTRIBUTES
from derm.progress import progress
from derm.runtime import available_cpus

logger = logging.getLogger(__name__)

LESION_MASK_COLUMN = "lesion_mask_path"
ATTRIBUTE_MASK_COLUMNS = tuple(f"attribute_{name}_path" for name in ATTRIBUTES)
MASK_COLUMNS = (LESION_MASK_COLUMN, *ATTRIBUTE_MASK_COLUMNS)

# The checker decodes JPEGs at reduced scale (PIL draft, JPEG DCT scaling): the
# entropy decoder still reads every byte, so truncation and corrupt data are
# caught, at a fraction of the cost of a full decode.
CHECK_DECODE_SIZE = 64

# PIL modes whose pixels may exceed 255: 16-bit grayscale (PNG, TIFF) and 32-bit
# integer ("I", which older Pillow used for 16-bit PNGs).
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# How many problems a DataError lists before summarising the rest as a count.
LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class DecodedSample:
    """One image and its masks, decoded and checked.

    `image` is uint8 (H, W, 3) RGB; `masks` is uint8 (H, W, C) with values 0/1, one
    channel per requested mask column; `original_size` is the source image's
    (height, width) before any resizing.
    """

    image: np.ndarray
    masks: np.ndarray
    original_size: tuple[int, int]


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _column_label(column: str) -> str:
    """'lesion_mask_path' -> 'lesion mask', 'attribute_streaks_path' -> 'streaks mask'."""
    if column == LESION_MASK_COLUMN:
        return "lesion mask"
    return column.removeprefix("attribute_").removesuffix("_path") + " mask"


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB at 8 bits per channel, rescaling 16-bit grayscale rather than clipping it.

    PIL's convert("RGB") clips integer modes at 255, so a 16-bit image (any pixel
    above 255, i.e. nearly all of them) would come out white. 16-bit RGB PNGs
    need nothing here: PIL opens them as 8-bit RGB (the high byte of each value).
    """
    if img.mode not in HIGH_BIT_DEPTH_MODES:
        return img.convert("RGB")
    values = np.asarray(img)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"pixel values {values.min()}..{values.max()} do not fit 16 bits (PIL mode {img.mode}); "
                         f"save the image with 8 or 16 bits per channel")
    # 65535 / 257 = 255 exactly; (v + 128) // 257 is v / 257 rounded half up.
    gray = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


def decode_image(path: str, size: int | None, *,
                 preprocessing: Preprocessing | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 (H, W, 3) RGB pixels of the image at `path` and its source (height, width).

    With `size`, the image is decoded at reduced JPEG scale where possible and
    brought to size x size (bilinear) by `preprocessing`'s geometry (default: squash,
    a plain resize); its colour constancy, if any, follows (`derm.data.preprocess`).
    16-bit grayscale is rescaled to 8 bits.
    """
    preprocessing = preprocessing or Preprocessing()
    # Never apply EXIF orientation: masks are drawn on the stored pixel grid.
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone switched it on; it would hide truncated files
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False for derm's checks")
    with Image.open(path) as img:
        width, height = img.size
        if size is not None:
            # JPEG only: decode at the smallest scale >= size in both sides, which every
            # geometry (squash, pad's longest side, center_crop's shortest) still has room in.
            img.draft("RGB", (size, size))
        img.load()
        rgb = _to_rgb(img)
    return preprocessing.apply(rgb, size, (height, width)), (height, width)


def _decode_mask(
    image_id: str, path: str, column: str, image_size: tuple[int, int], geometry: Resize | None
) -> tuple[np.ndarray | None, Problem | None]:
    label = _column_label(column)
    if not os.path.exists(path):
        return None, Problem(image_id, path, f"{label} file not found")
    try:
        with Image.open(path) as img:
            # convert("L") reads palette PNGs as the luminance of each index's colour.
            # The raw indices are a trap: HAM10000's palette masks map index 0 to
            # white and 255 to black, so reading indices would invert the mask.
            gray = img.convert("L")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return None, Problem(image_id, path, f"cannot decode {label}: {err}")
    height, width = image_size
    if gray.size != (width, height):
        return None, Problem(
            image_id, path, f"{label} is {gray.size[0]}x{gray.size[1]} but its image is {width}x{height}"
        )
    counts = np.bincount(np.asarray(gray).ravel(), minlength=256)
    other_values = [int(v) for v in np.flatnonzero(counts) if v not in (0, 255)]
    if other_values:
        shown = ", ".join(map(str, other_values[:8])) + (", ..." if len(other_values) > 8 else "")
        return None, Problem(image_id, path, f"{label} must hold only 0 and 255, found {shown}")
    pixels = geometry.apply_mask(gray) if geometry is not None else np.asarray(gray)
    return (pixels > 127).astype(np.uint8), None


def inspect_sample(
    row: Mapping, mask_columns: Sequence[str], *, size: int | None = None, optional_masks: bool = False,
    preprocessing: Preprocessing | None = None,
) -> tuple[DecodedSample | None, list[Problem]]:
    """Decode one table row's image and masks, checking each file.

    `row` is a mapping with the dataset table's columns (a DataFrame row or a
    dict). Every column in `mask_columns` must name a mask file, except with
    `optional_masks`, where an empty one gives an all-zero channel (ISIC 2018
    Task 3 images have no lesion mask; multitask training uses them for the
    diagnosis alone, and the loss knows from the table which masks exist). The image must
    decode fully; each mask must exist, be the image's size and hold only 0/255.
    With `size`, the image is decoded at reduced JPEG scale and brought to size x size
    by `preprocessing` (`derm.data.preprocess`; default: squash, no colour constancy),
    and the masks by the same geometry with nearest neighbour.

    Returns the decoded sample, or None when any check fails, and the problems.

    >>> import tempfile
    >>> from derm.data.formats import load_table
    >>> from derm.data.synthetic import write_synthetic_dataset
    >>> table = load_table(write_synthetic_dataset(tempfile.mkdtemp() + "/HAM10000", n=21, size=(96, 64)))
    >>> sample, problems = inspect_sample(table.iloc[0], ["lesion_mask_path"], size=32)
    >>> sample.image.shape, sample.masks.shape, sample.original_size, problems
    ((32, 32, 3), (32, 32, 1), (64, 96), [])
    """
    image_id, image_path = row["image_id"], row["image_path"]
    if not os.path.exists(image_path):
        return None, [Problem(image_id, image_path, "image file not found")]
    try:
        image, original_size = decode_image(image_path, size, preprocessing=preprocessing)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return None, [Problem(image_id, image_path, f"cannot decode image: {err}")]
    geometry = (preprocessing or Preprocessing()).geometry(size) if size is not None else None
    masks, problems = [], []
    for column in mask_columns:
        mask_path = row[column]
        if _is_missing(mask_path):
            if optional_masks:
                masks.append(np.zeros(image.shape[:2], np.uint8))
            else:
                problems.append(Problem(image_id, image_path, f"no {_column_label(column)} ({column} is empty)"))
            continue
        mask, problem = _decode_mask(image_id, mask_path, column, original_size, geometry)
        if problem is not None:
            problems.append(problem)
        else:
            masks.append(mask)
    if problems:
        return None, problems
    height, width = image.shape[:2]
    stacked = np.stack(masks, axis=-1) if masks else np.zeros((height, width, 0), np.uint8)
    return DecodedSample(image, stacked, original_size), []


def inspect_samples(
    jobs: Iterable[tuple[Mapping, Sequence[str]]], *, size: int | None = None, workers: int | None = None,
    optional_masks: bool = False, preprocessing: Preprocessing | None = None,
) -> Iterator[tuple[DecodedSample | None, list[Problem]]]:
    """`inspect_sample` over many (row, mask_columns) pairs in a thread pool, in order.

    PIL releases the GIL while decoding and resizing, so threads use every CPU.
    `workers` defaults to the CPUs available to this process.

    ``jobs`` is e.g. ``((row, ["lesion_mask_path"]) for row in table.to_dict("records"))``.
    """
    jobs = iter(jobs)
    workers = workers or available_cpus()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Submit in chunks so a large table never holds all decoded images at once.
        while chunk := list(islice(jobs, 64 * workers)):
            yield from pool.map(lambda job: inspect_sample(job[0], job[1], size=size, optional_masks=optional_masks,
                                                           preprocessing=preprocessing), chunk)


def check_table(table: pd.DataFrame, *, decode: bool = True, workers: int | None = None) -> list[Problem]:
    """Every problem with a dataset table: file-level ones from load_table, then decode-level ones.

    With `decode`, opens each image and each mask the row names (see
    `inspect_sample`), with a progress bar (`derm.progress`). A row naming no mask
    is not a problem here: which images should have masks depends on the layout
    (ISIC 2018 Task 3 images have none), so load_table reports the missing ones.
    """
    problems = list(table.attrs.get("problems", []))
    if not decode:
        return problems
    records = table.to_dict("records")
    jobs = ((r, [c for c in MASK_COLUMNS if not _is_missing(r.get(c))]) for r in records)
    inspected = inspect_samples(jobs, size=CHECK_DECODE_SIZE, workers=workers)
    for _, row_problems in progress(inspected, total=len(records), desc="checking", unit="image"):
        problems.extend(row_problems)
    return problems


def check_bad_fraction(problems: Iterable[Problem], known_ids: set, max_bad_fraction: float) -> None:
    """DataError listing the first problems when more than `max_bad_fraction` of the
    dataset's images (`known_ids`, bad ones included) have an error.

    Checked against the whole dataset, never one split: one bad image of a small
    validation split is not a broken dataset.
    """
    errors = [p for p in problems if p.severity == "error"]
    bad_ids = {p.image_id for p in errors if p.image_id is not None}
    known = set(known_ids) | bad_ids
    fraction = len(bad_ids) / len(known) if known else 0.0
    if fraction > max_bad_fraction:
        listed = "; ".join(str(p) for p in errors[:LISTED_PROBLEMS])
        more = f"; and {len(errors) - LISTED_PROBLEMS} more" if len(errors) > LISTED_PROBLEMS else ""
        raise DataError(
            f"{len(bad_ids)} of {len(known)} images ({fraction:.1%}) have problems, more than "
            f"data.max_bad_fraction={max_bad_fraction:g}: {listed}{more}"
        )


def drop_bad_rows(table: pd.DataFrame, problems: Iterable[Problem], max_bad_fraction: float,
                  log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Remove the rows that have an error problem, reporting each skipped file through `log`
    (default: this module's logger, as warnings).

    Images the table no longer holds (load_table leaves out a metadata row whose
    image is missing) count as bad too, so the fraction is bad images over all
    images known. Raises DataError listing the first problems when that fraction
    exceeds `max_bad_fraction` (`check_bad_fraction`): training on a dataset with
    many broken files should be a decision, not an accident.
    """
    log = log or logger.warning
    errors = [p for p in problems if p.severity == "error"]
    check_bad_fraction(errors, set(table["image_id"]), max_bad_fraction)
    for problem in errors:
        log(f"skipping {problem.path}: {problem.problem}")
    bad_ids = {p.image_id for p in errors if p.image_id is not None}
    kept = table[~table["image_id"].isin(bad_ids)]
    kept.attrs = dict(table.attrs)
    return kept
