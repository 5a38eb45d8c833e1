"""Pre-processing (derm.data.preprocess): Shades of Gray, pad / center_crop and their exact inverses,
and the same pixels in the decode-once cache (training, evaluation) and in prediction."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from derm.config import ConfigError, config_from_dict
from derm.data.cache import build_cache, cache_key
from derm.data.formats import load_table
from derm.data.preprocess import Placement, Preprocessing, Resize, shades_of_gray
from derm.data.synthetic import write_synthetic_dataset
from derm.inference import Predictor, load_image
from derm.predictions import masks_at_size

CAST = np.array([1.3, 1.0, 0.7])


def minkowski_means(image: np.ndarray, p: float = 6.0) -> np.ndarray:
    return np.mean(image.reshape(-1, 3).astype(np.float64) ** p, axis=0) ** (1 / p)


def grey_texture(shape=(48, 64), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 181, shape).astype(np.float64)


def test_shades_of_gray_removes_a_known_colour_cast():
    grey = grey_texture()
    cast = np.rint(grey[..., None] * CAST).astype(np.uint8)  # 180 * 1.3 = 234: nothing clips
    assert np.ptp(minkowski_means(cast)) > 50
    balanced = shades_of_gray(cast, 6)
    assert np.ptp(minkowski_means(balanced)) <= 1.0
    # Each channel becomes grey times the root mean square of the gains, sqrt(1.06) = 1.0296.
    expected = grey * np.sqrt(np.mean(CAST ** 2))
    for channel in range(3):
        assert np.abs(balanced[..., channel] - expected).max() <= 2


def test_shades_of_gray_with_p_1_is_grey_world_by_hand():
    image = np.array([[[100, 50, 150], [200, 50, 150]]], np.uint8)
    # means e = (150, 50, 150); rms = sqrt((150^2 + 50^2 + 150^2) / 3) = 125.83
    # gains 0.8389, 2.5166, 0.8389 -> (83.9, 125.8, 125.8) and (167.8, 125.8, 125.8)
    assert shades_of_gray(image, 1).tolist() == [[[84, 126, 126], [168, 126, 126]]]


def test_shades_of_gray_leaves_a_neutral_image_and_a_black_one_unchanged():
    neutral = np.repeat(grey_texture()[..., None], 3, axis=2).astype(np.uint8)
    np.testing.assert_array_equal(shades_of_gray(neutral, 6), neutral)
    black = np.zeros((8, 8, 3), np.uint8)
    np.testing.assert_array_equal(shades_of_gray(black), black)


def test_placements_of_a_ham10000_sized_image():
    # HAM10000 images are 600x450 (width x height).
    assert Resize("squash", 256).placement((450, 600)) == Placement((0, 0, 450, 600), (0, 0, 256, 256))
    # 450 * 256 / 600 = 192 rows, centred: (256 - 192) / 2 = 32 black rows above and below
    assert Resize("pad", 256).placement((450, 600)) == Placement((0, 0, 450, 600), (32, 0, 192, 256))
    # the centred 450x450 square: (600 - 450) / 2 = 75 columns cut on each side
    assert Resize("center_crop", 256).placement((450, 600)) == Placement((0, 75, 450, 450), (0, 0, 256, 256))


def block_mask(shape, block: int, seed: int = 1) -> np.ndarray:
    """A random 0/1 mask of `shape` (height, width) made of block x block squares."""
    coarse = np.random.default_rng(seed).integers(0, 2, (shape[0] // block, shape[1] // block))
    return np.kron(coarse, np.ones((block, block), int)).astype(np.uint8)


def round_trip(geometry: Resize, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    forward = geometry.apply_mask(mask)
    back = geometry.inverse(torch.from_numpy(forward[None].astype(np.float32)), mask.shape)[0].numpy()
    return forward, back


def test_pad_down_and_back_gives_the_mask_exactly():
    # 32x64 -> a 16x32 band in rows 8..23 of 32x32 (scale 1/2); bilinear x2 back of a
    # mask drawn in 2x2 blocks is exact: every output pixel's nearest source weighs 9/16.
    mask = block_mask((32, 64), 2)
    forward, back = round_trip(Resize("pad", 32), mask)
    assert forward[:8].sum() == forward[24:].sum() == 0
    np.testing.assert_array_equal(forward[8:24], mask[::2, ::2])
    np.testing.assert_array_equal(back > 0.5, mask.astype(bool))


def test_pad_up_and_back_gives_the_mask_exactly():
    # 16x8 (tall) -> 32x16 in columns 8..23 (scale 2); back by averaging 2x2 equal pixels.
    mask = block_mask((16, 8), 1, seed=2)
    forward, back = round_trip(Resize("pad", 32), mask)
    assert forward[:, :8].sum() == forward[:, 24:].sum() == 0
    np.testing.assert_array_equal(forward[:, 8:24], np.kron(mask, np.ones((2, 2), np.uint8)))
    np.testing.assert_array_equal(back, mask.astype(np.float32))


def test_center_crop_and_back_gives_the_mask_inside_the_crop_and_background_outside():
    # 32x64 -> the square of columns 16..47, halved to 16x16.
    mask = block_mask((32, 64), 2, seed=3)
    forward, back = round_trip(Resize("center_crop", 16), mask)
    np.testing.assert_array_equal(forward, mask[::2, 16:48:2])
    np.testing.assert_array_equal(back[:, 16:48] > 0.5, mask[:, 16:48].astype(bool))
    assert back[:, :16].sum() == back[:, 48:].sum() == 0


def test_squash_inverse_is_the_bilinear_resize_it_always_was():
    probabilities = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))
    old = F.interpolate(probabilities[None], size=(45, 70), mode="bilinear", align_corners=False)[0]
    assert torch.equal(Resize("squash", 32).inverse(probabilities, (45, 70)), old)
    assert all(np.array_equal(a, b) for a, b in zip(masks_at_size(probabilities, (45, 70)), (old > 0.5).numpy()))


def test_pad_image_is_centred_on_black():
    image = np.full((40, 80, 3), 120, np.uint8)
    pixels = Resize("pad", 32).apply_image(image)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert pixels[:8].max() == pixels[24:].max() == 0 and (pixels[8:24] == 120).all()


@pytest.fixture(scope="module")
def wide_dataset(tmp_path_factory):
    """21 synthetic 128x64 (wide) images under colour casts: pad and crop both change something."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("wide") / "HAM10000", n=21, size=(128, 64),
                                   seed=0, colour_cast=0.3)


