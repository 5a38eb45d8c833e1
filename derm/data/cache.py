"""Decode-once cache: every image and mask decoded and resized once, then memory-mapped.

A sweep runs many trials on the same data at the same resolution. Decoding
thousands of large JPEGs per trial per epoch would dominate the run time, so
`build_cache` decodes each image and its masks once, resizes them to the training
resolution and stores uint8 arrays as `.npy` files:

    <cache_dir>/<key>/images.npy          (N, S, S, 3)  RGB
    <cache_dir>/<key>/masks.npy           (N, S, S, C)  0/1, one channel per mask column
    <cache_dir>/<key>/original_sizes.npy  (N, 2)        source (height, width)
    <cache_dir>/<key>/index.json          image ids in row order, mask columns, problems

The key hashes the layout, the size, the mask columns, the pre-processing
(``data.resize``, ``data.color_constancy``; `derm.data.preprocess`), a format version and
every source file's path, size and modification time, so a changed file or setting gets a
new cache. Trials on one machine build it once under a file lock, into a temporary
folder renamed into place when complete, and then share the same page-cache pages
through `np.load(mmap_mode="r")`. A build killed half-way leaves its temporary
folder (`<key>.building-<pid>`) behind; the next build in that cache folder removes it.

    >>> import tempfile
    >>> from derm.data.formats import load_table
    >>> from derm.data.synthetic import write_synthetic_dataset
    >>> folder = tempfile.mkdtemp()
    >>> table = load_table(write_synthetic_dataset(folder + "/HAM10000", n=21, size=(64, 64)))
    >>> arrays = build_cache(table, 32, folder + "/cache", ["lesion_mask_path"], log=lambda line: None)
    >>> arrays.images[arrays.row_of[table.image_id[0]]].shape, arrays.masks.shape
    ((32, 32, 3), (21, 32, 32, 1))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout
from numpy.lib.format import open_memmap

from derm.data.decoding import inspect_samples
from derm.data.preprocess import Preprocessing, Resize
from derm.data.problems import Problem
from derm.progress import is_quiet
from derm.runtime import available_cpus

logger = logging.getLogger(__name__)

# Bump when the stored arrays change meaning (resizing, value range, file names).
CACHE_FORMAT_VERSION = 1
INDEX_FILE = "index.json"
# A build logs "decode cache: k/N images" once both another tenth of the images and ten
# seconds have passed (whichever is rarer): about ten lines for HAM10000 on a sweep's
# console, none for a build of a few seconds.
PROGRESS_FRACTION = 0.1
PROGRESS_SECONDS = 10.0


def default_cache_dir() -> Path:
    """`$DERM_CACHE_DIR` when set, else `~/.cache/derm`."""
    return Path(os.environ.get("DERM_CACHE_DIR") or Path.home() / ".cache" / "derm")


@dataclass
class DecodedArrays:
    """A built cache: memory-mapped arrays plus the image ids of their rows.

    `images`, `masks` and `original_sizes` open lazily (read-only memmaps) and are
    re-opened, not copied, when the object is pickled into a DataLoader worker.
    `problems` lists the rows that failed to decode and were left out; `built` is
    True when this call decoded the images rather than finding them cached.
    `preprocessing` is how the images were brought to size x size (see `geometry`).
    """

    directory: Path
    image_ids: tuple[str, ...]
    mask_columns: tuple[str, ...]
    size: int
    problems: tuple[Problem, ...] = ()
    built: bool = False
    preprocessing: Preprocessing = Preprocessing()
    _arrays: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.row_of = {image_id: row for row, image_id in enumerate(self.image_ids)}

    def __len__(self) -> int:
        return len(self.image_ids)

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.directory / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    @property
    def geometry(self) -> Resize:
        """The geometry from each original image to its row (`Resize.inverse` maps masks back)."""
        return self.preprocessing.geometry(self.size)

    @property
    def images(self) -> np.ndarray:
        """uint8 (N, S, S, 3) RGB images."""
        return self._array("images")

    @property
    def masks(self) -> np.ndarray:
        """uint8 (N, S, S, C) masks with values 0/1, channels in `mask_columns` order."""
        return self._array("masks")

    @property
    def original_sizes(self) -> np.ndarray:
        """int64 (N, 2): each source image's (height, width) before resizing."""
        return self._array("original_sizes")

    def __getstate__(self) -> dict:
        # A memmap pickles as its full contents; send the folder and re-open instead.
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state


