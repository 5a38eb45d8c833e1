import logging
import multiprocessing
import os
import pickle
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from filelock import FileLock
from PIL import Image

from derm import progress as progress_module
from derm.data import cache as cache_module
from derm.data.cache import build_cache, cache_key, default_cache_dir, open_cache
from derm.data.decoding import inspect_sample
from derm.data.formats import load_table
from derm.data.synthetic import write_synthetic_dataset
from derm.progress import set_quiet

SIZE = 32
MASKS = ["lesion_mask_path", "attribute_globules_path"]


def write_dataset(folder: Path, n: int = 5) -> pd.DataFrame:
    """n small JPEGs of different sizes with two 0/255 masks each, as a dataset table."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        image_id = f"ISIC_{k:07d}"
        width, height = 80 + 8 * k, 60 + 4 * k
        image_path = folder / f"{image_id}.jpg"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(image_path)
        row = {"image_id": image_id, "image_path": str(image_path), "lesion_id": image_id, "diagnosis": "NV"}
        for column in MASKS:
            mask_path = folder / f"{image_id}_{column}.png"
            Image.fromarray(((rng.random((height, width)) > 0.5) * 255).astype(np.uint8)).save(mask_path)
            row[column] = str(mask_path)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["layout"] = "ham10000"
    return table


@pytest.fixture
def table(tmp_path):
    return write_dataset(tmp_path / "data")


def test_cache_holds_each_image_and_mask_resized_with_its_original_size(table, tmp_path):
    arrays = build_cache(table, SIZE, tmp_path / "cache", MASKS)
    assert arrays.built and len(arrays) == 5 and arrays.problems == ()
    assert arrays.images.shape == (5, SIZE, SIZE, 3) and arrays.images.dtype == np.uint8
    assert arrays.masks.shape == (5, SIZE, SIZE, 2) and set(np.unique(arrays.masks)) == {0, 1}
    assert isinstance(arrays.images, np.memmap)
    for k, row in enumerate(table.to_dict("records")):
        assert arrays.row_of[row["image_id"]] == k
        sample, _ = inspect_sample(row, MASKS, size=SIZE)
        np.testing.assert_array_equal(arrays.images[k], sample.image)
        np.testing.assert_array_equal(arrays.masks[k], sample.masks)
        assert tuple(arrays.original_sizes[k]) == (60 + 4 * k, 80 + 8 * k)


def test_second_pass_decodes_nothing(table, tmp_path, monkeypatch):
    first = build_cache(table, SIZE, tmp_path / "cache", MASKS)
    images, masks, sizes = np.array(first.images), np.array(first.masks), np.array(first.original_sizes)

    # The same table again: found by its key, and no file is opened.
    def no_decoding(*args, **kwargs):
        raise AssertionError("the second pass opened an image file")

    monkeypatch.setattr(Image, "open", no_decoding)
    second = build_cache(table, SIZE, tmp_path / "cache", MASKS)
    assert not second.built and second.directory == first.directory
    np.testing.assert_array_equal(second.images, images)

    # Without any source file, the cache folder still gives back every array.
    for path in [*table["image_path"], *table[MASKS[0]], *table[MASKS[1]]]:
        os.remove(path)
    reopened = open_cache(first.directory)
    assert reopened.image_ids == first.image_ids and reopened.mask_columns == tuple(MASKS)
    np.testing.assert_array_equal(reopened.images, images)
    np.testing.assert_array_equal(reopened.masks, masks)
    np.testing.assert_array_equal(reopened.original_sizes, sizes)


def test_key_changes_with_size_mask_columns_and_any_file(table):
    key = cache_key(table, SIZE, MASKS)
    assert cache_key(table, SIZE, MASKS) == key
    assert cache_key(table, 2 * SIZE, MASKS) != key
    assert cache_key(table, SIZE, MASKS[:1]) != key
    other_layout = table.copy()
    other_layout.attrs["layout"] = "ham10000-kaggle"
    assert cache_key(other_layout, SIZE, MASKS) != key
    mask = Path(table.loc[3, "lesion_mask_path"])
    Image.fromarray(np.zeros((72, 104), np.uint8)).save(mask)  # new content, same name
    assert cache_key(table, SIZE, MASKS) != key


def test_a_changed_file_rebuilds(table, tmp_path):
    first = build_cache(table, SIZE, tmp_path / "cache", MASKS)
    Image.new("RGB", (80, 60), (255, 0, 0)).save(table.loc[0, "image_path"])
    second = build_cache(table, SIZE, tmp_path / "cache", MASKS)
    assert second.built and second.directory != first.directory
    assert np.abs(second.images[0].astype(int) - [255, 0, 0]).max() <= 3  # JPEG rounding


def test_rows_that_fail_to_decode_are_left_out_and_reported(table, tmp_path):
    broken = Path(table.loc[1, "image_path"])
    broken.write_bytes(broken.read_bytes()[:400])
    small_mask = Path(table.loc[3, "attribute_globules_path"])
    Image.new("L", (10, 10)).save(small_mask)
    expected_problems = [p for row in table.to_dict("records") for p in inspect_sample(row, MASKS)[1]]

    arrays = build_cache(table, SIZE, tmp_path / "cache", MASKS)

    assert list(arrays.problems) == expected_problems and len(expected_problems) == 2
    assert {p.path for p in arrays.problems} == {str(broken), str(small_mask)}
    assert arrays.image_ids == ("ISIC_0000000", "ISIC_0000002", "ISIC_0000004")
    assert arrays.images.shape[0] == arrays.masks.shape[0] == arrays.original_sizes.shape[0] == 3
    sample, _ = inspect_sample(table.loc[4].to_dict(), MASKS, size=SIZE)
    np.testing.assert_array_equal(arrays.images[arrays.row_of["ISIC_0000004"]], sample.image)
    assert open_cache(arrays.directory).problems == arrays.problems


def test_cache_without_mask_columns_has_zero_mask_channels(table, tmp_path):
    arrays = build_cache(table, SIZE, tmp_path / "cache")
    assert arrays.masks.shape == (5, SIZE, SIZE, 0)


def test_pickling_sends_the_folder_not_the_arrays(table, tmp_path):
    arrays = build_cache(table, SIZE, tmp_path / "cache", MASKS)
    arrays.images[0]  # opened here: must not be copied into the pickle
    data = pickle.dumps(arrays)
    assert len(data) < arrays.images.nbytes / 4
    copy = pickle.loads(data)
    np.testing.assert_array_equal(copy.images, arrays.images)
    assert copy.row_of == arrays.row_of


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DERM_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("DERM_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "derm"


def build_in_process(table, cache_dir, barrier):
    barrier.wait()  # start both builds at the same moment
    arrays = build_cache(table, SIZE, cache_dir, MASKS)
    return arrays.built, str(arrays.directory), np.array(arrays.images).tobytes(), np.array(arrays.masks).tobytes()


def test_concurrent_builds_decode_once_and_share_the_result(table, tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(2)
    with context.Pool(2) as pool:
        results = pool.starmap(build_in_process, [(table, tmp_path / "cache", barrier)] * 2)
    assert sorted(built for built, *_ in results) == [False, True]
    assert results[0][1:] == results[1][1:]
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if ".building" in p.name]
    assert leftovers == []


def test_build_leaves_no_temporary_folder_when_decoding_crashes(table, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cache_module, "inspect_samples", crash)
    with pytest.raises(RuntimeError):
        build_cache(table, SIZE, tmp_path / "cache", MASKS)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_a_build_removes_folders_left_by_killed_builds_and_keeps_live_ones(table, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    key = cache_key(table, SIZE, MASKS)
    other_key, live_key = "0" * 24, "1" * 24  # two other caches' builds: one killed, one running
    stale = [cache_dir / f"{key}.building-99999", cache_dir / f"{other_key}.building-12345"]
    live = cache_dir / f"{live_key}.building-4242"
    for folder in (*stale, live):
        folder.mkdir(parents=True)
        (folder / "images.npy").write_bytes(b"\0" * 1000)
    live_builder = FileLock(str(cache_dir / live_key) + ".lock")  # a separate lock object conflicts like a process

    with live_builder, caplog.at_level(logging.INFO, logger="derm.data.cache"):
        arrays = build_cache(table, SIZE, cache_dir, MASKS)
        assert live.is_dir()  # its lock is held: someone is still writing it

    assert not any(folder.exists() for folder in stale)
    assert arrays.built and len(arrays) == 5 and arrays.images.shape == (5, SIZE, SIZE, 3)
    assert build_cache(table, SIZE, cache_dir, MASKS).directory == arrays.directory
    removed = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert removed == [f"decode cache: removed {folder}, left behind by a build that did not finish"
                       for folder in sorted(stale)]


def test_waiting_for_another_build_is_logged_with_how_long_it_took(table, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    final = cache_dir / cache_key(table, SIZE, MASKS)
    held, release = threading.Event(), threading.Event()

    def other_process():
        with FileLock(str(final) + ".lock"):  # its own lock object: conflicts like another process
            held.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=other_process)
    holder.start()
    held.wait(timeout=30)
    threading.Timer(1.5, release.set).start()
    messages = []
    try:
        arrays = build_cache(table, SIZE, cache_dir, MASKS, log=messages.append)
    finally:
        release.set()
        holder.join()

    assert arrays.built and len(arrays) == 5  # the holder built nothing, so this call did
    assert len(messages) == 4, messages
    waiting = re.fullmatch(rf"decode cache: waiting for another process building {re.escape(str(final))} "
                           r"\(started waiting at (\d\d):(\d\d):(\d\d)\)", messages[0])
    assert waiting, messages[0]
    waited = re.fullmatch(r"decode cache: waited (\d+) s for another process's build", messages[1])
    assert waited and 1 <= int(waited[1]) <= 5, messages[1]
    assert messages[2] == f"decode cache: decoding 5 images at {SIZE}x{SIZE} into {final}"
    assert re.fullmatch(r"decode cache: built 5 images in \d+\.\d s, 0 left out", messages[3]), messages[3]


def test_the_building_process_logs_start_and_end_and_what_it_left_out(table, tmp_path):
    broken = Path(table.loc[1, "image_path"])
    broken.write_bytes(broken.read_bytes()[:400])
    messages = []
    arrays = build_cache(table, SIZE, tmp_path / "cache", MASKS, log=messages.append)
    assert messages[0] == f"decode cache: decoding 5 images at {SIZE}x{SIZE} into {arrays.directory}"
    assert re.fullmatch(r"decode cache: built 4 images in \d+\.\d s, 1 left out", messages[1])
    assert len(messages) == 2
    messages.clear()
    build_cache(table, SIZE, tmp_path / "cache", MASKS, log=messages.append)
    assert messages == []  # found in the cache: nothing to say



def test_a_build_logs_how_far_it_got_at_a_modest_rate(tmp_path, monkeypatch):
    table = load_table(write_synthetic_dataset(tmp_path / "HAM10000", n=60, size=(32, 32)))
    monkeypatch.setattr(progress_module, "_quiet", False)  # undone after the test, as --quiet below
    # At the default rate (ten seconds at least between lines) a build of a second says only start and end.
    messages = []
    build_cache(table, SIZE, tmp_path / "cache", ["lesion_mask_path"], log=messages.append)
    assert [m.split()[2] for m in messages] == ["decoding", "built"], messages

    # Every tenth of the images, however fast: the k/N lines between the start and the end.
    monkeypatch.setattr(cache_module, "PROGRESS_SECONDS", 0.0)
    messages.clear()
    arrays = build_cache(table, SIZE, tmp_path / "other-cache", ["lesion_mask_path"], log=messages.append)
    assert messages[0] == f"decode cache: decoding 60 images at {SIZE}x{SIZE} into {arrays.directory}"
    assert messages[1:-1] == [f"decode cache: {k}/60 images" for k in range(6, 60, 6)]
    assert re.fullmatch(r"decode cache: built 60 images in \d+\.\d s, 0 left out", messages[-1])

    # --quiet (derm.progress) keeps the start and end lines and drops the counts.
    set_quiet(True)
    messages.clear()
    build_cache(table, SIZE, tmp_path / "quiet-cache", ["lesion_mask_path"], log=messages.append)
    assert [m.split()[2] for m in messages] == ["decoding", "built"], messages
