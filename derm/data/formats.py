"""Dataset folder layouts -> one table with one row per image.

derm reads four on-disk layouts of HAM10000 and ISIC 2018 (see LAYOUTS) and
turns each into the same pandas DataFrame, the dataset table:

    image_id, image_path, lesion_id, diagnosis, lesion_mask_path,
    attribute_<name>_path for each name in derm.labels.ATTRIBUTES,
    age, sex, localization (strings from the metadata CSV; None where unknown or the layout has none)

with `attrs` "layout", "root", "has_lesion_ids" and "problems". Paths are
absolute, rows are sorted by image_id, missing values are None.

Loading only looks at file names and label files; it never decodes an image
(derm.data.decoding does). What does not add up (a label row without its image,
an image without its mask, an unknown diagnosis) is neither raised nor
dropped silently: it is recorded in `table.attrs["problems"]`, a list of
`derm.data.problems.Problem` (image_id, path, problem, severity; use
`dataclasses.asdict` for plain dicts). Rows that cannot be used at all (no
image file, no label row) are left out of the table and reported as errors;
rows with a problem but some use (no mask, unknown diagnosis) stay in it.
"""

import os
import re
import warnings
from pathlib import Path

import pandas as pd

from derm.data.metadata import SOURCE_COLUMNS as METADATA_SOURCE_COLUMNS, read_metadata_csv
from derm.data.problems import Problem
from derm.errors import ConfigError, DataError
from derm.labels import ATTRIBUTES, CLASSES, DX_TO_CLASS

LAYOUTS = ("ham10000", "ham10000-kaggle", "isic2018-task1-3", "isic2018-task2")

COLUMNS = ("image_id", "image_path", "lesion_id", "diagnosis", "lesion_mask_path",
           *(f"attribute_{name}_path" for name in ATTRIBUTES), *METADATA_SOURCE_COLUMNS)

HAM_METADATA = "HAM10000_metadata.csv"
HAM_IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "images")
HAM_MASK_FOLDER = "HAM10000_segmentations_lesion_tschandl"
TASK12_INPUT = "ISIC2018_Task1-2_Training_Input"
TASK1_TRUTH = "ISIC2018_Task1_Training_GroundTruth"
TASK2_TRUTH = "ISIC2018_Task2_Training_GroundTruth_v3"
TASK3_INPUT = "ISIC2018_Task3_Training_Input"
TASK3_TRUTH = "ISIC2018_Task3_Training_GroundTruth.csv"

# A layout matches when every name of one alternative is at the top of the
# folder (a trailing "/" marks a folder).
LAYOUT_MARKERS = {
    "ham10000": ((HAM_METADATA, "HAM10000_images_part_1/"), (HAM_METADATA, "HAM10000_images_part_2/"),
                 (HAM_METADATA, "images/")),
    "ham10000-kaggle": (("images/", "GroundTruth.csv"), ("images/", "metadata.csv")),
    "isic2018-task1-3": ((f"{TASK12_INPUT}/", f"{TASK1_TRUTH}/"), (f"{TASK3_INPUT}/", TASK3_TRUTH)),
    "isic2018-task2": ((f"{TASK12_INPUT}/", f"{TASK2_TRUTH}/"),),
}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_LESION_MASK_NAME = re.compile(r"(?P<image_id>.+)_segmentation\.png", re.IGNORECASE)
_ATTRIBUTE_MASK_NAME = re.compile(r"(?P<image_id>.+)_attribute_(?P<attribute>.+)\.png", re.IGNORECASE)


class LesionIdsMissingWarning(UserWarning):
    """The layout has no lesion ids, so splits can only keep images (not lesions) apart."""