def test_cache_key_differs_for_each_option_and_the_default_keeps_old_keys(wide_dataset):
    table = load_table(wide_dataset)
    masks = ["lesion_mask_path"]
    keys = {cache_key(table, 32, masks, preprocessing=Preprocessing(resize, constancy, p))
            for resize in ("squash", "pad", "center_crop") for constancy in ("none", "shades_of_gray")
            for p in (6.0, 2.0)}
    # 3 resize modes x (none, shades_of_gray p=6, p=2): p changes no pixel without colour constancy
    assert len(keys) == 3 * 3
    assert cache_key(table, 32, masks, preprocessing=Preprocessing()) == cache_key(table, 32, masks)
    assert cache_key(table, 32, masks, preprocessing=Preprocessing("squash", "none", 2.0)) == cache_key(table, 32, masks)


def test_config_rejects_bad_preprocessing_values_in_one_line():
    for data, key in [({"resize": "stretch"}, "data.resize"), ({"color_constancy": "grey"}, "data.color_constancy"),
                      ({"color_constancy_p": 0.5}, "data.color_constancy_p")]:
        with pytest.raises(ConfigError) as err:
            config_from_dict({"data": data}, "run.yaml")
        message = str(err.value)
        assert message.startswith(f"run.yaml: {key}: ") and "\n" not in message
    defaults = config_from_dict({}).data
    assert (defaults.resize, defaults.color_constancy, defaults.color_constancy_p) == ("squash", "none", 6.0)


