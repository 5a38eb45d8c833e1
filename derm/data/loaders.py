"""From a run config to DataLoaders: the one way every command builds its data.

    table -> file-level problems -> split -> per split: decode-once cache, skip and
    report bad files -> Dataset -> DataLoader

Only the splits a run asks for are ever decoded: a sweep builds "train" and "val",
so the test images are never read until retrain-best evaluates on them.

Reproducibility: ``PreparedData.set_epoch(seed)`` reseeds the shuffling generator and
the augmentation RNG, and each DataLoader worker derives its augmentation seed from
the loader's per-epoch base seed; an epoch's batches then depend only on (seed, epoch).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from derm.config import RunConfig
from derm.data.cache import build_cache
from derm.data.dataset import DermDataset, class_balanced_sampler, labels_from_diagnosis
from derm.data.decoding import check_bad_fraction, drop_bad_rows
from derm.data.formats import load_table
from derm.data.preprocess import Preprocessing
from derm.data.problems import Problem
from derm.data.splits import apply_split, make_split, read_split, write_split
from derm.data.transforms import eval_transform, train_transform
from derm.errors import DataError
from derm.labels import ATTRIBUTES, CLASSES
from derm.runtime import available_cpus, loader_workers

logger = logging.getLogger(__name__)

SPLIT_FILE = "split.csv"


def mask_columns_for(task: str) -> list[str]:
    """The table columns a task's masks come from, in model channel order."""
    if task in ("multitask", "segmentation"):
        return ["lesion_mask_path"]
    if task == "attributes":
        return [f"attribute_{name}_path" for name in ATTRIBUTES]
    return []


@dataclass
class PreparedData:
    """DataLoaders by split name ("train" may combine several splits) and what the loss needs."""

    loaders: dict[str, DataLoader]
    split: pd.Series
    tables: dict[str, pd.DataFrame]  # the usable rows of each loader, in loader order
    class_counts: np.ndarray | None
    attribute_positive_fraction: np.ndarray | None
    problems: list[Problem] = field(default_factory=list)
    generator: torch.Generator = field(default_factory=torch.Generator)

    def set_epoch(self, seed: int) -> None:
        """Make this epoch's order and augmentations a function of ``seed`` alone."""
        self.generator.manual_seed(seed)
        train = self.loaders["train"]
        if train.num_workers == 0:
            train.dataset.transform.set_random_seed(seed % 2**32)

    def split_records(self) -> dict[str, str]:
        """{image_id: split}: what a checkpoint stores so later runs use the identical split."""
        return {str(k): str(v) for k, v in self.split.items()}


def seed_worker(worker_id: int) -> None:
    """Per-worker augmentation seed from the loader's per-epoch base seed."""
    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**32
    info.dataset.transform.set_random_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def load_split(cfg: RunConfig, table: pd.DataFrame, run_dir: Path | None) -> pd.Series:
    """The run's split: given in the config, else made from the table (seeded), then written.

    The split is made over every image the dataset lists, bad files included, and bad
    files are dropped from each part afterwards: a split depends on the dataset and the
    seed alone, and a sweep's split stays valid in trials that find a broken file.
    """
    if cfg.data.split_csv:
        split = read_split(cfg.data.split_csv)
    else:
        split = make_split(table, cfg.data.val_fraction, cfg.data.test_fraction, seed=cfg.data.split_seed)
    if run_dir is not None:
        write_split(split, Path(run_dir) / SPLIT_FILE)
    return split


def error_ids(problems: Sequence[Problem]) -> set[str]:
    """The image ids that have an error (not a warning)."""
    return {p.image_id for p in problems if p.severity == "error" and p.image_id is not None}


def decode_split(cfg: RunConfig, rows: pd.DataFrame, mask_columns: Sequence[str], name: str,
                 log: Callable[[str], None]):
    """Build (or open) the decode-once cache of one split; (arrays, usable rows, problems found)."""
    arrays = build_cache(rows, cfg.data.image_size, cfg.data.cache_dir, mask_columns, log=log,
                         optional_masks=cfg.task == "multitask", preprocessing=Preprocessing.from_config(cfg.data))
    problems = list(arrays.problems)
    for problem in problems:
        log(f"skipping {problem.path}: {problem.problem} ({name} split)")
    bad = error_ids(problems)
    kept = rows[~rows["image_id"].isin(bad)]
    kept.attrs = dict(rows.attrs)
    return arrays, kept, problems