def detect_layout(root) -> str:
    """Name the layout of the dataset folder `root` (one of LAYOUTS).

    Raises DataError if the folder does not exist, matches no layout (the
    message lists what each layout expects and what the folder holds) or
    matches several (then name the layout explicitly). A Task 1-2 folder with
    both Task 1 and Task 2 ground truth (and no Task 3 files) is
    "isic2018-task2": its table carries the lesion masks as well.
    """
    present = _top_level_names(root)
    matches = [name for name in LAYOUTS if _missing_markers(name, present) == []]
    # Task 1-2 images with both Task 1 and Task 2 truth are a Task 2 folder whose
    # table also carries the lesion masks; only Task 3 files make it ambiguous.
    if set(matches) == {"isic2018-task1-3", "isic2018-task2"} and not present & {f"{TASK3_INPUT}/", TASK3_TRUTH}:
        matches = ["isic2018-task2"]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        expected = ", ".join(f"{name} ({_describe_markers(name)})" for name in LAYOUTS)
        found = ", ".join(sorted(present)[:20]) + (f" and {len(present) - 20} more" if len(present) > 20 else "")
        raise DataError(f"{root} matches no known layout; expected one of: {expected}; "
                        f"found: {found or 'nothing (empty folder)'}")
    raise DataError(f"{root} matches several layouts ({', '.join(matches)}); name the one to use "
                    f"explicitly, e.g. layout={matches[0]!r}")


def load_table(root, layout: str = "auto") -> pd.DataFrame:
    """Read the dataset folder `root` into the dataset table (see the module docstring).

    `layout` is one of LAYOUTS or "auto" (detect_layout). A layout named
    explicitly whose files are missing raises DataError naming them.

    >>> import tempfile
    >>> from derm.data.synthetic import write_synthetic_dataset
    >>> table = load_table(write_synthetic_dataset(tempfile.mkdtemp() + "/HAM10000", n=21, size=(64, 64)))
    >>> table.attrs["layout"], len(table), table.attrs["problems"]
    ('ham10000', 21, [])
    """
    if layout in (None, "auto"):
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise DataError(f"unknown dataset layout {layout!r}; allowed: auto, {', '.join(LAYOUTS)}")
    else:
        missing = _missing_markers(layout, _top_level_names(root))
        if missing:
            raise DataError(f"{root} is not a {layout} folder: missing {', '.join(missing)} "
                            f"(expected {_describe_markers(layout)})")
    folder = Path(os.path.abspath(root))
    reader = {"ham10000": _read_ham10000, "ham10000-kaggle": _read_kaggle,
              "isic2018-task1-3": _read_isic2018_task1_3, "isic2018-task2": _read_isic2018_task2}[layout]
    problems: list[Problem] = []
    records, has_lesion_ids = reader(folder, problems)
    table = pd.DataFrame(sorted(records, key=lambda record: record["image_id"]), columns=list(COLUMNS), dtype=object)
    table.attrs.update(layout=layout, root=str(folder), has_lesion_ids=has_lesion_ids,
                       problems=list(problems))
    if not has_lesion_ids:
        warnings.warn(f"{root} ({layout}) has no lesion ids: splits fall back to image level, so images "
                      f"of one lesion may land in different splits", LesionIdsMissingWarning, stacklevel=2)
    return table


# --- layouts ---------------------------------------------------------------

def _read_ham10000(root: Path, problems: list) -> tuple[list, bool]:
    images = _scan_images([root / name for name in HAM_IMAGE_FOLDERS], problems)
    labels = _labels_from_dx_file(root / HAM_METADATA, problems, lesion_ids=True)
    records = _join_labels(labels, images, root / HAM_METADATA, problems)
    _attach_metadata(records, root / HAM_METADATA)
    if (root / HAM_MASK_FOLDER).is_dir():
        _attach_lesion_masks(records, _scan_lesion_masks(root / HAM_MASK_FOLDER, problems), problems)
    return records, True


