"""Train/val/test splits that keep each lesion in one split and each diagnosis in proportion.

HAM10000 holds several images of many lesions (10,015 images, 7,470 lesions):
an image-level split would put photographs of one lesion on both sides and
inflate validation scores. `make_split` therefore assigns whole lesions
(`lesion_id` groups) and balances diagnoses; on layouts without lesion ids the
table's lesion_id equals its image_id and the split is image-level.

A split is a pandas Series indexed by image_id with values "train", "val" or
"test"; `write_split` / `read_split` store it as a CSV (image_id,split) so a
sweep and its retraining use the very same images.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from derm.errors import ConfigError, DataError
from derm.labels import CLASSES

SPLITS = ("train", "val", "test")

# Stratum of groups whose images carry no diagnosis (Task 2, unknown labels).
_UNLABELLED = "unlabelled"


def make_split(table: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15,
               seed: int = 0) -> pd.Series:
    """Assign every image of `table` to "train", "val" or "test".

    All images of one `lesion_id` land in the same split, each diagnosis is
    spread over the splits in the requested proportions (counted in images),
    and the result depends only on the table's rows and `seed`, not on their
    order. Where the table has at least three lesions, each split with a
    fraction above zero gets at least one.

    >>> import tempfile
    >>> from derm.data.formats import load_table
    >>> from derm.data.synthetic import write_synthetic_dataset
    >>> table = load_table(write_synthetic_dataset(tempfile.mkdtemp() + "/HAM10000", n=100, size=(64, 64)))
    >>> split = make_split(table, val_fraction=0.15, test_fraction=0.15, seed=0)
    >>> split.value_counts().to_dict()                                  # 100 images
    {'train': 69, 'val': 16, 'test': 15}
    >>> int(table.groupby("lesion_id")["image_id"].agg(lambda ids: split[ids].nunique()).max())  # lesions whole
    1
    """
    fractions = _split_fractions(val_fraction, test_fraction)
    if len(table) == 0:
        raise DataError("cannot split an empty dataset table (no images were loaded)")
    rows = table[["image_id", "lesion_id", "diagnosis"]].sort_values("image_id", kind="stable")
    groups = _lesion_groups(rows)
    group_split = _assign_groups(groups, fractions, np.random.default_rng(seed))
    _fill_empty_splits(groups, group_split, fractions)
    split = rows["lesion_id"].map(dict(zip(groups["lesion_id"], group_split)))
    return pd.Series(split.to_numpy(dtype=object), index=pd.Index(rows["image_id"].to_numpy(dtype=object),
                     name="image_id"), name="split")


def write_split(split: pd.Series, path) -> None:
    """Write `split` as a CSV with columns image_id,split (rows sorted by image_id)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"image_id": split.index.astype(str), "split": split.to_numpy()})
    frame.sort_values("image_id").to_csv(path, index=False)


