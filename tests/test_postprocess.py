"""derm.postprocess: largest component, filled holes, choices on validation, and their use in Predictor."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from derm.calibration import apply_temperature

from derm.checkpoint import TrainingCheckpoint
from derm.config import config_from_dict
from derm.inference import Predictor, load_image
from derm.labels import ATTRIBUTES, CLASSES
from derm.models import build_model
from derm.postprocess import (
    POSTPROCESS_MODES,
    MaskPostprocess,
    apply_postprocess,
    choose_attribute_thresholds,
    choose_lesion_postprocess,
    fill_holes,
    largest_component,
)
from derm.predictions import masks_at_size, probabilities_at_size


def blob_with_hole_and_speck(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(truth, probabilities): truth a filled 12 x 12 square; the prediction (0.9 inside) misses a
    2 x 2 hole in it and adds a 3 x 3 speck far away."""
    truth = np.zeros((size, size), bool)
    truth[4:16, 4:16] = True
    probabilities = np.full((size, size), 0.1)
    probabilities[truth] = 0.9
    probabilities[9:11, 9:11] = 0.1  # the hole
    probabilities[25:28, 25:28] = 0.9  # the speck
    return truth, probabilities


def test_largest_component_keeps_the_biggest_blob_and_drops_the_smaller():
    mask = np.zeros((8, 8), bool)
    mask[1:4, 1:4] = True           # 9 pixels
    mask[4, 4] = True               # touches (3, 3) at a corner: the same 8-connected blob
    mask[6:8, 6:8] = True           # 4 pixels, apart
    expected = np.zeros((8, 8), bool)
    expected[1:4, 1:4] = True
    expected[4, 4] = True
    assert np.array_equal(largest_component(mask), expected)
    assert not largest_component(np.zeros((4, 4), bool)).any()  # empty stays empty


def test_fill_holes_fills_an_enclosed_hole_only():
    ring = np.zeros((6, 6), bool)
    ring[1:5, 1:5] = True
    ring[2:4, 2:4] = False                  # an enclosed 2 x 2 hole
    notch = ring.copy()
    notch[0:3, 2] = False                   # a notch open to the border is no hole
    filled = fill_holes(ring)
    assert filled[1:5, 1:5].all() and filled.sum() == 16
    assert np.array_equal(fill_holes(notch)[0:3, 2], [False, False, False])


def test_apply_postprocess_modes_in_order():
    truth, probabilities = blob_with_hole_and_speck()
    mask = probabilities > 0.5
    assert np.array_equal(apply_postprocess(mask, "none"), mask)
    assert apply_postprocess(mask, "largest_component").sum() == 144 - 4
    assert np.array_equal(apply_postprocess(mask, "largest_component+fill_holes"), truth)
    with pytest.raises(ValueError, match="largest_component"):
        apply_postprocess(mask, "biggest")


def test_mask_postprocess_round_trips_as_plain_values_and_validates():
    chosen = MaskPostprocess(0.35, "largest_component+fill_holes", (0.3, 0.4, 0.5, 0.6, 0.7))
    stored = chosen.to_dict()
    assert stored == {"threshold": 0.35, "mode": "largest_component+fill_holes",
                      "attribute_thresholds": [0.3, 0.4, 0.5, 0.6, 0.7]}
    assert MaskPostprocess.from_dict(stored) == chosen
    assert MaskPostprocess.from_dict({}) == MaskPostprocess()
    with pytest.raises(ValueError, match="mode"):
        MaskPostprocess(mode="holes")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MaskPostprocess(threshold=1.5)


def test_binarise_applies_the_lesion_mode_but_no_component_step_to_attributes():
    truth, probabilities = blob_with_hole_and_speck()
    chosen = MaskPostprocess(0.5, "largest_component+fill_holes", (0.5, 0.95, 0.5, 0.5, 0.5))
    lesion, = chosen.binarise(probabilities[None])
    assert np.array_equal(lesion, truth)
    attributes = chosen.binarise(np.stack([probabilities] * 5))
    assert np.array_equal(attributes[0], probabilities > 0.5)  # speck and hole kept
    assert not attributes[1].any()                              # its own threshold, 0.95


def test_choose_lesion_postprocess_picks_largest_component_and_fill_holes():
    images = [blob_with_hole_and_speck(), blob_with_hole_and_speck(40)]
    chosen, table = choose_lesion_postprocess([p for _, p in images], [t for t, _ in images])
    # Probabilities are 0.1 or 0.9, so every threshold in 0.3..0.7 gives the same masks: 0.5 wins the tie.
    assert chosen == MaskPostprocess(0.5, "largest_component+fill_holes")
    assert len(table) == 9 * len(POSTPROCESS_MODES)
    at_half = table[table["threshold"] == 0.5].set_index("mode")["isic_task1_jaccard"]
    # none: tp 140, fp 9, fn 4; largest component: tp 140, fn 4; filled: the truth.
    assert at_half["none"] == pytest.approx(140 / 153)
    assert at_half["largest_component"] == pytest.approx(140 / 144)
    assert at_half["largest_component+fill_holes"] == 1.0


