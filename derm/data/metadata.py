"""Patient metadata (age, sex, lesion site) as the fixed-length vector a model can fuse.

The ISIC 2019 winners (Gessert et al. 2020) fed age, sex and anatomical site through a
small MLP beside the image features; derm does the same with ``model.metadata: true``.
HAM10000 writes these as ``age``, ``sex``, ``localization``; ISIC 2019/2020 as
``age_approx``, ``sex``, ``anatom_site_general`` (2020: ``..._challenge``). Both are read.

A missing value is information, not a reason to drop an image: it is encoded with an
indicator of its own, so the model learns what "no age" means instead of reading a fake
age. The vector (`FEATURE_NAMES`, `METADATA_FEATURES` long) is:

    age / 100, age missing | male, female, sex missing | one-hot site ..., site missing

    >>> rows = pd.DataFrame({"age": [45, None], "sex": ["female", "unknown"], "localization": ["back", None]})
    >>> encode_metadata(rows)[:, :5]
    array([[0.45, 0.  , 0.  , 1.  , 0.  ],
           [0.  , 1.  , 0.  , 0.  , 1.  ]], dtype=float32)
    >>> [FEATURE_NAMES[k] for k in np.flatnonzero(encode_metadata(rows)[0])]
    ['age', 'sex_female', 'site_back']

A value outside the vocabulary (a site spelled another way, an age that is not a number)
is encoded as missing and reported once per value through the module's logger.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from derm.errors import DataError

logger = logging.getLogger(__name__)

# Each encoded field and the column names it is read from, first found wins.
SOURCE_COLUMNS = {
    "age": ("age", "age_approx"),
    "sex": ("sex",),
    "localization": ("localization", "anatom_site_general", "anatom_site_general_challenge"),
}
AGE_SCALE = 100.0  # HAM10000 ages run 0-85 in steps of 5
MAX_AGE = 120.0
SEXES = ("male", "female")
# HAM10000's localization values (its "unknown" is the missing indicator).
HAM10000_SITES = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
                  "lower extremity", "neck", "scalp", "trunk", "upper extremity")
# ISIC 2019/2020 sites that span several HAM10000 sites get entries of their own...
SITES = HAM10000_SITES + ("anterior torso", "head/neck")
# ...and those that name one HAM10000 site are that site (palms and soles are HAM10000's acral).
SITE_ALIASES = {"posterior torso": "back", "palms/soles": "acral", "oral/genital": "genital",
                "lateral torso": "trunk", "torso": "trunk"}
MISSING_VALUES = {"", "unknown", "nan", "none", "null", "na", "n/a"}

FEATURE_NAMES = ("age", "age_missing", *(f"sex_{s}" for s in SEXES), "sex_missing",
                 *(f"site_{s}" for s in SITES), "site_missing")
METADATA_FEATURES = len(FEATURE_NAMES)
_SEX_OFFSET = 2
_SITE_OFFSET = _SEX_OFFSET + len(SEXES) + 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def missing_metadata(n: int) -> np.ndarray:
    """(n, METADATA_FEATURES) float32: what an image with no metadata at all is encoded as.

    >>> [FEATURE_NAMES[k] for k in np.flatnonzero(missing_metadata(1)[0])]
    ['age_missing', 'sex_missing', 'site_missing']
    """
    vectors = np.zeros((n, METADATA_FEATURES), np.float32)
    vectors[:, [1, _SITE_OFFSET - 1, METADATA_FEATURES - 1]] = 1.0
    return vectors


def encode_metadata(table: pd.DataFrame) -> np.ndarray:
    """(len(table), METADATA_FEATURES) float32 vectors from the metadata columns `table` has.

    Columns are looked up by `SOURCE_COLUMNS` (HAM10000 or ISIC 2019 names); a field
    with no column is missing for every row. Unknown values are encoded as missing and
    logged once each, with how many images had them.
    """
    vectors = missing_metadata(len(table))
    unknown: Counter = Counter()
    ages = _column(table, "age")
    if ages is not None:
        numbers = pd.to_numeric(ages, errors="coerce").to_numpy(dtype=float)
        present = np.array([not _is_missing(v) for v in ages])
        valid = present & np.isfinite(numbers) & (numbers >= 0) & (numbers <= MAX_AGE)
        vectors[valid, 0] = numbers[valid] / AGE_SCALE
        vectors[valid, 1] = 0.0
        unknown.update(("age", str(v)) for v in ages[present & ~valid])
    for field, vocabulary, offset in (("sex", SEXES, _SEX_OFFSET), ("localization", SITES, _SITE_OFFSET)):
        values = _column(table, field)
        if values is None:
            continue
        for row, value in enumerate(values):
            if _is_missing(value):
                continue
            name = str(value).strip().lower()
            name = SITE_ALIASES.get(name, name) if field == "localization" else name
            if name in vocabulary:
                vectors[row, offset + vocabulary.index(name)] = 1.0
                vectors[row, offset + len(vocabulary)] = 0.0  # the field's missing indicator
            else:
                unknown[(field, str(value))] += 1
    for (field, value), count in sorted(unknown.items()):
        logger.warning(f"metadata: {field} {value!r} is not a known value ({count} image{'s' * (count > 1)}); "
                       f"encoded as missing")
    return vectors


def read_metadata_csv(path: str | Path) -> pd.DataFrame:
    """A metadata CSV as a table: image_id, age, sex, localization (None where empty, unknown or absent).

    The image id comes from an ``image_id`` or ``image`` column (``ISIC_0024306`` or
    ``ISIC_0024306.jpg``); the other columns by `SOURCE_COLUMNS`, so HAM10000's
    metadata and ISIC 2019's both read. A second row for an image is ignored. DataError
    when the file cannot be read or has no image id column.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not a readable CSV file ({' '.join(str(error).split())})") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    id_column = next((c for c in ("image_id", "image") if c in frame.columns), None)
    if id_column is None:
        raise DataError(f"{path}: a metadata CSV needs an image_id or image column; has {','.join(frame.columns)}")
    columns = {"image_id": [_image_id(str(v)) for v in frame[id_column]]}
    for field in SOURCE_COLUMNS:
        values = _column(frame, field)
        values = [None] * len(frame) if values is None else values
        columns[field] = [None if _is_missing(v) else str(v).strip() for v in values]
    # object columns: pandas would otherwise turn None into NaN in a column of strings
    table = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
    return table.drop_duplicates("image_id", keep="first").reset_index(drop=True)


def _column(table: pd.DataFrame, field: str) -> pd.Series | None:
    name = next((c for c in SOURCE_COLUMNS[field] if c in table.columns), None)
    return None if name is None else table[name].reset_index(drop=True)


def _is_missing(value) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return True
    return str(value).strip().lower() in MISSING_VALUES


def _image_id(raw: str) -> str:
    stem, suffix = os.path.splitext(raw.strip())
    return stem if suffix.lower() in IMAGE_SUFFIXES else raw.strip()
