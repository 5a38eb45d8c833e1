"""Metadata fusion: age, sex and site encoded with missing indicators, fused in the head, read by predict."""

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from derm.config import config_from_dict
from derm.data.formats import load_table
from derm.data.metadata import (FEATURE_NAMES, METADATA_FEATURES, SITES, encode_metadata, missing_metadata,
                                read_metadata_csv)
from derm.data.synthetic import METADATA_PROFILES, write_synthetic_dataset
from derm.errors import ConfigError
from derm.inference import Predictor
from derm.labels import CLASSES
from derm.models import DermModel, build_model
from derm.predict import main as predict_main
from derm.search_space.loading import load_search_space
from derm.search_space.space import resolve_trial_config
from derm.submission import predict_folder
from derm.training import fit

AGE, AGE_MISSING = FEATURE_NAMES.index("age"), FEATURE_NAMES.index("age_missing")
MALE, FEMALE, SEX_MISSING = (FEATURE_NAMES.index(f"sex_{s}") for s in ("male", "female", "missing"))
SITE_MISSING = FEATURE_NAMES.index("site_missing")


def site(name: str) -> int:
    return FEATURE_NAMES.index(f"site_{name}")


def model_config(task="classification", metadata=True, head="pooled", **data):
    return config_from_dict({
        "task": task, "data": {"image_size": 32, **data},
        "model": {"encoder": "resnet18", "encoder_weights": None, "head": head, "metadata": metadata},
    })


# --- encoding ---------------------------------------------------------------

def test_hand_made_rows_encode_with_missing_indicators(caplog):
    rows = pd.DataFrame({"age": [45, np.nan, "60", 200],
                         "sex": ["male", "unknown", "FEMALE ", None],
                         "localization": ["back", "elbow", "upper extremity", "elbow"]})
    with caplog.at_level(logging.WARNING, logger="derm.data.metadata"):
        vectors = encode_metadata(rows)

    assert vectors.shape == (4, METADATA_FEATURES) and vectors.dtype == np.float32
    assert vectors[0, AGE] == pytest.approx(0.45) and vectors[0, AGE_MISSING] == 0
    assert vectors[1, AGE] == 0 and vectors[1, AGE_MISSING] == 1
    assert vectors[2, AGE] == pytest.approx(0.60)
    assert vectors[3, AGE] == 0 and vectors[3, AGE_MISSING] == 1  # 200 is no human age: missing
    assert vectors[0, [MALE, FEMALE, SEX_MISSING]].tolist() == [1, 0, 0]
    assert vectors[1, [MALE, FEMALE, SEX_MISSING]].tolist() == [0, 0, 1]  # "unknown" is missing
    assert vectors[2, [MALE, FEMALE, SEX_MISSING]].tolist() == [0, 1, 0]  # case and spaces do not matter
    assert vectors[3, [MALE, FEMALE, SEX_MISSING]].tolist() == [0, 0, 1]
    assert vectors[0, site("back")] == 1 and vectors[0, SITE_MISSING] == 0
    assert vectors[2, site("upper extremity")] == 1
    for row in (1, 3):  # an unknown site is missing, with no other site set
        assert vectors[row, SITE_MISSING] == 1 and vectors[row, site("abdomen"):SITE_MISSING].sum() == 0
    # Each group is one-hot: exactly one of its entries is set.
    assert (vectors[:, [MALE, FEMALE, SEX_MISSING]].sum(axis=1) == 1).all()
    assert (vectors[:, site("abdomen"):SITE_MISSING + 1].sum(axis=1) == 1).all()
    # One warning per unknown value, naming it and how many images had it.
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert any("'elbow'" in w and "2 images" in w for w in warnings)
    assert any("age '200'" in w and "1 image)" in w for w in warnings)


