import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from derm.data.cache import build_cache
from derm.data.dataset import DermDataset, class_balanced_sampler, labels_from_diagnosis
from derm.data.formats import load_table
from derm.data.synthetic import write_synthetic_dataset
from derm.data.transforms import eval_transform, train_transform
from derm.errors import DataError
from derm.labels import CLASSES

SIZE = 32


@pytest.fixture(scope="module")
def ham(tmp_path_factory):
    """A 21-image synthetic HAM10000 folder, its table and its decode-once cache."""
    folder = tmp_path_factory.mktemp("dataset")
    table = load_table(write_synthetic_dataset(folder / "ham", n=21, size=(64, 48), seed=0))
    arrays = build_cache(table, SIZE, folder / "cache", ["lesion_mask_path"])
    return table, arrays


def test_items_have_the_documented_shapes_dtypes_and_values(ham):
    table, arrays = ham
    dataset = DermDataset.from_table(arrays, table, train_transform(SIZE, "default", seed=0))
    assert len(dataset) == 21
    for i in (0, 7, 20):
        item = dataset[i]
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, SIZE, SIZE) and item["mask"].dtype == torch.float32
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["label"].dtype == torch.int64 and item["label"].shape == ()
        assert CLASSES[item["label"]] == table["diagnosis"].iloc[i]
        assert arrays.image_ids[item["index"]] == table["image_id"].iloc[i]


def test_eval_items_are_the_cached_arrays_normalised(ham):
    table, arrays = ham
    item = DermDataset.from_table(arrays, table, eval_transform(SIZE))[3]
    row = arrays.row_of[table["image_id"].iloc[3]]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    restored = (item["image"] * std[:, None, None] + mean[:, None, None]) * 255
    np.testing.assert_allclose(restored.permute(1, 2, 0).numpy(), arrays.images[row], atol=1e-3)
    np.testing.assert_array_equal(item["mask"][0].numpy(), arrays.masks[row][..., 0])
    assert 0 < item["mask"].mean() < 1  # the synthetic lesion is drawn: neither empty nor full


def test_unlabelled_rows_and_no_masks(ham, tmp_path):
    table, _ = ham
    arrays = build_cache(table, SIZE, tmp_path / "cache")  # classification-free, mask-free cache
    dataset = DermDataset(arrays, rows=[2, 0], labels=None, transform=eval_transform(SIZE))
    item = dataset[0]
    assert item["label"].item() == -1 and item["index"] == 2
    assert item["mask"].shape == (0, SIZE, SIZE)


def test_dataloader_with_workers_gives_the_same_batches(ham):
    table, arrays = ham
    dataset = DermDataset.from_table(arrays, table, eval_transform(SIZE))
    in_process = next(iter(DataLoader(dataset, batch_size=21)))
    in_workers = next(iter(DataLoader(dataset, batch_size=21, num_workers=2)))
    for key in ("image", "mask", "label"):
        torch.testing.assert_close(in_workers[key], in_process[key])
    assert in_workers["index"].tolist() == in_process["index"].tolist()


def test_from_table_refuses_images_the_cache_left_out(ham):
    table, arrays = ham
    bigger = table.copy()
    bigger.loc[len(bigger)] = {**table.iloc[0].to_dict(), "image_id": "ISIC_9999999"}
    with pytest.raises(DataError, match="ISIC_9999999"):
        DermDataset.from_table(arrays, bigger, eval_transform(SIZE))


def test_labels_from_diagnosis_follow_the_classes_order():
    labels = labels_from_diagnosis(pd.Series(["MEL", "VASC", None, "NV"], dtype=object))
    assert labels.tolist() == [0, 6, -1, 1]


def test_balanced_sampler_draws_each_class_about_equally():
    labels = [1] * 900 + [0] * 80 + [5] * 20  # 45:4:1, like HAM10000's NV vs MEL vs DF
    sampler = class_balanced_sampler(labels, generator=torch.Generator().manual_seed(0))
    draws = np.bincount(np.asarray(labels)[list(sampler)], minlength=7)
    assert len(sampler) == 1000
    assert draws[[2, 3, 4, 6]].sum() == 0
    for count in draws[[0, 1, 5]]:
        assert abs(count - 1000 / 3) < 60  # binomial sd is about 15


def test_balanced_sampler_needs_every_label():
    with pytest.raises(DataError, match="1 of 3 have none"):
        class_balanced_sampler([0, 1, -1])