def _read_kaggle(root: Path, problems: list) -> tuple[list, bool]:
    images = _scan_images([root / "images"], problems)
    # metadata.csv may carry lesion ids; GroundTruth.csv never does, so the former wins.
    if (root / "metadata.csv").is_file():
        label_file = root / "metadata.csv"
        columns = _read_label_csv(label_file).columns
        has_lesion_ids = "lesion_id" in columns
        labels = _labels_from_dx_file(label_file, problems, lesion_ids=has_lesion_ids)
    else:
        label_file, has_lesion_ids = root / "GroundTruth.csv", False
        labels = _labels_from_one_hot_file(label_file, problems)
    records = _join_labels(labels, images, label_file, problems)
    _attach_metadata(records, label_file)  # GroundTruth.csv has none: they stay None
    if (root / "masks").is_dir():
        _attach_lesion_masks(records, _scan_lesion_masks(root / "masks", problems), problems)
    return records, has_lesion_ids


def _read_isic2018_task1_3(root: Path, problems: list) -> tuple[list, bool]:
    # Tasks 1-2 and Task 3 use different images: Task 1-2 images have masks and
    # no diagnosis, Task 3 images a diagnosis and no mask. Both go in one table.
    task12_images = _scan_images([root / TASK12_INPUT], problems)
    task3_images = _scan_images([root / TASK3_INPUT], problems)
    for image_id in sorted(task12_images.keys() & task3_images.keys()):
        problems.append(Problem(image_id, task3_images.pop(image_id),
                                f"duplicate image id {image_id} (also at {task12_images[image_id]})"))
    records = [_record(image_id, path) for image_id, path in task12_images.items()]
    if (root / TASK3_TRUTH).is_file():
        labels = _labels_from_one_hot_file(root / TASK3_TRUTH, problems)
        labelled_task12 = {image_id: labels.pop(image_id) for image_id in list(labels) if image_id in task12_images}
        for record in records:
            if record["image_id"] in labelled_task12:
                record["diagnosis"] = labelled_task12[record["image_id"]][0]
        records += _join_labels(labels, task3_images, root / TASK3_TRUTH, problems)
    else:
        records += [_record(image_id, path) for image_id, path in task3_images.items()]
    if (root / TASK1_TRUTH).is_dir():
        task12_records = [record for record in records if record["image_id"] in task12_images]
        _attach_lesion_masks(task12_records, _scan_lesion_masks(root / TASK1_TRUTH, problems), problems)
    return records, False


def _read_isic2018_task2(root: Path, problems: list) -> tuple[list, bool]:
    records = {image_id: _record(image_id, path)
               for image_id, path in _scan_images([root / TASK12_INPUT], problems).items()}
    for mask in _sorted_files(root / TASK2_TRUTH, ".png"):
        match = _ATTRIBUTE_MASK_NAME.fullmatch(mask.name)
        if match is None:
            problems.append(Problem(None, str(mask), "not an ISIC_xxxxxxx_attribute_<name>.png file name", "warning"))
        elif match["attribute"] not in ATTRIBUTES:
            problems.append(Problem(match["image_id"], str(mask), f"unknown attribute {match['attribute']!r} "
                                    f"(allowed: {', '.join(ATTRIBUTES)})", "warning"))
        elif match["image_id"] not in records:
            problems.append(Problem(match["image_id"], str(mask), "mask without image", "warning"))
        else:
            records[match["image_id"]][f"attribute_{match['attribute']}_path"] = str(mask)
    for record in records.values():
        for name in ATTRIBUTES:
            if record[f"attribute_{name}_path"] is None:
                problems.append(Problem(record["image_id"], record["image_path"], f"missing attribute mask {name}"))
    if (root / TASK1_TRUTH).is_dir():  # the same images' lesion masks, for multitask training
        _attach_lesion_masks(list(records.values()), _scan_lesion_masks(root / TASK1_TRUTH, problems), problems)
    return list(records.values()), False


# --- files -----------------------------------------------------------------

