"""An ensemble's model.pt (derm.checkpoint.save_ensemble): one file, loaded by Predictor and derm.predict
as the weighted mean of its members' probabilities."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from derm.checkpoint import TrainingCheckpoint, save_ensemble
from derm.config import config_from_dict
from derm.errors import ConfigError, DataError
from derm.inference import Predictor, load_members, load_model
from derm.labels import CLASSES
from derm.models import build_model
from derm.predict import main

TINY = "tu-mobilenetv3_small_050"  # builds in a second without weights, as in test_models


def tiny_checkpoint(path, seed, image_size=32):
    cfg = config_from_dict({"task": "multitask", "data": {"image_size": image_size},
                            "model": {"arch": "Unet", "encoder": TINY, "encoder_weights": None}})
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SMP's deprecation notes about timm- encoders
        model = build_model(cfg, probe=False, pretrained=False)
    with torch.no_grad():  # untrained BatchNorm statistics would make every member predict alike
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return TrainingCheckpoint(model=model.state_dict(), config=cfg.to_dict(), epoch=1).save(path)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    folder = tmp_path_factory.mktemp("members")
    return [tiny_checkpoint(folder / "a.pt", seed=1), tiny_checkpoint(folder / "b.pt", seed=2)]


@pytest.fixture(scope="module")
def weighted_ensemble(members, tmp_path_factory):
    path = tmp_path_factory.mktemp("ensemble") / "model.pt"
    return save_ensemble(members, path, weights=[3, 1], test_metrics={"balanced_accuracy": 0.5})


def images(seed=0, n=2):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def test_ensemble_probabilities_are_the_weighted_mean_of_its_members(members, weighted_ensemble, tta="flips"):
    first, second = (Predictor.from_checkpoint(path, device="cpu", tta=tta) for path in members)
    ensemble = Predictor.from_checkpoint(weighted_ensemble, device="cpu", tta=tta)
    assert len(ensemble.models) == 2 and ensemble.weights == pytest.approx([0.75, 0.25])
    batch = torch.stack([ensemble.to_tensor(pixels) for pixels in images()])
    a, b, got = first.probabilities(batch), second.probabilities(batch), ensemble.probabilities(batch)
    assert not torch.allclose(a["cls"], b["cls"], atol=1e-3)  # the members really differ
    for head in ("cls", "seg"):
        assert torch.allclose(got[head], 0.75 * a[head] + 0.25 * b[head], atol=1e-6)


def test_ensemble_file_loads_safely_and_old_readers_see_its_first_member(members, weighted_ensemble):
    saved = TrainingCheckpoint.load(weighted_ensemble)  # weights_only=True inside
    first = TrainingCheckpoint.load(members[0])
    assert saved.ensemble_weights == pytest.approx([0.75, 0.25])
    assert saved.test_metrics == {"balanced_accuracy": 0.5}
    assert all(torch.equal(saved.model[k], first.model[k]) for k in first.model)  # `model` is member 1
    assert saved.config == first.config
    assert [config for _, config in saved.members()] == [first.config, TrainingCheckpoint.load(members[1]).config]
    # `model` and member 1 share their tensors in the file: two members, not three, worth of weights.
    assert weighted_ensemble.stat().st_size < 2.3 * members[0].stat().st_size
    models, weights, cfg = load_members(weighted_ensemble, torch.device("cpu"))
    assert len(models) == 2 and weights == pytest.approx([0.75, 0.25]) and cfg.data.image_size == 32
    with pytest.raises(DataError, match="ensemble of 2 models"):
        load_model(weighted_ensemble, torch.device("cpu"))


def test_equal_weights_by_default_and_members_of_weight_zero_are_left_out(members, tmp_path):
    equal = TrainingCheckpoint.load(save_ensemble(members, tmp_path / "equal.pt"))
    assert equal.member_weights() == [0.5, 0.5] and len(equal.members()) == 2
    # Caruana selection gives 0 to members it never picked: one member left is a plain model file.
    single = TrainingCheckpoint.load(save_ensemble(members, tmp_path / "single.pt", weights=[0, 2]))
    assert single.ensemble is None and single.member_weights() == [1.0]
    second = TrainingCheckpoint.load(members[1])
    assert all(torch.equal(single.model[k], second.model[k]) for k in second.model)
    model, _ = load_model(tmp_path / "single.pt", torch.device("cpu"))
    assert isinstance(model, torch.nn.Module)


def test_members_must_read_the_same_input(members, tmp_path):
    larger = tiny_checkpoint(tmp_path / "c.pt", seed=3, image_size=64)
    with pytest.raises(ConfigError, match="data.image_size"):
        save_ensemble([members[0], larger], tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="2 weights"):
        save_ensemble(members, tmp_path / "bad.pt", weights=[1, -1])


def test_predict_command_runs_an_ensemble_with_tta(weighted_ensemble, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name, (height, width) in {"ISIC_1": (48, 64), "ISIC_2": (37, 29)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    out = tmp_path / "predictions"
    # multicrop decodes at the 40 px canvas, through predict_folder too.
    code = main([str(weighted_ensemble), str(folder), "--out", str(out), "--tta", "multicrop:4", "--device", "cpu",
                 "--no-overlays", "--quiet"])
    assert code == 0
    table = pd.read_csv(out / "diagnosis.csv").set_index("image")
    ensemble = Predictor.from_checkpoint(weighted_ensemble, device="cpu", tta="multicrop:4")
    for name in ("ISIC_1", "ISIC_2"):
        expected = ensemble.predict(folder / f"{name}.png").probabilities
        assert table.loc[name, list(CLASSES)].to_numpy(float) == pytest.approx(
            [expected[c] for c in CLASSES], abs=1e-6)
        with Image.open(out / f"{name}_segmentation.png") as mask:
            assert mask.size == Image.open(folder / f"{name}.png").size
