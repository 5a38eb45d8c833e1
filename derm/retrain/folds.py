"""Cross-validation folds over the sweep's train+val images: lesion-grouped, diagnosis-stratified.

The sweep's test split stays untouched: folds only redistribute the images the sweep
trained and validated on. All images of one lesion land in one fold (HAM10000 has up to
six photographs of a lesion; splitting them would leak the lesion into its own
validation fold) and each diagnosis is spread evenly over the folds, as the ISIC
2019/2020 winners and nnU-Net fold their data.

    >>> import pandas as pd
    >>> rows = pd.DataFrame({"image_id": list("abcdefgh"), "lesion_id": list("aabcdefg"),
    ...                      "diagnosis": ["NV"] * 4 + ["MEL"] * 4})
    >>> folds = assign_folds(rows, 2, seed=0)
    >>> int(folds["a"] == folds["b"]), sorted(folds.value_counts().tolist())   # one lesion, one fold
    (1, [4, 4])
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from derm.errors import ConfigError

UNLABELLED = "unlabelled"


def assign_folds(rows: pd.DataFrame, folds: int, seed: int = 0) -> pd.Series:
    """image_id -> fold (0 .. folds-1) for ``rows`` (columns image_id, lesion_id, diagnosis).

    scikit-learn's StratifiedGroupKFold (shuffled, seeded) keeps each lesion in one fold
    and each diagnosis in proportion; the result depends on the rows and the seed only.
    """
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {folds}")
    rows = rows.sort_values("image_id", kind="stable").reset_index(drop=True)
    lesions = rows["lesion_id"].nunique()
    if lesions < folds:
        raise ConfigError(f"--folds {folds}: train+val holds only {lesions} lesions; use at most {lesions} folds")
    strata = rows["diagnosis"].where(rows["diagnosis"].notna(), UNLABELLED).astype(str)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment = np.empty(len(rows), dtype=int)
    with warnings.catch_warnings():
        # "The least populated class in y has only 1 members": rare classes (DF, VASC) in a
        # small dataset; their lesions still go to one fold each.
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, held_out) in enumerate(splitter.split(rows, strata, groups=rows["lesion_id"])):
            assignment[held_out] = fold
    return pd.Series(assignment, index=pd.Index(rows["image_id"], name="image_id"), name="fold")


def fold_split(split: pd.Series, folds: pd.Series, fold: int) -> pd.Series:
    """The split one fold trains with: its own images "val" (held out), the other folds' "train",
    the sweep's test images "test" (never read while folds train).

    >>> split = pd.Series({"a": "train", "b": "val", "c": "test"})
    >>> fold_split(split, pd.Series({"a": 0, "b": 1}), 1).to_dict()
    {'a': 'train', 'b': 'val', 'c': 'test'}
    """
    result = split.copy()
    in_folds = split.index.isin(folds.index)
    held_out = folds.reindex(split.index).eq(fold).to_numpy()
    result[in_folds] = "train"
    result[held_out] = "val"
    return result