def test_isic2019_columns_map_onto_the_vocabulary():
    rows = pd.DataFrame({"age_approx": [70.0, None], "sex": ["female", "male"],
                         "anatom_site_general": ["posterior torso", "head/neck"]})
    vectors = encode_metadata(rows)
    assert vectors[0, AGE] == pytest.approx(0.70)
    assert vectors[0, site("back")] == 1  # the same region as HAM10000's back
    assert vectors[1, site("head/neck")] == 1  # spans face, scalp, ear and neck: an entry of its own
    assert vectors[1, AGE_MISSING] == 1
    assert {"anterior torso", "head/neck", "acral"} <= set(SITES)


def test_a_table_without_metadata_columns_is_all_missing():
    vectors = encode_metadata(pd.DataFrame({"image_id": ["a", "b"]}))
    assert np.array_equal(vectors, missing_metadata(2))
    assert vectors[0, [AGE_MISSING, SEX_MISSING, SITE_MISSING]].tolist() == [1, 1, 1]
    assert vectors.sum() == 6


def test_read_metadata_csv_takes_image_or_image_id_and_keeps_the_first_row(tmp_path):
    path = tmp_path / "metadata.csv"
    path.write_text("image,age_approx,sex,anatom_site_general,extra\n"
                    "ISIC_1.jpg,55,male,lower extremity,x\nISIC_2,,unknown,,y\nISIC_1,80,female,face,z\n")
    table = read_metadata_csv(path)
    assert table.to_dict("records") == [
        {"image_id": "ISIC_1", "age": "55", "sex": "male", "localization": "lower extremity"},
        {"image_id": "ISIC_2", "age": None, "sex": None, "localization": None},
    ]


def test_load_table_keeps_ham10000_age_sex_and_localization(tmp_path):
    root = write_synthetic_dataset(tmp_path / "HAM10000", n=21, size=(32, 32), seed=3)
    written = pd.read_csv(root / "HAM10000_metadata.csv", dtype=str, keep_default_na=False).set_index("image_id")
    for row in load_table(root).to_dict("records"):
        expected = written.loc[row["image_id"]]
        assert row["sex"] == (None if expected["sex"] == "unknown" else expected["sex"])
        assert row["localization"] == (None if expected["localization"] == "unknown" else expected["localization"])
        assert row["age"] == (expected["age"] or None)


# --- synthetic data with a metadata signal ------------------------------------

def test_metadata_signal_changes_only_the_metadata_and_follows_the_diagnosis(tmp_path):
    plain = write_synthetic_dataset(tmp_path / "plain", n=40, size=(32, 32), seed=1)
    signal = write_synthetic_dataset(tmp_path / "signal", n=40, size=(32, 32), seed=1, metadata_signal=1.0)
    for image in sorted(plain.glob("HAM10000_images_part_*/*.jpg")):
        assert image.read_bytes() == (signal / image.relative_to(plain)).read_bytes()
    before = pd.read_csv(plain / "HAM10000_metadata.csv")
    after = pd.read_csv(signal / "HAM10000_metadata.csv")
    same = ["lesion_id", "image_id", "dx", "dx_type"]
    assert before[same].equals(after[same])
    assert before["age"].isna().equals(after["age"].isna())  # a missing age stays missing
    for dx, (_, _, sites) in METADATA_PROFILES.items():
        assert set(after.loc[after["dx"] == dx, "localization"]) <= set(sites)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        write_synthetic_dataset(tmp_path / "bad", n=40, size=(32, 32), metadata_signal=1.5)


# --- model -------------------------------------------------------------------

@pytest.mark.parametrize("head", ["pooled", "multiscale"])
def test_metadata_changes_the_class_logits_of_the_same_image(head):
    torch.manual_seed(0)
    model = build_model(model_config(head=head)).eval()
    image = torch.rand(2, 3, 32, 32)
    old = torch.from_numpy(encode_metadata(pd.DataFrame({"age": [80, 80], "sex": ["male"] * 2,
                                                         "localization": ["back"] * 2})))
    young = torch.from_numpy(encode_metadata(pd.DataFrame({"age": [20, 20], "sex": ["female"] * 2,
                                                           "localization": ["face"] * 2})))
    with torch.no_grad():
        logits_old, logits_young = model(image, old)["cls"], model(image, young)["cls"]
        logits_none = model(image)["cls"]
        logits_missing = model(image, torch.from_numpy(missing_metadata(2)))["cls"]
    assert model.uses_metadata
    assert logits_old.shape == (2, len(CLASSES))
    assert not torch.allclose(logits_old, logits_young)
    assert torch.equal(logits_none, logits_missing)  # no metadata at all is every value missing


