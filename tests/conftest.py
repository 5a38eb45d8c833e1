"""Session-wide demo datasets, written once in the real on-disk layouts.

Every test that trains reads these instead of generating its own data; the
decode-once cache lives in the session's temp folder, never in ~/.cache.
"""

import os

import pytest

from derm.data.synthetic import write_synthetic_dataset


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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, so concurrent test sessions do not collide."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_collection_modifyitems(items):
    """Tests that run a sweep (here or through `finished_sweep`) are `slow`: -m "not slow" skips them."""
    for item in items:
        if "finished_sweep" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def finished_sweep(ham_demo, tmp_path_factory):
    """A finished multitask sweep folder on ``ham_demo``, run by ``python -m derm.sweep``.

    Grid over three encoders, 2 epochs, FIFO: two trials complete and the third
    (``tu-not_a_timm_model``) fails, so exports and retrains see every kind of row.
    """
    import subprocess
    import sys

    from spaces import FAILING_ENCODER, write_space

    folder = tmp_path_factory.mktemp("finished-sweep")
    space = write_space(folder, ham_demo, "finished", encoders=("resnet18", "mobilenet_v2", FAILING_ENCODER),
                        max_concurrent=2)
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(space),
                           "--out", str(folder / "sweeps"), "--dashboard-port", str(free_port())],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    (sweep_dir,) = (folder / "sweeps" / "finished").iterdir()
    return sweep_dir


@pytest.fixture
def official_classification(monkeypatch):
    """The official isic-challenge-scoring Task 3 scorer: (truth_csv, pred_csv) -> its score."""
    import pandas as pd
    from isic_challenge_scoring.classification import (
        ClassificationMetric,
        ClassificationScore,
    )

    # isic-challenge-scoring 5.6 calls DataFrame.applymap, which pandas 3 removed.
    if not hasattr(pd.DataFrame, "applymap"):
        monkeypatch.setattr(pd.DataFrame, "applymap", pd.DataFrame.map, raising=False)

    def score(truth_csv, pred_csv):
        return ClassificationScore.from_file(truth_csv, pred_csv, ClassificationMetric.BALANCED_ACCURACY)
    return score