class RecordingModel(torch.nn.Module):
    """Keeps every batch it is given and answers with fixed lesion logits."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits, self.inputs = logits, []

    def forward(self, batch, metadata=None):
        self.inputs.append(batch.clone())
        return {"seg": self.logits.expand(len(batch), -1, -1, -1)}


def test_the_options_reach_the_model_identically_in_training_and_prediction(wide_dataset, tmp_path):
    from derm.data.loaders import prepare_data

    cfg = config_from_dict({
        "task": "segmentation",
        "data": {"root": str(wide_dataset), "image_size": 32, "resize": "pad", "color_constancy": "shades_of_gray",
                 "val_fraction": 0.3, "cache_dir": str(tmp_path / "cache"), "num_workers": 0},
        "model": {"encoder_weights": None},
    })
    data = prepare_data(cfg, evaluate_on=("val",), log=lambda line: None)
    val = data.loaders["val"].dataset
    assert val.arrays.preprocessing == Preprocessing("pad", "shades_of_gray", 6.0)
    item = val[0]
    image_id = val.arrays.image_ids[item["index"]]
    path = data.tables["val"].set_index("image_id").loc[image_id, "image_path"]
    cached = np.array(val.arrays.images[item["index"]])

    # The cache row: 64x128 padded to a 16x32 band in rows 8..23, grey-balanced.
    assert cached[:8].max() == cached[24:].max() == 0
    assert np.ptp(minkowski_means(cached[8:24])) <= 2
    squashed = build_cache(data.tables["val"], 32, tmp_path / "cache", log=lambda line: None)
    assert np.ptp(minkowski_means(squashed.images[squashed.row_of[image_id]])) > 5  # the cast was there

    prepared = load_image(path, 32, Preprocessing.from_config(cfg.data))
    np.testing.assert_array_equal(prepared.pixels, cached)
    assert prepared.original_size == (64, 128)

    # Predictor: the same tensor reaches the model, and the mask goes back through pad's inverse.
    cached_mask = torch.from_numpy(val.arrays.masks[item["index"]][..., 0].astype(np.float32))
    model = RecordingModel((cached_mask * 20 - 10)[None, None])
    predictor = Predictor(model, cfg, torch.device("cpu"))
    prediction = predictor.predict(path)
    assert torch.equal(model.inputs[0][0], item["image"])
    with Image.open(data.tables["val"].set_index("image_id").loc[image_id, "lesion_mask_path"]) as img:
        truth = np.asarray(img.convert("L")) > 127
    predicted = prediction.lesion_mask
    assert predicted.shape == truth.shape == (64, 128)
    assert (predicted & truth).sum() / (predicted | truth).sum() > 0.85  # 4x down and up: edges move a pixel
    squash_back = masks_at_size(cached_mask[None], (64, 128))[0]  # the wrong inverse lands elsewhere
    assert (squash_back & truth).sum() / (squash_back | truth).sum() < 0.85


def test_colour_cast_zero_writes_the_same_bytes_and_a_cast_changes_only_colour(tmp_path):
    plain = write_synthetic_dataset(tmp_path / "plain", n=21, size=(64, 64), seed=3)
    zero = write_synthetic_dataset(tmp_path / "zero", n=21, size=(64, 64), seed=3, colour_cast=0.0)
    cast = write_synthetic_dataset(tmp_path / "cast", n=21, size=(64, 64), seed=3, colour_cast=0.3)
    files = sorted(p.relative_to(plain) for p in plain.rglob("*") if p.is_file())
    assert files
    for name in files:
        assert (plain / name).read_bytes() == (zero / name).read_bytes()
    for name in files:
        if name.suffix == ".png" or name.suffix == ".csv":  # masks and metadata do not change
            assert (plain / name).read_bytes() == (cast / name).read_bytes()
    jpegs = [name for name in files if name.suffix == ".jpg"]
    ratios = []
    for name in jpegs[:5]:
        before = np.asarray(Image.open(plain / name), np.float64).reshape(-1, 3).mean(axis=0)
        after = np.asarray(Image.open(cast / name), np.float64).reshape(-1, 3).mean(axis=0)
        ratios.append(after / before)
    ratios = np.array(ratios)
    assert np.abs(np.log(ratios)).max() > 0.05  # a visible cast ...
    assert np.ptp(ratios, axis=0).max() > 0.05  # ... different in each image
    with pytest.raises(ConfigError, match="colour cast"):
        write_synthetic_dataset(tmp_path / "bad", n=21, size=(64, 64), colour_cast=-1)