def prepare_data(
    cfg: RunConfig,
    *,
    run_dir: str | Path | None = None,
    split: pd.Series | None = None,
    train_on: tuple[str, ...] = ("train",),
    evaluate_on: tuple[str, ...] = ("val",),
    device: torch.device | None = None,
    log: Callable[[str], None] = logger.warning,
    decode_together: bool = False,
) -> PreparedData:
    """Load, check, split, decode once and wrap the data a run needs.

    ``train_on`` names the splits merged into the training loader; each name in
    ``evaluate_on`` gets its own evaluation loader. No other split is decoded. With
    ``decode_together``, the training and evaluation splits share one decode-once cache
    over all their images: cross-validation moves images between "train" and "val" from
    fold to fold, and every fold then opens the same cache instead of decoding anew. Bad files
    (the table's own problems and those found decoding) are skipped and reported through
    ``log``; more of them than ``data.max_bad_fraction`` of the dataset stop the run.
    """
    table = load_table(cfg.data.root, cfg.data.layout)
    file_problems = list(table.attrs.get("problems", []))
    known_ids = set(table["image_id"])
    usable = drop_bad_rows(table, file_problems, cfg.data.max_bad_fraction, log=log)
    if split is None:
        split = load_split(cfg, table, Path(run_dir) if run_dir else None)
    elif run_dir is not None:
        write_split(split, Path(run_dir) / SPLIT_FILE)
    check_task_data(cfg, table)
    parts = apply_split(usable, split, skipped=error_ids(file_problems))
    wanted = task_rows(cfg.task, usable, log)
    parts = {name: _with_attrs(rows[rows["image_id"].isin(wanted)].reset_index(drop=True), table)
             for name, rows in parts.items()}

    mask_columns = mask_columns_for(cfg.task)
    size = cfg.data.image_size
    workers = default_workers(cfg, device)
    generator = torch.Generator()
    loaders: dict[str, DataLoader] = {}
    problems = list(file_problems)

    train_rows = pd.concat([parts[name] for name in train_on], ignore_index=True)
    train_rows.attrs = dict(table.attrs)
    if decode_together:
        decoded = _decode_together(cfg, parts, train_on, evaluate_on, mask_columns, table, log)
        (arrays, train_rows, found), decoded = decoded["train"], {n: decoded[n] for n in evaluate_on}
    else:
        arrays, train_rows, found = decode_split(cfg, train_rows, mask_columns, "+".join(train_on), log)
        decoded = {name: decode_split(cfg, _with_attrs(parts[name], table), mask_columns, name, log)
                   for name in evaluate_on}
    problems += found
    for _, _, found in decoded.values():
        problems += found
    check_bad_fraction(problems, known_ids, cfg.data.max_bad_fraction)

    if train_rows.empty:
        raise DataError(f"{cfg.data.root}: the {'+'.join(train_on)} split has no usable images")
    train_set = DermDataset.from_table(arrays, train_rows, train_transform(size, cfg.data.augment),
                                       metadata=cfg.model.metadata)
    sampler = class_balanced_sampler(train_set.labels, generator=generator) if cfg.data.balanced_sampling else None
    loaders["train"] = DataLoader(
        train_set, batch_size=cfg.train.batch_size, shuffle=sampler is None, sampler=sampler,
        generator=generator, num_workers=workers, worker_init_fn=seed_worker,
        pin_memory=device is not None and device.type == "cuda",
        drop_last=len(train_set) > cfg.train.batch_size and cfg.task != "classification",
    )
    for name, (eval_arrays, rows, _) in decoded.items():
        if rows.empty:
            raise DataError(f"{cfg.data.root}: the {name} split has no usable images "
                            f"(data.val_fraction / data.test_fraction too small for this dataset?)")
        loaders[name] = DataLoader(
            DermDataset.from_table(eval_arrays, rows, eval_transform(size), metadata=cfg.model.metadata),
            batch_size=cfg.train.batch_size, shuffle=False, num_workers=workers,
            pin_memory=device is not None and device.type == "cuda",
        )

    return PreparedData(
        loaders=loaders,
        split=split,
        tables={"train": train_rows, **{name: rows for name, (_, rows, _) in decoded.items()}},
        class_counts=class_counts(train_rows) if cfg.task in ("multitask", "classification") else None,
        attribute_positive_fraction=positive_fraction(arrays, train_set) if cfg.task == "attributes" else None,
        problems=problems,
        generator=generator,
    )