@pytest.mark.parametrize("task, head", [("classification", "pooled"), ("classification", "multiscale"),
                                        ("multitask", "pooled")])
def test_a_model_without_metadata_keeps_its_state_dict_keys_and_ignores_metadata(task, head):
    plain = build_model(model_config(task, metadata=False, head=head)).eval()
    fused = build_model(model_config(task, metadata=True, head=head))
    head_keys = {key for key in plain.state_dict() if key.startswith("cls_head.")}
    # The heads' keys as they were before metadata fusion existed (SMP's head; the MLP's layers).
    assert head_keys == ({"cls_head.3.weight", "cls_head.3.bias"} if head == "pooled" else
                         {f"cls_head.mlp.{i}.{p}" for i in (0, 1, 4) for p in ("weight", "bias")})
    extra = set(fused.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(fused.state_dict())
    assert extra and all(key.startswith("cls_head.metadata_embedding.") for key in extra)
    assert not plain.uses_metadata
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(image)["cls"], plain(image, torch.ones(1, METADATA_FEATURES))["cls"])


def test_metadata_with_a_task_without_classification_head_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as error:
        model_config("segmentation", metadata=True)
    message = str(error.value)
    assert "\n" not in message and "model.metadata" in message and "segmentation" in message
    assert model_config("segmentation", metadata=False).model.metadata is False


def test_model_metadata_is_searchable(tmp_path):
    space = {"name": "fusion", "task": "classification",
             "model": {"encoder": "resnet18", "encoder_weights": None, "metadata": {"choice": [False, True]}},
             "sweep": {"search": "grid", "scheduler": "fifo"}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    loaded = load_search_space(tmp_path / "space.yaml")
    assert loaded.searched_keys == ("model.metadata",)
    assert resolve_trial_config(loaded, {"model.metadata": True}).model.metadata is True
    assert resolve_trial_config(loaded, {"model.metadata": False}).model.metadata is False
    space["task"] = "segmentation"
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError, match="model.metadata needs a classification head"):
        load_search_space(tmp_path / "space.yaml")


# --- training and prediction ---------------------------------------------------

@pytest.fixture(scope="module")
def signal_demo(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("signal") / "HAM10000", n=40, size=(32, 32),
                                   seed=0, metadata_signal=1.0)


@pytest.fixture(scope="module")
def metadata_fit(signal_demo, tmp_path_factory):
    """One epoch of a classifier with model.metadata: true; the metadata each training forward saw."""
    folder = tmp_path_factory.mktemp("fit")
    cfg = config_from_dict({
        "name": "fusion", "task": "classification", "out_dir": str(folder),
        "data": {"root": str(signal_demo), "image_size": 32, "augment": "none", "num_workers": 0},
        "model": {"encoder": "resnet18", "encoder_weights": None, "metadata": True},
        "optim": {"lr": 1e-3, "scheduler": "none"},
        "train": {"epochs": 1, "batch_size": 8, "seed": 0},
        "mlflow": {"enabled": False},
    })
    seen = []
    original = DermModel.forward

    def spy(self, x, metadata=None):
        if self.training:
            seen.append(metadata)
        return original(self, x, metadata=metadata)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DermModel, "forward", spy)
        result = fit(cfg, folder / "run")
    return result, seen