def test_choose_lesion_postprocess_picks_the_threshold_that_matches_the_truth():
    truth = np.zeros((24, 24), bool)
    truth[5:15, 5:15] = True                    # 100 pixels
    probabilities = np.full((24, 24), 0.1)
    probabilities[truth] = 0.42                 # the lesion's edge: above 0.40, below 0.45
    probabilities[7:13, 7:13] = 0.9             # its core, 36 pixels
    probabilities[15, 5:15] = 0.33              # a band just outside: in the mask only at 0.30
    chosen, table = choose_lesion_postprocess([probabilities], [truth])
    # > 0.30: 100 / 110 = 0.909; > 0.35 and > 0.40: exact (1.0); > 0.45: 36 / 100 < 0.65 -> 0.
    # 0.35 and 0.40 tie in every mode: the simplest mode, the threshold nearer 0.5.
    assert chosen == MaskPostprocess(0.4, "none")
    scores = table[table["mode"] == "none"].set_index("threshold")["isic_task1_jaccard"]
    assert scores[0.3] == pytest.approx(100 / 110)
    assert scores[0.35] == scores[0.4] == 1.0
    assert scores[0.45] == 0.0


def test_choose_attribute_thresholds_picks_each_channels_best():
    rng = np.random.default_rng(0)
    truth = np.zeros((3, 5, 16, 16), bool)
    probabilities = np.full((3, 5, 16, 16), 0.2)
    for image in range(3):
        top, left = rng.integers(0, 8, size=2)
        region = (slice(top, top + 6), slice(left, left + 6))
        elsewhere = (slice(14, 16), slice(0, 16))
        truth[image, [0, 1, 3, 4], region[0], region[1]] = True
        probabilities[image, 0][region], probabilities[image, 0][elsewhere] = 0.62, 0.58  # best: > 0.60
        probabilities[image, 1][region], probabilities[image, 1][elsewhere] = 0.36, 0.32  # best: > 0.35
        # channel 2: no attribute anywhere, nothing predicted at any threshold: all 1, 0.5 wins the tie
        probabilities[image, 3][region] = 0.68                                          # 0.30..0.65 exact
        probabilities[image, 4][region], probabilities[image, 4][elsewhere] = 0.45, 0.75  # 0.30..0.40 tie
    assert choose_attribute_thresholds(probabilities, truth) == (0.6, 0.35, 0.5, 0.5, 0.4)
    assert choose_attribute_thresholds(list(probabilities), list(truth)) == (0.6, 0.35, 0.5, 0.5, 0.4)


# --- applied by Predictor ---------------------------------------------------------------------

def tiny_config(task: str = "multitask"):
    return config_from_dict({
        "name": f"{task}-postprocess", "task": task, "out_dir": "unused",
        "data": {"root": "unused", "image_size": 32, "augment": "none", "num_workers": 0},
        "model": {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None},
        "mlflow": {"enabled": False},
    })


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory):
    """A multitask model's checkpoint (random weights, seed 0) without chosen decisions."""
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg, probe=False, pretrained=False)
    path = tmp_path_factory.mktemp("postprocess") / "plain.pt"
    TrainingCheckpoint(model=model.state_dict(), config=cfg.to_dict()).save(path)
    return path


IMAGE = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def model_size_probabilities(predictor: Predictor) -> dict[str, torch.Tensor]:
    """The predictor's probabilities for IMAGE at model size, as predict computes them."""
    prepared = load_image(IMAGE, predictor.input_size, predictor.preprocessing)
    return predictor.probabilities(predictor.to_tensor(prepared.pixels)[None])


def test_checkpoint_without_decisions_predicts_as_before(untrained_checkpoint):
    predictor = Predictor.from_checkpoint(untrained_checkpoint, device="cpu")
    assert predictor.postprocess == MaskPostprocess() and predictor.temperature is None
    probs = model_size_probabilities(predictor)

    prediction = predictor.predict(IMAGE)

    expected_mask = masks_at_size(probs["seg"][0], (40, 56))[0]  # today's > 0.5 at original size
    assert 0 < expected_mask.mean() < 1  # an outline to compare
    assert np.array_equal(prediction.lesion_mask, expected_mask)
    softmax = probs["cls"][0].double().numpy()
    assert [prediction.probabilities[c] for c in CLASSES] == pytest.approx(softmax / softmax.sum(), abs=1e-12)