def open_cache(directory: str | Path, *, built: bool = False) -> DecodedArrays:
    """Open a cache folder written by `build_cache`, reading no source file."""
    directory = Path(directory)
    index = json.loads((directory / INDEX_FILE).read_text())
    return DecodedArrays(
        directory=directory,
        image_ids=tuple(index["image_ids"]),
        mask_columns=tuple(index["mask_columns"]),
        size=index["size"],
        problems=tuple(Problem(**p) for p in index["problems"]),
        built=built,
        preprocessing=Preprocessing(**index.get("preprocessing", {})),  # caches written before it: the default
    )


def _file_signature(path) -> list:
    if path is None or (isinstance(path, float) and np.isnan(path)):
        return [None]
    try:
        stat = os.stat(path)
    except OSError:
        return [str(path), None, None]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def cache_key(table: pd.DataFrame, size: int, mask_columns: Sequence[str], optional_masks: bool = False,
              preprocessing: Preprocessing | None = None) -> str:
    """Hash of everything the cached arrays depend on (see the module docstring)."""
    files = [
        _file_signature(row[column])
        for row in table[["image_path", *mask_columns]].to_dict("records")
        for column in ("image_path", *mask_columns)
    ]
    description = [CACHE_FORMAT_VERSION, table.attrs.get("layout"), size, list(mask_columns),
                   list(table["image_id"]), files, optional_masks]
    preprocessing = preprocessing or Preprocessing()
    if not preprocessing.is_default:  # appended only when set, so caches built before these options stay valid
        description.append(preprocessing.pixel_options())
    return hashlib.sha256(json.dumps(description).encode()).hexdigest()[:24]


