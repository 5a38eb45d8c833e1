"""Albumentations pipelines for training and evaluation.

Each pipeline takes a uint8 RGB image (H, W, 3) and, optionally, a uint8 mask
(H, W, C) holding all of a sample's masks as channels, so every mask moves with
the image. It returns numpy: the image float32 (S, S, 3) normalised with the
ImageNet mean and std, the mask uint8 (S, S, C). `derm.data.dataset` turns these
into channel-first tensors.

    >>> import numpy as np
    >>> image, masks = np.zeros((256, 256, 3), np.uint8), np.zeros((256, 256, 1), np.uint8)
    >>> out = train_transform(256)(image=image, mask=masks)
    >>> out["image"].dtype, out["image"].shape, out["mask"].shape
    (dtype('float32'), (256, 256, 3), (256, 256, 1))

Dermoscopy has no "up": a lesion photographed at any rotation or mirrored is the
same lesion, so every symmetry of the square and free rotation are safe. Colour
carries diagnostic signal (blue-white veil, regression structures), so colour
changes stay small and hue shifts tiny.
"""

from __future__ import annotations

import albumentations as A
import cv2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRENGTHS = ("none", "light", "default", "strong")


def geometric_augmentations(strength: str, *, interpolation: int = cv2.INTER_LINEAR) -> list[A.BasicTransform]:
    """The shape-changing augmentations of `strength`; masks always use nearest neighbour."""
    _check_strength(strength)
    if strength == "none":
        return []
    # The 8 flips and quarter turns of the square, drawn uniformly; exact, no interpolation.
    steps: list[A.BasicTransform] = [A.SquareSymmetry(p=1.0)]
    # Reflecting the border keeps skin texture in the corners a rotation uncovers.
    affine = dict(rotate=(-180, 180), interpolation=interpolation, mask_interpolation=cv2.INTER_NEAREST,
                  border_mode=cv2.BORDER_REFLECT_101)
    if strength == "default":
        steps.append(A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), p=0.7, **affine))
    elif strength == "strong":
        steps.append(A.Affine(scale=(0.8, 1.25), translate_percent=(-0.1, 0.1), shear=(-10, 10), p=0.9,
                              **affine))
    return steps


def photometric_augmentations(strength: str) -> list[A.BasicTransform]:
    """The colour and blur augmentations of `strength` (image only; masks untouched)."""
    _check_strength(strength)
    if strength == "none":
        return []
    if strength == "light":
        return [A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.0, p=0.5)]
    if strength == "default":
        return [A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8)]
    return [
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.04, p=0.8),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=20, val_shift_limit=10, p=0.3),
        # Mimics out-of-focus dermatoscope shots, common in the ISIC archive.
        A.GaussianBlur(blur_limit=(3, 5), p=0.2),
    ]


def train_transform(
    size: int, strength: str = "default", *, interpolation: int = cv2.INTER_LINEAR, seed: int | None = None
) -> A.Compose:
    """Training pipeline: resize to size x size, augment by `strength`, normalise.

    `strength` is one of none, light (symmetries, mild colour), default (+ free
    rotation, scale and shift), strong (+ shear, larger colour changes, blur).
    The resize is free when the input is already size x size (cached arrays are).
    `interpolation` is the image's (cv2 flag) for resizing and rotation; masks always
    use nearest neighbour. `seed` makes the random draws reproducible.
    """
    return A.Compose(
        [
            _resize(size, interpolation),
            *geometric_augmentations(strength, interpolation=interpolation),
            *photometric_augmentations(strength),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0),
        ],
        seed=seed,
    )


def eval_transform(size: int) -> A.Compose:
    """Evaluation pipeline: resize to size x size and normalise, nothing random."""
    return A.Compose(
        [_resize(size, cv2.INTER_LINEAR), A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)]
    )


def _resize(size: int, interpolation: int) -> A.Resize:
    # albumentations returns the input unchanged when it already has the target size.
    return A.Resize(size, size, interpolation=interpolation, mask_interpolation=cv2.INTER_NEAREST,
                    area_for_downscale="image")


def _check_strength(strength: str) -> None:
    if strength not in STRENGTHS:
        raise ValueError(f"augmentation strength must be one of {', '.join(STRENGTHS)}; got {strength!r}")
