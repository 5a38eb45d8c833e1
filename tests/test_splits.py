"""derm.data.splits: lesion-aware stratified splits, their CSV files and their application."""

from pathlib import Path

import pandas as pd
import pytest

from derm.data.splits import SPLITS, apply_split, make_split, read_split, write_split
from derm.errors import ConfigError, DataError
from derm.labels import CLASSES, DX_TO_CLASS

REAL_METADATA = Path(__file__).parent / "data" / "real" / "ham10000" / "HAM10000_metadata.csv"


@pytest.fixture(scope="module")
def ham_table() -> pd.DataFrame:
    """The real HAM10000 metadata (10,015 images, 7,470 lesions) as a dataset table's split columns."""
    metadata = pd.read_csv(REAL_METADATA)
    return pd.DataFrame({"image_id": metadata["image_id"], "lesion_id": metadata["lesion_id"],
                         "diagnosis": metadata["dx"].map(DX_TO_CLASS)}).sort_values("image_id", ignore_index=True)


@pytest.fixture(scope="module")
def ham_split(ham_table) -> pd.Series:
    return make_split(ham_table)


def tiny_table(n: int = 20, lesion_of=lambda i: f"L{i:02d}", diagnosis_of=lambda i: CLASSES[i % 7]) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(n)],
                         "lesion_id": [lesion_of(i) for i in range(n)],
                         "diagnosis": [diagnosis_of(i) for i in range(n)]})


def test_real_ham10000_split_meets_the_bar(ham_table, ham_split):
    assert len(ham_table) == 10_015 and ham_table["lesion_id"].nunique() == 7_470
    assert ham_split.index.tolist() == ham_table["image_id"].tolist()
    assert set(ham_split) == set(SPLITS)

    lesion = ham_table.set_index("image_id")["lesion_id"]
    splits_per_lesion = pd.DataFrame({"lesion": lesion[ham_split.index], "split": ham_split}).groupby("lesion")["split"].nunique()
    assert splits_per_lesion.max() == 1

    sizes = ham_split.value_counts(normalize=True)
    for name, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        assert abs(sizes[name] - share) < 0.02, (name, sizes[name])

    diagnosis = ham_table.set_index("image_id")["diagnosis"][ham_split.index]
    whole = diagnosis.value_counts(normalize=True)
    for name in SPLITS:
        part = diagnosis[ham_split == name].value_counts(normalize=True).reindex(whole.index, fill_value=0)
        assert (part - whole).abs().max() < 0.015, (name, (part - whole).abs().max())


def test_split_is_seeded_and_independent_of_row_order(ham_table, ham_split):
    shuffled = ham_table.sample(frac=1, random_state=7)
    assert make_split(shuffled).equals(ham_split)
    other_seed = make_split(ham_table, seed=1)
    assert not other_seed.equals(ham_split)
    assert make_split(ham_table, seed=1).equals(other_seed)


def test_fractions_are_counted_in_images():
    # 10 one-image lesions of one class: 20 % + 20 % is exactly 2 + 2 images.
    table = tiny_table(10, diagnosis_of=lambda i: "NV")
    counts = make_split(table, val_fraction=0.2, test_fraction=0.2).value_counts()
    assert counts.to_dict() == {"train": 6, "val": 2, "test": 2}


def test_tiny_table_gets_every_split():
    for seed in range(10):
        split = make_split(tiny_table(20), seed=seed)
        assert set(split) == set(SPLITS)
    # Three lesions of one image each: one per split.
    assert sorted(make_split(tiny_table(3)).tolist()) == ["test", "train", "val"]


def test_tiny_table_keeps_lesions_together():
    table = tiny_table(20, lesion_of=lambda i: f"L{i // 3}", diagnosis_of=lambda i: CLASSES[(i // 3) % 7])
    split = make_split(table, seed=3)
    assert set(split) == set(SPLITS)
    assert (pd.DataFrame({"lesion": table["lesion_id"].to_numpy(), "split": split.to_numpy()})
            .groupby("lesion")["split"].nunique().max() == 1)


def test_unlabelled_table_and_zero_fraction():
    table = tiny_table(40, diagnosis_of=lambda i: None)
    counts = make_split(table).value_counts()
    assert counts.to_dict() == {"train": 28, "val": 6, "test": 6}
    assert set(make_split(table, test_fraction=0)) == {"train", "val"}


def test_invalid_fractions_and_empty_table():
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction must be below 1"):
        make_split(tiny_table(), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="test_fraction must be in \\[0, 1\\), got -0.1"):
        make_split(tiny_table(), test_fraction=-0.1)
    with pytest.raises(DataError, match="cannot split an empty dataset table"):
        make_split(tiny_table(0))


def test_write_read_round_trip(tmp_path, ham_split):
    path = tmp_path / "splits" / "split.csv"
    write_split(ham_split, path)
    assert path.read_text().splitlines()[0] == "image_id,split"
    again = read_split(path)
    assert again.equals(ham_split)
    assert again.index.name == "image_id" and again.name == "split"


def test_read_split_rejects_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_split(tmp_path / "missing.csv")
    bad_value = tmp_path / "bad_value.csv"
    bad_value.write_text("image_id,split\nISIC_0000001,training\n")
    with pytest.raises(DataError, match="split value\\(s\\) 'training'; allowed: train, val, test"):
        read_split(bad_value)
    bad_columns = tmp_path / "bad_columns.csv"
    bad_columns.write_text("image,fold\nISIC_0000001,train\n")
    with pytest.raises(DataError, match="lacks column\\(s\\) image_id, split"):
        read_split(bad_columns)
    duplicated = tmp_path / "duplicated.csv"
    duplicated.write_text("image_id,split\nISIC_0000001,train\nISIC_0000001,val\n")
    with pytest.raises(DataError, match="more than once: ISIC_0000001"):
        read_split(duplicated)


def test_apply_split_partitions_the_table(ham_table, ham_split):
    parts = apply_split(ham_table, ham_split)
    assert list(parts) == list(SPLITS)
    assert sum(len(part) for part in parts.values()) == len(ham_table)
    for name, part in parts.items():
        assert set(part["image_id"]) == set(ham_split.index[ham_split == name])
        assert list(part.columns) == list(ham_table.columns)


def test_apply_split_refuses_a_split_of_another_table():
    table = tiny_table(20)
    split = make_split(table)
    with pytest.raises(DataError, match="split names 1 image\\(s\\) that are not in the dataset table \\(ISIC_0000019\\)"):
        apply_split(table.iloc[:-1], split)
    with pytest.raises(DataError, match="1 image\\(s\\) of the dataset table are not in the split \\(ISIC_0000000\\)"):
        apply_split(table, split.iloc[1:])