def test_stored_threshold_mode_and_temperature_are_applied(untrained_checkpoint, tmp_path):
    plain = Predictor.from_checkpoint(untrained_checkpoint, device="cpu")
    probs = model_size_probabilities(plain)
    lesion = probabilities_at_size(probs["seg"][0], (40, 56))[0]
    assert (lesion > 0.5).any() and lesion.max() < 0.99  # 0.5 finds a lesion, 0.99 cannot
    saved = TrainingCheckpoint.load(untrained_checkpoint)

    strict = tmp_path / "strict.pt"
    replace(saved, postprocess=MaskPostprocess(0.99).to_dict(), temperature=2.0).save(strict)
    # The temperature is the user's choice (--calibrated); the post-processing always applies.
    assert Predictor.from_checkpoint(strict, device="cpu").temperature is None
    predictor = Predictor.from_checkpoint(strict, device="cpu", calibrated=True)
    assert predictor.postprocess == MaskPostprocess(0.99) and predictor.temperature == 2.0
    prediction = predictor.predict(IMAGE)
    assert not prediction.lesion_mask.any()
    calibrated = apply_temperature(probs["cls"][0].double().numpy(), 2.0)
    assert [prediction.probabilities[c] for c in CLASSES] == pytest.approx(calibrated, abs=1e-9)
    assert prediction.label == plain.predict(IMAGE).label  # temperature never changes the decision

    tidy = tmp_path / "tidy.pt"
    replace(saved, postprocess=MaskPostprocess(0.5, "largest_component+fill_holes").to_dict()).save(tidy)
    prediction = Predictor.from_checkpoint(tidy, device="cpu").predict(IMAGE)
    assert np.array_equal(prediction.lesion_mask, fill_holes(largest_component(lesion > 0.5)))
    assert ndimage.label(prediction.lesion_mask, structure=np.ones((3, 3)))[1] == 1


def with_probabilities(predictor: Predictor, monkeypatch, seg: np.ndarray) -> Predictor:
    """The predictor, its model's mask probabilities replaced by ``seg`` ((C, 32, 32), at model size)."""
    cls = torch.full((1, len(CLASSES)), 1 / len(CLASSES))
    monkeypatch.setattr(predictor, "probabilities",
                        lambda batch, metadata=None: {"seg": torch.from_numpy(seg)[None].float(), "cls": cls})
    return predictor


def test_predictor_keeps_one_filled_lesion(untrained_checkpoint, monkeypatch):
    loaded = Predictor.from_checkpoint(untrained_checkpoint, device="cpu")
    truth, probabilities = blob_with_hole_and_speck(32)
    pixels = np.zeros((32, 32, 3), np.uint8)  # at model size: no resize, the map is used as given

    chosen = MaskPostprocess(0.5, "largest_component+fill_holes")
    tidy = with_probabilities(Predictor(loaded.model, loaded.cfg, loaded.device, postprocess=chosen),
                              monkeypatch, probabilities[None])
    assert np.array_equal(tidy.predict(pixels).lesion_mask, truth)

    untouched = with_probabilities(Predictor(loaded.model, loaded.cfg, loaded.device), monkeypatch,
                                   probabilities[None])
    assert np.array_equal(untouched.predict(pixels).lesion_mask, probabilities > 0.5)


def test_predictor_thresholds_each_attribute_with_its_own_threshold(untrained_checkpoint, monkeypatch):
    loaded = Predictor.from_checkpoint(untrained_checkpoint, device="cpu")
    _, probabilities = blob_with_hole_and_speck(32)
    seg = np.stack([probabilities * 0.7] * len(ATTRIBUTES))  # 0.63 in the blob and the speck, 0.07 elsewhere
    chosen = MaskPostprocess(0.5, "largest_component+fill_holes", (0.5, 0.7, 0.6, 0.3, 0.65))
    predictor = with_probabilities(Predictor(loaded.model, tiny_config("attributes"), loaded.device,
                                             postprocess=chosen), monkeypatch, seg)
    masks = predictor.predict(np.zeros((32, 32, 3), np.uint8)).attribute_masks
    expected = {name: seg[0] > threshold for name, threshold in zip(ATTRIBUTES, chosen.attribute_thresholds)}
    assert [int(m.sum()) for m in masks.values()] == [149, 0, 149, 149, 0]  # speck and hole kept
    assert all(np.array_equal(masks[name], expected[name]) for name in ATTRIBUTES)
