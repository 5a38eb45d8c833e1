"""derm.tta: each view undone exactly, dihedral TTA of an equivariant model changes nothing, multicrop's
crops and canvas, and the --tta spellings of derm.predict."""

import numpy as np
import pytest
import torch
from PIL import Image

from derm.config import config_from_dict
from derm.inference import Predictor
from derm.labels import CLASSES
from derm.predict import parse_args
from derm.tta import (
    DIHEDRAL_VIEWS,
    FLIP_VIEWS,
    TTA,
    average_over_crops,
    canvas_size,
    crop_offsets,
)

SIZE = 32


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def pixel_ids(height=5, width=5) -> torch.Tensor:
    """(2, 3, H, W) with every entry different, so any misplaced pixel shows."""
    return torch.arange(2 * 3 * height * width, dtype=torch.float32).reshape(2, 3, height, width)


@pytest.mark.parametrize("view", DIHEDRAL_VIEWS + FLIP_VIEWS, ids=lambda v: v.name)
def test_each_view_is_undone_exactly_by_its_inverse(view):
    for batch in (pixel_ids(), pixel_ids(4, 6)):
        assert torch.equal(view.inverse(view.forward(batch)), batch)


def test_dihedral_views_are_the_eight_distinct_symmetries_and_flips_are_the_four_flips():
    batch = pixel_ids()
    images = {tuple(view.forward(batch).flatten().tolist()) for view in DIHEDRAL_VIEWS}
    assert len(DIHEDRAL_VIEWS) == 8 and len(images) == 8
    # The 4 flips as torch.flip spells them: as given, left-right (W), upside down (H), both.
    for view, dims in zip(FLIP_VIEWS, [(), (3,), (2,), (2, 3)]):
        assert torch.equal(view.forward(batch), batch.flip(dims) if dims else batch)
    # rotate 90 turns the top row into the left column (counter-clockwise, as torch.rot90).
    quarter = DIHEDRAL_VIEWS[2]
    assert quarter.quarter_turns == 1 and not quarter.mirror
    assert torch.equal(quarter.forward(batch)[0, 0, :, 0], batch[0, 0, 0, :].flip(0))


class PixelwiseModel(torch.nn.Module):
    """A 1x1 convolution per pixel and a classifier on the mean colour: exactly equivariant to
    every rotation and flip (masks move with the image, classes do not change)."""

    def __init__(self):
        super().__init__()
        self.pixel = torch.nn.Conv2d(3, 1, kernel_size=1)
        with torch.no_grad():  # red minus green: about half of a random image is "lesion"
            self.pixel.weight.copy_(torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1))
            self.pixel.bias.zero_()
        self.classify = torch.nn.Linear(3, len(CLASSES))

    def forward(self, image, metadata=None):  # derm models take metadata too (model.metadata)
        return {"seg": self.pixel(image), "cls": self.classify(image.mean(dim=(2, 3)))}


class NeighbourhoodModel(PixelwiseModel):
    """A 3x3 convolution with random weights: not equivariant, so TTA views disagree."""

    def __init__(self):
        super().__init__()
        self.pixel = torch.nn.Conv2d(3, 1, kernel_size=3, padding=1)


def predictor(model, tta) -> Predictor:
    cfg = config_from_dict({"task": "multitask", "data": {"image_size": SIZE},
                            "model": {"encoder_weights": None}})
    return Predictor(model, cfg, torch.device("cpu"), tta=tta)


def test_dihedral_tta_of_an_equivariant_model_equals_no_tta():
    model = PixelwiseModel()
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    plain, dihedral = predictor(model, None).predict(image), predictor(model, "dihedral").predict(image)
    assert 0.05 < plain.lesion_mask.mean() < 0.95  # the mask has an outline to get wrong
    assert np.array_equal(dihedral.lesion_mask, plain.lesion_mask)
    assert dihedral.probabilities == pytest.approx(plain.probabilities, abs=1e-6)


def test_dihedral_tta_is_the_mean_of_the_eight_views_mapped_back():
    model = NeighbourhoodModel()
    plain, dihedral = predictor(model, False), predictor(model, "dihedral")
    batch = plain.to_tensor(np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))[None]
    # The 8 views by hand: k quarter turns of the image and of its mirror image, each mask turned back.
    masks, classes = [], []
    for k in range(4):
        for mirrored in (batch, batch.flip(3)):
            probs = plain.probabilities(torch.rot90(mirrored, k, dims=(2, 3)))
            mask = torch.rot90(probs["seg"], -k, dims=(2, 3))
            masks.append(mask.flip(3) if mirrored is not batch else mask)
            classes.append(probs["cls"])
    got = dihedral.probabilities(batch)
    assert not torch.allclose(masks[0], masks[2], atol=1e-4)  # the views really differ
    assert torch.allclose(got["seg"], torch.stack(masks).mean(0), atol=1e-6)
    assert torch.allclose(got["cls"], torch.stack(classes).mean(0), atol=1e-6)