def read_split(path) -> pd.Series:
    """Read a split CSV written by `write_split`; DataError if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"split file {path} is not a readable CSV ({_one_line(error)})") from None
    missing = [column for column in ("image_id", "split") if column not in frame.columns]
    if missing:
        raise DataError(f"split file {path} lacks column(s) {', '.join(missing)}; expected columns image_id,split")
    unknown = sorted(set(frame["split"]) - set(SPLITS))
    if unknown:
        raise DataError(f"split file {path} has split value(s) {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(SPLITS)}")
    duplicated = frame["image_id"][frame["image_id"].duplicated()].unique()
    if len(duplicated):
        raise DataError(f"split file {path} lists image(s) more than once: {_first_few(duplicated)}")
    return pd.Series(frame["split"].to_numpy(dtype=object),
                     index=pd.Index(frame["image_id"].to_numpy(dtype=object), name="image_id"), name="split")


def apply_split(table: pd.DataFrame, split: pd.Series, skipped=()) -> dict[str, pd.DataFrame]:
    """Cut `table` into {"train": ..., "val": ..., "test": ...} by `split`.

    The split must name exactly the table's images, apart from `skipped`: ids
    left out of the table because their files are bad (reported elsewhere). A
    split made for another dataset (or a table that lost or gained images since)
    raises DataError instead of training on a silently different set.
    """
    table_ids = set(table["image_id"])
    split_ids = set(split.index)
    not_in_table = sorted(split_ids - table_ids - set(skipped))
    if not_in_table:
        raise DataError(f"the split names {len(not_in_table)} image(s) that are not in the dataset table "
                        f"({_first_few(not_in_table)}); was it made for another dataset? make a new split")
    not_in_split = sorted(table_ids - split_ids)
    if not_in_split:
        raise DataError(f"{len(not_in_split)} image(s) of the dataset table are not in the split "
                        f"({_first_few(not_in_split)}); make a new split for this dataset")
    assignment = table["image_id"].map(split)
    return {name: table[(assignment == name).to_numpy()].reset_index(drop=True) for name in SPLITS}


def _split_fractions(val_fraction: float, test_fraction: float) -> dict[str, float]:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(f"val_fraction + test_fraction must be below 1 so that some images are left "
                          f"to train on, got {val_fraction} + {test_fraction}")
    return {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}


def _lesion_groups(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per lesion: its id, image count and stratum (its most common diagnosis)."""
    diagnosis = rows["diagnosis"].where(rows["diagnosis"].notna(), _UNLABELLED).astype(object)
    order = {name: rank for rank, name in enumerate((*CLASSES, _UNLABELLED))}
    counts = (pd.DataFrame({"lesion_id": rows["lesion_id"].to_numpy(), "stratum": diagnosis.to_numpy()})
              .value_counts().rename("images").reset_index())
    # A lesion's images normally share one diagnosis; if not, the most common one
    # (ties to the CLASSES order) decides its stratum.
    counts["rank"] = counts["stratum"].map(lambda name: order.get(name, len(order)))
    counts = counts.sort_values(["lesion_id", "images", "rank"], ascending=[True, False, True])
    strata = counts.drop_duplicates("lesion_id")[["lesion_id", "stratum"]]
    sizes = counts.groupby("lesion_id", sort=True)["images"].sum().rename("images").reset_index()
    return sizes.merge(strata, on="lesion_id").reset_index(drop=True)


def _assign_groups(groups: pd.DataFrame, fractions: dict[str, float], rng: np.random.Generator) -> list[str]:
    """Greedy stratified assignment of lesions to splits, largest lesions first.

    Each lesion goes to the split where it most reduces the squared distance of
    the image counts from their targets (fraction x images), summed over its
    diagnosis (relative to that diagnosis' size) and over the whole table
    (relative to the table size). The per-diagnosis term keeps classes in
    proportion; the whole-table term makes small classes help fill val/test.
    scikit-learn's StratifiedGroupKFold does the same kind of greedy search but
    needs 20 folds to express 15 % (8 s on HAM10000 on two cores) and fails on
    tiny tables, hence this short loop.
    """
    names = list(fractions)
    shares = np.array([fractions[name] for name in names])
    total = float(groups["images"].sum())
    stratum_sizes = groups.groupby("stratum")["images"].sum().to_dict()
    stratum_counts = {stratum: np.zeros(len(names)) for stratum in stratum_sizes}
    overall_counts = np.zeros(len(names))
    # Random order first (seeded), then a stable sort: equal-sized lesions keep the random order.
    order = rng.permutation(len(groups))
    order = order[np.argsort(-groups["images"].to_numpy()[order], kind="stable")]
    tie_break = rng.random((len(groups), len(names))) * 1e-9
    assigned = [""] * len(groups)
    for position, index in enumerate(order):
        size = float(groups.at[index, "images"])
        stratum = groups.at[index, "stratum"]
        counts, stratum_size = stratum_counts[stratum], stratum_sizes[stratum]
        increase = (size * (2 * (counts - shares * stratum_size) + size) / stratum_size
                    + size * (2 * (overall_counts - shares * total) + size) / total)
        increase = np.where(shares > 0, increase, np.inf) + tie_break[position]
        choice = int(np.argmin(increase))
        counts[choice] += size
        overall_counts[choice] += size
        assigned[index] = names[choice]
    return assigned


def _fill_empty_splits(groups: pd.DataFrame, assigned: list[str], fractions: dict[str, float]) -> None:
    """Move one small lesion into each wanted-but-empty split, taken from the most populous split."""
    for name in SPLITS:
        if fractions[name] == 0 or name in assigned:
            continue
        donors = pd.Series(assigned).value_counts()
        donors = donors[donors > 1]
        if donors.empty:
            return  # fewer lesions than wanted splits: nothing to move
        donor = donors.index[0]
        candidates = groups[[split == donor for split in assigned]].sort_values(["images", "lesion_id"])
        assigned[candidates.index[0]] = name


def _first_few(ids, limit: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