def build_cache(
    table: pd.DataFrame,
    size: int,
    cache_dir: str | Path | None = None,
    mask_columns: Sequence[str] = (),
    *,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
    optional_masks: bool = False,
    preprocessing: Preprocessing | None = None,
) -> DecodedArrays:
    """Decode every row of `table` once at size x size and return the memory-mapped arrays.

    Returns at once when a cache with the same key exists. Otherwise the first
    process to take the lock decodes (in a thread pool of `workers`, default the
    available CPUs) while others wait for it and then open its result. Rows that
    fail `derm.data.decoding.inspect_sample` are left out and returned as `problems`.

    `log` (default: this module's logger at INFO) receives one line when this call
    starts waiting for another process's build and one when the wait ends, one when
    it starts decoding, ``decode cache: k/N images`` while it decodes (see
    PROGRESS_FRACTION; none under ``--quiet``), one when it is done, and one per stale
    temporary folder it removes. With `optional_masks`, a row without a mask file gets an
    all-zero mask instead of being left out (see `derm.data.decoding.inspect_sample`).
    `preprocessing` (default: squash, no colour constancy) brings each image and mask to
    size x size (`derm.data.preprocess`), exactly as `derm.inference.load_image` does.
    """
    preprocessing = preprocessing or Preprocessing()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    mask_columns = tuple(mask_columns)
    log = log or logger.info
    final = cache_dir / cache_key(table, size, mask_columns, optional_masks, preprocessing)
    if (final / INDEX_FILE).exists():
        return open_cache(final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(final, log):
        if (final / INDEX_FILE).exists():  # another process built it while we waited
            return open_cache(final)
        _remove_stale_builds(cache_dir, final.name, log)
        _build(table, size, mask_columns, final, workers or available_cpus(), log, optional_masks,
               preprocessing=preprocessing)
    return open_cache(final, built=True)


@contextmanager
def _build_lock(final: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold `<key>.lock`, saying so through `log` when another process has it first."""
    lock = FileLock(str(final) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        # A trial stuck here for minutes with a silent log looks hung; say why it waits.
        log(f"decode cache: waiting for another process building {final} "
            f"(started waiting at {time.strftime('%H:%M:%S')})")
        started = time.monotonic()
        lock.acquire()
        log(f"decode cache: waited {time.monotonic() - started:.0f} s for another process's build")
    try:
        yield
    finally:
        lock.release()


def _remove_stale_builds(cache_dir: Path, key: str, log: Callable[[str], None]) -> None:
    """Delete `<key>.building-<pid>` folders that no live process is writing.

    Call with `<key>.lock` held: its holder is the only builder of `key`, so every
    building folder of `key` is left over from a killed build. Another key's folder
    is stale when that key's lock is free (the OS drops a lock when its process dies).
    """
    for folder in sorted(cache_dir.glob("*.building-*")):
        other_key = folder.name.partition(".building-")[0]
        if other_key == key:
            _remove_stale_build(folder, log)
            continue
        other_lock = FileLock(str(cache_dir / other_key) + ".lock")
        try:
            other_lock.acquire(timeout=0)
        except Timeout:
            continue  # its builder is still at work
        try:
            _remove_stale_build(folder, log)
        finally:
            other_lock.release()


def _remove_stale_build(folder: Path, log: Callable[[str], None]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    log(f"decode cache: removed {folder}, left behind by a build that did not finish")


def _build(table: pd.DataFrame, size: int, mask_columns: tuple[str, ...], final: Path, workers: int,
           log: Callable[[str], None], optional_masks: bool = False, *,
           preprocessing: Preprocessing = Preprocessing()) -> None:
    """Decode into a temporary folder and rename it to `final` (call with the lock held)."""
    shutil.rmtree(final, ignore_errors=True)  # a folder without its index is not a cache
    temporary = final.with_name(f"{final.name}.building-{os.getpid()}")
    how = "" if preprocessing.is_default else f" ({preprocessing.describe()})"
    log(f"decode cache: decoding {len(table)} images at {size}x{size}{how} into {final}")
    started = time.monotonic()
    try:
        kept = _write_arrays(table, size, mask_columns, temporary, workers, log, optional_masks,
                             preprocessing=preprocessing)
        os.replace(temporary, final)  # atomic: readers see nothing or everything
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    log(f"decode cache: built {kept} images in {time.monotonic() - started:.1f} s, "
        f"{len(table) - kept} left out")


class _BuildProgress:
    """Logs ``decode cache: k/N images`` at the rate PROGRESS_FRACTION and PROGRESS_SECONDS allow."""

    def __init__(self, total: int, log: Callable[[str], None]):
        self.total, self.log = total, log
        self.last_count, self.last_time = 0, time.monotonic()

    def done(self, count: int) -> None:
        now = time.monotonic()
        if (count < self.total and not is_quiet()
                and count - self.last_count >= PROGRESS_FRACTION * self.total
                and now - self.last_time >= PROGRESS_SECONDS):
            self.log(f"decode cache: {count}/{self.total} images")
            self.last_count, self.last_time = count, now


def _write_arrays(table: pd.DataFrame, size: int, mask_columns: tuple[str, ...], folder: Path,
                  workers: int, log: Callable[[str], None], optional_masks: bool = False, *,
                  preprocessing: Preprocessing = Preprocessing()) -> int:
    """Write the arrays and index of the rows that decode into `folder`; return how many."""
    folder.mkdir(parents=True)
    records = table.to_dict("records")
    n = len(records)
    # Written straight into .npy memmaps, so a large dataset never sits in memory twice.
    images = open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    masks = open_memmap(folder / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, len(mask_columns)))
    original_sizes = np.zeros((n, 2), dtype=np.int64)
    image_ids, problems = [], []
    jobs = ((record, mask_columns) for record in records)
    build_progress = _BuildProgress(n, log)
    for count, (record, (sample, row_problems)) in enumerate(
            zip(records, inspect_samples(jobs, size=size, workers=workers, optional_masks=optional_masks,
                                         preprocessing=preprocessing)), 1):
        build_progress.done(count)
        problems.extend(row_problems)
        if sample is None:
            continue
        row = len(image_ids)
        images[row], masks[row], original_sizes[row] = sample.image, sample.masks, sample.original_size
        image_ids.append(record["image_id"])
    images.flush(), masks.flush()
    del images, masks
    if len(image_ids) < n:
        _truncate_rows(folder / "images.npy", len(image_ids))
        _truncate_rows(folder / "masks.npy", len(image_ids))
    np.save(folder / "original_sizes.npy", original_sizes[: len(image_ids)])
    index = {
        "format_version": CACHE_FORMAT_VERSION,
        "layout": table.attrs.get("layout"),
        "size": size,
        "preprocessing": preprocessing.to_dict(),
        "mask_columns": list(mask_columns),
        "image_ids": image_ids,
        "problems": [asdict(p) for p in problems],
    }
    (folder / INDEX_FILE).write_text(json.dumps(index))
    return len(image_ids)


def _truncate_rows(path: Path, rows: int) -> None:
    """Keep the first `rows` rows of a .npy file (the decoded ones were written first)."""
    full = np.load(path, mmap_mode="r")
    kept_path = path.with_name("kept-" + path.name)
    kept = open_memmap(kept_path, mode="w+", dtype=full.dtype, shape=(rows, *full.shape[1:]))
    for start in range(0, rows, 256):
        end = min(start + 256, rows)
        kept[start:end] = full[start:end]
    kept.flush()
    del full, kept
    os.replace(kept_path, path)
