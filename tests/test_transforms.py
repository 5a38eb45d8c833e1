import cv2
import numpy as np
import pytest

from derm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, STRENGTHS, eval_transform, train_transform

SIZE = 48


def blob_masks(rng, size=SIZE, channels=1):
    """Random blocky binary masks (uint8 0/1), asymmetric so every flip and turn shows."""
    coarse = rng.random((6, 6, channels)) > 0.5
    masks = np.repeat(np.repeat(coarse, size // 6, axis=0), size // 6, axis=1).astype(np.uint8)
    masks[:5, :12, 0] = 1  # a corner marker breaks any accidental symmetry
    return masks


def binarise(channel):
    """Split an image channel at the midpoint of its two levels (colour jitter moves both, in order)."""
    return (channel > (channel.min() + channel.max()) / 2).astype(np.uint8)


@pytest.mark.parametrize("strength", ["light", "default", "strong"])
def test_masks_stay_aligned_with_the_image(strength):
    # The image is the first mask drawn in grey: after any flip, turn, rotation or
    # shift (nearest interpolation), it must still coincide with the moved mask.
    # Five channels, like the Task 2 attributes. (OpenCV's nearest-neighbour warp of
    # 2-channel arrays rounds differently at a few boundary pixels; 1, 3, 4, 5 agree.)
    rng = np.random.default_rng(0)
    transform = train_transform(SIZE, strength, interpolation=cv2.INTER_NEAREST, seed=1)
    moved_somewhere = False
    for _ in range(20):
        masks = blob_masks(rng, channels=5)
        image = np.repeat(masks[..., :1] * 200 + 20, 3, axis=2).astype(np.uint8)
        out = transform(image=image, mask=masks)
        assert out["mask"].shape == (SIZE, SIZE, 5) and out["mask"].dtype == np.uint8
        assert set(np.unique(out["mask"])) <= {0, 1}
        recovered = binarise(out["image"][..., 0])
        if strength == "strong":  # blur softens edges: allow a thin boundary band
            assert (recovered != out["mask"][..., 0]).mean() < 0.05
        else:
            np.testing.assert_array_equal(recovered, out["mask"][..., 0])
        moved_somewhere |= not np.array_equal(out["mask"], masks)
    assert moved_somewhere


def test_second_mask_channel_moves_with_the_first():
    # Two channels holding the same mask must come out identical whatever happens.
    rng = np.random.default_rng(1)
    transform = train_transform(SIZE, "strong", seed=2)
    for _ in range(10):
        mask = blob_masks(rng, channels=1)
        image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        out = transform(image=image, mask=np.concatenate([mask, mask], axis=2))
        np.testing.assert_array_equal(out["mask"][..., 0], out["mask"][..., 1])


def test_eval_transform_resizes_and_normalises_with_imagenet_statistics():
    image = np.full((30, 50, 3), 128, np.uint8)
    out = eval_transform(32)(image=image, mask=np.ones((30, 50, 1), np.uint8))
    assert out["image"].shape == (32, 32, 3) and out["image"].dtype == np.float32
    assert out["mask"].shape == (32, 32, 1)
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out["image"][5, 5], expected, rtol=1e-5)


def test_none_strength_is_the_eval_pipeline():
    image = np.random.default_rng(2).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_array_equal(train_transform(SIZE, "none")(image=image)["image"],
                                  eval_transform(SIZE)(image=image)["image"])


def test_image_already_at_size_is_not_resampled():
    # Cached arrays are at the training size: the resize step must hand them through untouched.
    image = np.random.default_rng(3).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    out = eval_transform(SIZE)(image=image)["image"]
    restored = out * np.array(IMAGENET_STD) * 255 + np.array(IMAGENET_MEAN) * 255
    np.testing.assert_allclose(restored, image, atol=1e-3)


def test_every_strength_builds_and_unknown_ones_are_refused():
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    for strength in STRENGTHS:
        assert train_transform(SIZE, strength)(image=image)["image"].shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="none, light, default, strong"):
        train_transform(SIZE, "extreme")
