"""Datasets: folder layouts -> one table (formats), splits, checks, transforms, loading.

The public entry points of the table and split stages, re-exported here:

    from derm.data import load_table, make_split, apply_split
    table = load_table("data/HAM10000")          # layout detected
    parts = apply_split(table, make_split(table, seed=0))   # {"train", "val", "test"}
"""

from derm.data.formats import LAYOUTS, LesionIdsMissingWarning, detect_layout, load_table
from derm.data.problems import Problem
from derm.data.splits import SPLITS, apply_split, make_split, read_split, write_split

__all__ = [
    "LAYOUTS", "SPLITS", "LesionIdsMissingWarning", "Problem",
    "apply_split", "detect_layout", "load_table", "make_split", "read_split", "write_split",
]
