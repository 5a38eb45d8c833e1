"""Run a trained derm model on new images: the `Predictor` API behind ``python -m derm.predict``.

    predictor = Predictor.from_checkpoint("runs/demo/checkpoints/best.pt")
    result = predictor.predict("ISIC_0000000.jpg")
    result.label, result.probabilities["MEL"], result.lesion_mask.shape   # 'NV', 0.071, (767, 1022)

Images are preprocessed exactly as training evaluates them (decoded and resized to
``data.image_size`` as the decode-once cache does, then `eval_transform`'s
normalisation); the model predicts at that size, and each mask's probabilities are
resized back to the image's original size (bilinear) before thresholding at 0.5, so
outlines stay smooth instead of showing the training grid's blocks.

With ``tta=True`` the probabilities are averaged over the image as given and its
horizontal, vertical and double flips (masks flipped back first). Dermoscopy has no
"up", so every flip is as valid a view as the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from derm.checkpoint import TrainingCheckpoint
from derm.config import RunConfig, config_from_dict
from derm.data.decoding import decode_image as decode_resized_image  # the decode the training cache uses
from derm.data.transforms import eval_transform
from derm.errors import DataError
from derm.labels import ATTRIBUTES, CLASSES
from derm.models import build_model
from derm.runtime import autocast_dtype, select_device
from derm.predictions import masks_at_size, output_probabilities

ImageSource = Union[str, Path, Image.Image, np.ndarray]

# The views test-time augmentation averages, as tensor dims to flip on (N, C, H, W):
# as given, horizontal (width), vertical (height), both. Each is its own inverse.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class PreparedImage:
    """An image resized to the model's input size (uint8 RGB) and its original (height, width)."""

    pixels: np.ndarray
    original_size: tuple[int, int]


@dataclass(frozen=True)
class Prediction:
    """What a model says about one image, at the image's original size.

    `label` and `probabilities` (class name -> probability, summing to 1) are None
    for models without a classifier; `lesion_mask` ((H, W) bool) is set for
    segmentation and multitask models, `attribute_masks` (attribute name -> (H, W)
    bool, names as in ISIC 2018 Task 2) for attribute models.
    """

    label: str | None
    probabilities: dict[str, float] | None
    lesion_mask: np.ndarray | None
    attribute_masks: dict[str, np.ndarray] | None
    original_size: tuple[int, int]


def load_image(source: ImageSource, size: int) -> PreparedImage:
    """Decode `source` (a path, PIL image or (H, W, 3) uint8 array) and resize it to size x size.

    A path goes through the training cache's own decode (JPEG draft scaling, then
    bilinear resize), so the model sees the pixels it was evaluated on. Unreadable
    files raise PIL's OSError / ValueError / SyntaxError, as `PIL.Image.open` does.
    """
    if isinstance(source, (str, Path)):
        pixels, original_size = decode_resized_image(str(source), size)
        return PreparedImage(pixels, original_size)
    if isinstance(source, Image.Image):
        rgb = source.convert("RGB")
    elif isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ValueError(f"an image array must be (H, W, 3) uint8 RGB, got {source.shape} {source.dtype}")
        rgb = Image.fromarray(source)
    else:
        raise TypeError(f"an image is a path, a PIL image or an (H, W, 3) uint8 array, not {type(source).__name__}")
    original_size = (rgb.height, rgb.width)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return PreparedImage(np.asarray(rgb, dtype=np.uint8), original_size)


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[torch.nn.Module, RunConfig]:
    """The model of a derm checkpoint (latest.pt, best.pt, a sweep trial's), in eval mode on `device`."""
    saved = TrainingCheckpoint.load(checkpoint, map_location="cpu")
    cfg = config_from_dict(saved.config, source=f"{checkpoint} (its config)")
    # The checkpoint holds every weight: building with the config's pretrained encoder
    # (encoder_weights: imagenet) would download weights only to overwrite them, and fail
    # on machines without internet.
    model = build_model(cfg, probe=False, pretrained=False)
    try:
        model.load_state_dict(saved.model)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(f"{checkpoint}: its weights do not fit the model its config describes ({first})") from None
    return model.to(device).eval(), cfg


class Predictor:
    """A trained derm model ready to predict on images of any size.

    Build it with `Predictor.from_checkpoint`; `predict` takes one image,
    `predict_batch` several; `derm.submission.predict_folder` writes ISIC 2018 submission files.
    """

    def __init__(self, model: torch.nn.Module, cfg: RunConfig, device: torch.device, tta: bool = False):
        self.model = model.eval()
        self.cfg = cfg
        self.device = device
        self.tta = tta
        self.image_size = cfg.data.image_size
        self._normalise = eval_transform(self.image_size)
        self._amp_dtype = autocast_dtype(cfg.train.amp, device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", tta: bool = False) -> "Predictor":
        """Load any derm checkpoint (weights_only=True) and rebuild its model from its config."""
        torch_device = select_device(device, key="--device")
        model, cfg = load_model(path, torch_device)
        return cls(model, cfg, torch_device, tta=tta)

    @property
    def task(self) -> str:
        return self.cfg.task

    def predict(self, image: ImageSource) -> Prediction:
        """Predict one image (a path, PIL image or (H, W, 3) uint8 RGB array)."""
        return self.predict_prepared([load_image(image, self.image_size)])[0]

    def predict_batch(self, images: Sequence[ImageSource]) -> list[Prediction]:
        """Predict several images in one forward pass (sizes may differ)."""
        return self.predict_prepared([load_image(image, self.image_size) for image in images])

    def predict_prepared(self, images: Sequence[PreparedImage]) -> list[Prediction]:
        """Predict images already decoded and resized by `load_image`."""
        if not images:
            return []
        batch = torch.stack([self.to_tensor(image.pixels) for image in images])
        probs = self.probabilities(batch)
        return [self._prediction(probs, i, image.original_size) for i, image in enumerate(images)]

    def to_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """A (S, S, 3) uint8 image as the normalised (3, S, S) float tensor the model reads."""
        normalised = self._normalise(image=pixels)["image"]
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1))).float()

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sigmoid masks ("seg", (N, C, S, S)) and softmax classes ("cls", (N, 7)) at model size.

        With TTA, the mean over the flipped views, each mask flipped back first.
        """
        batch = batch.to(self.device)
        views = TTA_FLIPS if self.tta else ((),)
        total: dict[str, torch.Tensor] = {}
        for dims in views:
            for name, value in self._forward(batch.flip(dims) if dims else batch).items():
                if name == "seg" and dims:
                    value = value.flip(dims)
                total[name] = total[name] + value if name in total else value
        return {name: value / len(views) for name, value in total.items()}

    def _forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self._amp_dtype, enabled=self._amp_dtype is not None):
            outputs = self.model(batch)
        return output_probabilities(outputs)

    def _prediction(self, probs: dict[str, torch.Tensor], i: int, original_size: tuple[int, int]) -> Prediction:
        label = probabilities = lesion_mask = attribute_masks = None
        if "cls" in probs:
            values = probs["cls"][i].double().cpu().numpy()
            values = values / values.sum()  # exactly 1 in float64, whatever the float32 softmax summed to
            probabilities = dict(zip(CLASSES, values.tolist()))
            label = CLASSES[int(values.argmax())]
        if "seg" in probs:
            masks = masks_at_size(probs["seg"][i], original_size)
            if self.task == "attributes":
                attribute_masks = dict(zip(ATTRIBUTES, masks))
            else:
                lesion_mask = masks[0]
        return Prediction(label, probabilities, lesion_mask, attribute_masks, original_size)
