"""Session-wide demo datasets, written once in the real on-disk layouts.

Every test that trains reads these instead of generating its own data; the
decode-once cache lives in the session's temp folder, never in ~/.cache.
"""

import os

import pytest

from derm.data.synth import write_synthetic_dataset


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep the decode-once cache and MLflow stores of tests out of the user's home."""
    folder = tmp_path_factory.mktemp("derm-cache")
    old = os.environ.get("DERM_CACHE_DIR")
    os.environ["DERM_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("DERM_CACHE_DIR", None)
    else:
        os.environ["DERM_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def ham_demo(tmp_path_factory):
    """A HAM10000 (Dataverse layout) synthetic dataset: 100 images at 64x64."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("ham") / "HAM10000", "ham10000",
                                   n=100, size=(64, 64), seed=0)


@pytest.fixture(scope="session")
def task2_demo(tmp_path_factory):
    """An ISIC 2018 Task 2 synthetic dataset: 48 images at 64x64."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("task2") / "ISIC2018", "isic2018-task2",
                                   n=48, size=(64, 64), seed=0)