def _top_level_names(root) -> set[str]:
    if not os.path.exists(root):
        raise ConfigError(f"dataset folder {root} does not exist")
    if not os.path.isdir(root):
        raise ConfigError(f"dataset path {root} is a file, not a folder")
    return {entry.name + ("/" if entry.is_dir() else "") for entry in os.scandir(root)}


def _missing_markers(layout: str, present: set[str]) -> list[str]:
    """The names missing from the closest alternative of `layout` ([] when it matches)."""
    missing = [[name for name in alternative if name not in present] for alternative in LAYOUT_MARKERS[layout]]
    return min(missing, key=len)


def _describe_markers(layout: str) -> str:
    return " or ".join(" + ".join(alternative) for alternative in LAYOUT_MARKERS[layout])


def _sorted_files(folder: Path, *suffixes: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(Path(entry.path) for entry in os.scandir(folder)
                  if entry.is_file() and entry.name.lower().endswith(suffixes))


def _scan_images(folders: list[Path], problems: list) -> dict[str, str]:
    """image_id -> path of every image file in `folders` (other files, e.g. LICENSE.txt, are not images)."""
    images: dict[str, str] = {}
    for path in (path for folder in folders for path in _sorted_files(folder, *IMAGE_SUFFIXES)):
        if path.stem in images:
            problems.append(Problem(path.stem, str(path), f"duplicate image id {path.stem} (also at {images[path.stem]})"))
        else:
            images[path.stem] = str(path)
    return images


def _scan_lesion_masks(folder: Path, problems: list) -> dict[str, str]:
    masks = {}
    for path in _sorted_files(folder, ".png"):
        match = _LESION_MASK_NAME.fullmatch(path.name)
        if match is None:
            problems.append(Problem(None, str(path), "not an ISIC_xxxxxxx_segmentation.png file name", "warning"))
        else:
            masks[match["image_id"]] = str(path)
    return masks


def _attach_lesion_masks(records: list[dict], masks: dict[str, str], problems: list) -> None:
    """Set lesion_mask_path on `records`; report images without masks and masks without images."""
    masks = dict(masks)
    for record in records:
        record["lesion_mask_path"] = masks.pop(record["image_id"], None)
        if record["lesion_mask_path"] is None:
            problems.append(Problem(record["image_id"], record["image_path"], "missing mask"))
    for image_id, path in masks.items():
        problems.append(Problem(image_id, path, "mask without image", "warning"))


def _record(image_id: str, image_path: str, lesion_id: str | None = None, diagnosis: str | None = None) -> dict:
    record = dict.fromkeys(COLUMNS)
    record.update(image_id=image_id, image_path=image_path, lesion_id=lesion_id or image_id, diagnosis=diagnosis)
    return record


def _attach_metadata(records: list[dict], csv_path: Path) -> None:
    """Copy age, sex and site from the label CSV (the columns it has) onto `records`."""
    metadata = {row.pop("image_id"): row for row in read_metadata_csv(csv_path).to_dict("records")}
    for record in records:
        record.update(metadata.get(record["image_id"], {}))


def _join_labels(labels: dict, images: dict[str, str], label_file: Path, problems: list) -> list[dict]:
    """Records for images that have both a file and a label row; the others are reported and left out."""
    for image_id in sorted(labels.keys() - images.keys()):
        problems.append(Problem(image_id, str(label_file), f"row for {image_id} has no image file"))
    for image_id in sorted(images.keys() - labels.keys()):
        problems.append(Problem(image_id, images[image_id], f"image has no row in {label_file.name}"))
    return [_record(image_id, images[image_id], lesion_id, diagnosis)
            for image_id, (diagnosis, lesion_id) in labels.items() if image_id in images]


# --- label files -----------------------------------------------------------

def _read_label_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not a readable CSV file ({' '.join(str(error).split())})") from None
    frame.columns = [column.strip() for column in frame.columns]
    # Short rows leave NaN even with keep_default_na=False; treat them as empty fields.
    return frame.fillna("").apply(lambda column: column.str.strip())


def _require_columns(frame: pd.DataFrame, path: Path, *alternatives: tuple[str, ...]) -> tuple[str, ...]:
    """The first alternative column set that `frame` has; DataError naming what is missing otherwise."""
    for columns in alternatives:
        if all(column in frame.columns for column in columns):
            return columns
    wanted = " or ".join(",".join(columns) for columns in alternatives)
    raise DataError(f"{path} lacks the expected columns: needs {wanted}; has {','.join(frame.columns)}")


def _image_id(raw: str) -> str:
    """Some metadata copies write ISIC_0024306.jpg, others ISIC_0024306."""
    stem, suffix = os.path.splitext(raw)
    return stem if suffix.lower() in IMAGE_SUFFIXES else raw


def _row(line: int, image_id: str) -> str:
    """'line 12 (ISIC_0024306)': a problem is printed as `csv path: problem`, so name the image too."""
    return f"line {line} ({image_id or 'no image id'})"


def _labels_from_dx_file(path: Path, problems: list, lesion_ids: bool) -> dict[str, tuple]:
    """image_id -> (diagnosis code or None, lesion_id or None) from a CSV with a dx column."""
    frame = _read_label_csv(path)
    id_column = _require_columns(frame, path, ("image_id",), ("image",))[0]
    _require_columns(frame, path, ("dx",) + (("lesion_id",) if lesion_ids else ()))
    labels: dict[str, tuple] = {}
    for line, row in enumerate(frame.to_dict("records"), start=2):
        image_id = _image_id(row[id_column])
        if _is_duplicate(image_id, labels, path, line, problems):
            continue
        diagnosis = DX_TO_CLASS.get(row["dx"].lower())
        if diagnosis is None:
            found = f"unknown diagnosis {row['dx']!r}" if row["dx"] else "no diagnosis"
            problems.append(Problem(image_id, str(path), f"{_row(line, image_id)}: {found} "
                                    f"(allowed: {', '.join(DX_TO_CLASS)})"))
        lesion_id = row["lesion_id"] if lesion_ids else None
        if lesion_ids and not lesion_id:
            problems.append(Problem(image_id, str(path), f"{_row(line, image_id)}: no lesion_id; the image is "
                                    f"treated as a lesion of its own", "warning"))
        labels[image_id] = (diagnosis, lesion_id)
    return labels


def _labels_from_one_hot_file(path: Path, problems: list) -> dict[str, tuple]:
    """image_id -> (diagnosis code or None, None) from an image,MEL,NV,... one-hot CSV."""
    frame = _read_label_csv(path)
    _require_columns(frame, path, ("image", *CLASSES))
    values = frame[list(CLASSES)].apply(pd.to_numeric, errors="coerce")
    labels: dict[str, tuple] = {}
    for line, raw_id, row in zip(range(2, len(frame) + 2), frame["image"], values.to_numpy()):
        image_id = _image_id(raw_id)
        if _is_duplicate(image_id, labels, path, line, problems):
            continue
        ones = [name for name, value in zip(CLASSES, row) if value == 1]
        if not all(value in (0, 1) for value in row):
            problems.append(Problem(image_id, str(path), f"{_row(line, image_id)}: one-hot values must be 0 or 1, "
                                    f"got {', '.join(frame.loc[line - 2, list(CLASSES)])}"))
        elif len(ones) != 1:
            problems.append(Problem(image_id, str(path), f"{_row(line, image_id)}: one-hot row has {len(ones)} ones "
                                    f"({', '.join(ones) or 'no class'}); expected exactly one"))
        labels[image_id] = (ones[0] if len(ones) == 1 and all(value in (0, 1) for value in row) else None, None)
    return labels


def _is_duplicate(image_id: str, labels: dict, path: Path, line: int, problems: list) -> bool:
    if image_id in labels:
        problems.append(Problem(image_id, str(path), f"{_row(line, image_id)}: duplicate row "
                                f"(the first row is used)"))
        return True
    return False