def test_canvas_and_crop_offsets():
    assert [canvas_size(s) for s in (32, 224, 256, 512)] == [40, 280, 320, 640]
    assert crop_offsets(5, 40, 32) == [(4, 4), (0, 0), (0, 8), (8, 0), (8, 8)]
    assert crop_offsets(4, 40, 32) == [(0, 0), (0, 8), (8, 0), (8, 8)]
    assert crop_offsets(9, 320, 256) == [(t, left) for t in (0, 32, 64) for left in (0, 32, 64)]
    for bad in (2, 3, 6, 10):
        with pytest.raises(ValueError, match="5 crops or a square"):
            crop_offsets(bad, 40, 32)


def test_multicrop_averages_classes_over_crops_and_puts_each_mask_back_in_place():
    canvas = torch.rand(2, 3, 40, 40)

    def predict(crop):  # a mask that is the crop's own first channel; a "class" that is the crop's mean
        return {"seg": crop[:, :1], "cls": crop.mean(dim=(1, 2, 3))[:, None]}

    got = average_over_crops(canvas, crop_offsets(5, 40, 32), 32, predict)
    # Each crop returns the canvas's own pixels, so averaging them where they overlap gives the canvas back.
    assert torch.allclose(got["seg"], canvas[:, :1], atol=1e-6)
    crops = [canvas[..., t:t + 32, left:left + 32] for t, left in [(4, 4), (0, 0), (0, 8), (8, 0), (8, 8)]]
    expected = torch.stack([c.mean(dim=(1, 2, 3)) for c in crops]).mean(0)
    assert torch.allclose(got["cls"][:, 0], expected, atol=1e-6)


def test_multicrop_predictor_decodes_at_the_canvas_and_returns_masks_at_original_size():
    model = PixelwiseModel()
    multicrop = predictor(model, "multicrop:5")
    assert multicrop.input_size == 40 and multicrop.tta.size == 5
    image = np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    prediction = multicrop.predict(image)
    assert prediction.lesion_mask.shape == (37, 53)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    # For a per-pixel model the crops' masks agree where they overlap: multicrop's mask is the
    # model's mask of the whole 40 px canvas, mapped back to the image.
    whole = predictor(model, None)
    canvas = multicrop.to_tensor(np.asarray(Image.fromarray(image).resize((40, 40), Image.Resampling.BILINEAR)))
    assert torch.allclose(multicrop.probabilities(canvas[None])["seg"], whole.probabilities(canvas[None])["seg"],
                          atol=1e-6)
    with pytest.raises(ValueError, match="decoded at 40 x 40"):
        multicrop.probabilities(torch.zeros(1, 3, 32, 32))  # a model-size batch would make 4 identical crops


@pytest.mark.parametrize("spec,expected", [
    (True, "flips"), (False, "none"), (None, "none"), ("flips", "flips"), ("dihedral", "dihedral"),
    ("multicrop", "multicrop:5"), ("multicrop:9", "multicrop:9"), ("Dihedral", "dihedral"),
])
def test_tta_modes_parse(spec, expected):
    assert str(TTA.parse(spec)) == expected


@pytest.mark.parametrize("spec", ["rotate", "flips:4", "multicrop:6", "multicrop:x", "multicrop:1"])
def test_unknown_tta_modes_are_refused(spec):
    with pytest.raises(ValueError):
        TTA.parse(spec)
    with pytest.raises(TypeError):
        TTA.parse(3)


def test_predict_cli_spells_tta_as_before_and_with_modes(capsys):
    base = ["model.pt", "images", "--out", "predictions"]
    assert parse_args(base).tta == "none"
    assert parse_args(base + ["--tta"]).tta == "flips"  # --tta alone: the 4 flips, as before
    assert parse_args(["model.pt", "images", "--tta", "--out", "predictions"]).tta == "flips"
    assert parse_args(base + ["--tta", "dihedral"]).tta == "dihedral"
    assert parse_args(base + ["--tta", "multicrop"]).tta == "multicrop:5"
    assert parse_args(base + ["--tta", "multicrop:16"]).tta == "multicrop:16"
    with pytest.raises(SystemExit) as exit_info:
        parse_args(base + ["--tta", "multicrop:6"])
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "--tta" in error_lines[0] and "square" in error_lines[0]