def _decode_together(cfg: RunConfig, parts: dict[str, pd.DataFrame], train_on: tuple[str, ...],
                     evaluate_on: tuple[str, ...], mask_columns: Sequence[str], table: pd.DataFrame,
                     log: Callable[[str], None]) -> dict:
    """One cache over the images of ``train_on`` and ``evaluate_on``; per loader ("train" and each
    evaluated split) the shared arrays, its usable rows and (once, under "train") the problems found."""
    names = [*train_on, *[name for name in evaluate_on if name not in train_on]]
    # Sorted, so the cache key (which lists the images in order) is the same whichever fold is held out.
    every = pd.concat([parts[name] for name in names], ignore_index=True)
    every = _with_attrs(every.sort_values("image_id", kind="stable").reset_index(drop=True), table)
    arrays, kept, problems = decode_split(cfg, every, mask_columns, "+".join(names), log)
    usable = set(kept["image_id"])

    def usable_rows(splits: Sequence[str]) -> pd.DataFrame:
        rows = pd.concat([parts[name] for name in splits], ignore_index=True)
        return _with_attrs(rows[rows["image_id"].isin(usable)].reset_index(drop=True), table)

    return {"train": (arrays, usable_rows(train_on), problems),
            **{name: (arrays, usable_rows([name]), []) for name in evaluate_on}}


def _with_attrs(rows: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    rows.attrs = dict(table.attrs)
    return rows


def truth_masks(rows: pd.DataFrame, task: str) -> Callable[[str], np.ndarray]:
    """image id -> its true masks (bool (C, H, W)) read from their files at the original size.

    What retrain-best scores segmentation against, as the ISIC 2018 scorer does: the
    challenge compares masks at each image's own size, not at the training resolution.
    """
    paths = rows.set_index("image_id")[mask_columns_for(task)]

    def read(image_id: str) -> np.ndarray:
        masks = []
        for path in paths.loc[image_id]:
            with Image.open(path) as img:
                # convert("L"): palette masks as luminance (see derm.data.decoding); > 127 as the scorer's > 128.
                masks.append(np.asarray(img.convert("L")) > 127)
        return np.stack(masks)

    return read


def task_rows(task: str, table: pd.DataFrame, log: Callable[[str], None]) -> set[str]:
    """The ids of the images ``task`` can learn from, saying how many it cannot.

    ISIC 2018's Task 1-3 folder holds images with a lesion mask and no diagnosis (Tasks
    1-2) beside images with a diagnosis and no mask (Task 3): segmentation uses the former,
    classification the latter, multitask both (each loss and metric on the images that
    carry its target).
    """
    has_label = table["diagnosis"].notna()
    columns = mask_columns_for(task)
    has_mask = table[columns].notna().all(axis=1) if columns else pd.Series(False, index=table.index)
    usable = {"classification": has_label, "multitask": has_label | has_mask}.get(task, has_mask)
    total = len(table)
    if task == "multitask" and (not has_mask.all() or not has_label.all()):
        log(f"multitask: of {total} images, {int(has_mask.sum())} have a lesion mask (segmentation loss "
            f"and Dice) and {int(has_label.sum())} a diagnosis (classification loss and accuracy)")
    left_out = total - int(usable.sum())
    if left_out:
        what = {"classification": "no diagnosis", "multitask": "neither a lesion mask nor a diagnosis"}.get(
            task, "no masks")
        log(f"task {task}: {left_out} of {total} images have {what} and are not used")
    return set(table.loc[usable, "image_id"])


def check_task_data(cfg: RunConfig, table: pd.DataFrame) -> None:
    """The layout must carry what the task trains on (labels, lesion masks, attribute masks)."""
    layout = table.attrs.get("layout")
    if cfg.task in ("multitask", "classification") and table["diagnosis"].isna().all():
        raise DataError(f"{cfg.data.root}: task {cfg.task} needs diagnosis labels, layout {layout} has none")
    for column in mask_columns_for(cfg.task):
        if table[column].isna().all():
            raise DataError(f"{cfg.data.root}: task {cfg.task} needs {column.removesuffix('_path')} masks, "
                            f"layout {layout} has none")


def class_counts(rows: pd.DataFrame) -> np.ndarray:
    labels = labels_from_diagnosis(rows["diagnosis"])
    return np.bincount(labels[labels >= 0], minlength=len(CLASSES))


def positive_fraction(arrays, dataset: DermDataset) -> np.ndarray:
    """Fraction of positive pixels per mask channel over the training images."""
    totals = np.zeros(arrays.masks.shape[-1], dtype=np.float64)
    for row in dataset.rows:
        totals += arrays.masks[row].reshape(-1, arrays.masks.shape[-1]).mean(axis=0)
    return totals / max(len(dataset.rows), 1)


def default_workers(cfg: RunConfig, device: torch.device | None) -> int:
    """DataLoader workers: the config's, else from the CPUs this process may use."""
    if cfg.data.num_workers is not None:
        return cfg.data.num_workers
    return loader_workers(available_cpus())