def test_a_fit_with_metadata_feeds_every_batch_its_metadata(metadata_fit, signal_demo):
    result, seen = metadata_fit
    assert result.best_checkpoint.is_file()
    assert seen and all(m is not None and m.shape[1:] == (METADATA_FEATURES,) for m in seen)
    batches = torch.cat(seen)
    assert batches[:, AGE_MISSING].mean() < 0.5  # the synthetic ages are there, mostly
    known = encode_metadata(load_table(signal_demo))
    # Each vector the model saw is the encoding of one of the dataset's images.
    assert all(any(np.array_equal(vector, row) for row in known) for vector in batches.numpy())


def copy_images(root, folder, count=4) -> list[str]:
    folder.mkdir()
    images = sorted(root.glob("HAM10000_images_part_*/*.jpg"))[:count]
    for image in images:
        shutil.copy(image, folder / image.name)
    return [image.stem for image in images]


def test_predict_reads_the_metadata_csv_and_names_images_without_a_row(metadata_fit, signal_demo, tmp_path):
    result, _ = metadata_fit
    ids = copy_images(signal_demo, tmp_path / "images")
    rows = pd.DataFrame({"image_id": ids[:2], "age": [85, 15], "sex": ["male", "female"],
                         "localization": ["back", "face"]})
    rows.to_csv(tmp_path / "images" / "metadata.csv", index=False)
    predictor = Predictor.from_checkpoint(result.best_checkpoint, device="cpu")
    assert predictor.uses_metadata
    lines = []
    predict_folder(predictor, tmp_path / "images", tmp_path / "out", overlays=False, log=lines.append)

    assert len(lines) == 1
    assert lines[0].startswith("2 of 4 images have no row in") and f"{ids[2]}, {ids[3]}" in lines[0]
    written = pd.read_csv(tmp_path / "out" / "diagnosis.csv").set_index("image")
    for image_id, record in zip(ids[:2], rows.to_dict("records")):
        expected = predictor.predict(tmp_path / "images" / f"{image_id}.jpg", metadata=record).probabilities
        assert written.loc[image_id, list(CLASSES)].tolist() == pytest.approx([expected[c] for c in CLASSES])
    for image_id in ids[2:]:  # no row: encoded as missing, the same as no metadata at all
        expected = predictor.predict(tmp_path / "images" / f"{image_id}.jpg").probabilities
        assert written.loc[image_id, list(CLASSES)].tolist() == pytest.approx([expected[c] for c in CLASSES])
    image = tmp_path / "images" / f"{ids[0]}.jpg"
    old = predictor.predict(image, metadata={"age": 85, "sex": "male", "localization": "back"}).probabilities
    young = predictor.predict(image, metadata={"age": 15, "sex": "female", "localization": "face"}).probabilities
    assert old != young


def test_predict_without_a_metadata_csv_says_so_in_one_line(metadata_fit, signal_demo, tmp_path, capsys):
    result, _ = metadata_fit
    copy_images(signal_demo, tmp_path / "images", count=2)
    code = predict_main([str(result.best_checkpoint), str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                         "--device", "cpu", "--no-overlays", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0
    assert [line for line in err.splitlines() if "metadata" in line] == [
        f"no metadata CSV ({tmp_path / 'images' / 'metadata.csv'}, or give --metadata FILE): predictions use "
        f"missing age, sex and site for all 2 images"]
    assert len(pd.read_csv(tmp_path / "out" / "diagnosis.csv")) == 2

    # --metadata names a file elsewhere; a missing one is a usage error.
    pd.DataFrame({"image": ["x"], "age": [50]}).to_csv(tmp_path / "other.csv", index=False)
    code = predict_main([str(result.best_checkpoint), str(tmp_path / "images"), "--out", str(tmp_path / "out2"),
                         "--device", "cpu", "--no-overlays", "--quiet", "--metadata", str(tmp_path / "other.csv")])
    assert code == 0 and "2 of 2 images have no row in" in capsys.readouterr().err
    code = predict_main([str(result.best_checkpoint), str(tmp_path / "images"), "--out", str(tmp_path / "out3"),
                         "--device", "cpu", "--quiet", "--metadata", str(tmp_path / "absent.csv")])
    assert code == 2 and "absent.csv: no such file" in capsys.readouterr().err
