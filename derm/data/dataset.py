"""A torch Dataset over the decode-once cache, and a class-balanced sampler.

    >>> import tempfile
    >>> from derm.data.cache import build_cache
    >>> from derm.data.formats import load_table
    >>> from derm.data.synthetic import write_synthetic_dataset
    >>> from derm.data.transforms import train_transform
    >>> folder = tempfile.mkdtemp()
    >>> table = load_table(write_synthetic_dataset(folder + "/HAM10000", n=21, size=(64, 64)))
    >>> arrays = build_cache(table, 32, folder + "/cache", ["lesion_mask_path"], log=lambda line: None)
    >>> item = DermDataset.from_table(arrays, table, train_transform(32))[0]
    >>> item["image"].shape, item["mask"].shape, item["has_mask"], item["index"]
    (torch.Size([3, 32, 32]), torch.Size([1, 32, 32]), True, 0)

A dataset built with ``metadata`` (``from_table(..., metadata=True)``) also gives each item
"metadata", the image's float32 (`derm.data.metadata.METADATA_FEATURES`,) patient vector.

`item["has_mask"]` is False for an image without a mask file (its mask is all zero and
the loss and metrics leave it out). `item["index"]` is the sample's row in the cache, so `arrays.image_ids[index]` and
`arrays.original_sizes[index]` name the image and its size when writing predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from derm.data.cache import DecodedArrays
from derm.data.metadata import encode_metadata
from derm.errors import DataError
from derm.labels import CLASSES

NO_LABEL = -1


class DermDataset(Dataset):
    """Samples of a `DecodedArrays` cache, in the order of `rows`, through `transform`.

    `labels` holds one class index (into `derm.labels.CLASSES`) per row, or -1 where
    there is no label; None means no labels at all. `transform` is an albumentations
    pipeline from `derm.data.transforms` (called as transform(image=..., mask=...)).

    Each item is a dict: "image" float32 (3, S, S) as normalised by the transform,
    "mask" float32 (C, S, S) in {0, 1} (C = 0 when the cache has no mask columns),
    "label" int64 scalar, "has_mask" bool, "index" the cache row; with `metadata`
    ((len(rows), F) float32, `derm.data.metadata.encode_metadata`), "metadata" (F,) too.

    Safe with DataLoader workers: the cache pickles as its folder and each worker
    re-opens the memory maps, so no array is copied between processes.
    """

    def __init__(
        self,
        arrays: DecodedArrays,
        rows: Sequence[int],
        labels: Sequence[int] | None,
        transform: Callable[..., dict],
        has_mask: Sequence[bool] | None = None,
        metadata: np.ndarray | None = None,
    ):
        self.arrays = arrays
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = (np.full(len(self.rows), NO_LABEL, np.int64) if labels is None
                       else np.asarray(labels, dtype=np.int64))
        if len(self.labels) != len(self.rows):
            raise ValueError(f"{len(self.labels)} labels for {len(self.rows)} rows")
        self.has_mask = (np.ones(len(self.rows), bool) if has_mask is None else np.asarray(has_mask, dtype=bool))
        self.transform = transform
        self.metadata = None if metadata is None else np.asarray(metadata, dtype=np.float32)
        if self.metadata is not None and len(self.metadata) != len(self.rows):
            raise ValueError(f"{len(self.metadata)} metadata vectors for {len(self.rows)} rows")

    @classmethod
    def from_table(cls, arrays: DecodedArrays, table: pd.DataFrame, transform: Callable[..., dict],
                   metadata: bool = False) -> "DermDataset":
        """The table's images, in table order, with labels from its `diagnosis` column
        (and, with `metadata`, the encoding of its age, sex and site columns).

        Every image must be in the cache: drop the rows the cache left out first
        (`derm.data.decoding.drop_bad_rows` with `arrays.problems`).
        """
        missing = [i for i in table["image_id"] if i not in arrays.row_of]
        if missing:
            raise DataError(f"{len(missing)} images are not in the cache {arrays.directory}, "
                            f"e.g. {', '.join(missing[:5])}; drop the rows it reported as problems first")
        rows = [arrays.row_of[i] for i in table["image_id"]]
        # A row whose mask file is empty has an all-zero mask in the cache (optional masks).
        columns = [c for c in arrays.mask_columns if c in table]
        has_mask = table[columns].notna().all(axis=1).to_numpy() if columns else None
        vectors = encode_metadata(table) if metadata else None
        return cls(arrays, rows, labels_from_diagnosis(table["diagnosis"]), transform, has_mask, vectors)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        image = np.array(self.arrays.images[row])  # copy: memmaps are read-only
        masks = self.arrays.masks[row]
        if masks.shape[-1]:
            out = self.transform(image=image, mask=np.array(masks))
            mask = torch.from_numpy(as_float32_chw(out["mask"]))
        else:
            out = self.transform(image=image)
            mask = torch.zeros((0, *out["image"].shape[:2]), dtype=torch.float32)
        item = {
            "image": torch.from_numpy(as_float32_chw(out["image"])),
            "mask": mask,
            "label": torch.tensor(self.labels[i], dtype=torch.int64),
            "has_mask": bool(self.has_mask[i]),
            "index": row,
        }
        if self.metadata is not None:
            item["metadata"] = torch.from_numpy(self.metadata[i].copy())
        return item


def labels_from_diagnosis(diagnosis: pd.Series) -> np.ndarray:
    """Class indices into CLASSES for a `diagnosis` column; -1 where it is None."""
    index = {name: k for k, name in enumerate(CLASSES)}
    return np.array([NO_LABEL if pd.isna(d) else index[d] for d in diagnosis], dtype=np.int64)


def as_float32_chw(array: np.ndarray) -> np.ndarray:
    """HxWxC -> contiguous float32 CxHxW, converted by NumPy.

    Not ``Tensor.float()``: that runs in torch's intra-op thread pool, and in a loader
    process competing for the cores one such call took milliseconds instead of
    microseconds, making the cached data path ten times slower (docs/PERFORMANCE.md).
    """
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)


def class_balanced_sampler(labels: Sequence[int], *, generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """Draw each class equally often: every sample weighted by 1 / its class's count.

    Draws len(labels) samples per epoch with replacement, so rare classes repeat
    and common ones are sub-sampled.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if (labels < 0).any():
        raise DataError(f"balanced sampling needs a label for every image; {(labels < 0).sum()} of "
                        f"{len(labels)} have none (set data.balanced_sampling: false)")
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=len(labels),
                                 replacement=True, generator=generator)
