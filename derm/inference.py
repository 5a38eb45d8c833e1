"""Run a trained derm model on new images: the `Predictor` API behind ``python -m derm.predict``.

    predictor = Predictor.from_checkpoint("runs/demo/checkpoints/best.pt")
    result = predictor.predict("ISIC_0000000.jpg")
    result.label, result.probabilities["MEL"], result.lesion_mask.shape   # 'NV', 0.071, (767, 1022)

Images are preprocessed exactly as training evaluates them (decoded and brought to
``data.image_size`` by the run's ``data.resize`` and ``data.color_constancy`` as the
decode-once cache does, then `eval_transform`'s normalisation); the model predicts at
that size, and each mask's probabilities go back to the image's original size through
the exact inverse of that geometry (bilinear; `derm.data.preprocess.Resize.inverse`)
before thresholding at 0.5, so outlines stay smooth instead of showing the training
grid's blocks.

A checkpoint may carry decisions chosen on validation (retrain-best's ``model.pt``):
``postprocess`` (`derm.postprocess.MaskPostprocess`: the lesion threshold, largest
component and filled holes, one threshold per attribute) replaces the 0.5 threshold,
and ``temperature`` (`derm.calibration.apply_temperature`) calibrates the class
probabilities when asked (``calibrated=True``, ``derm.predict --calibrated``): by default the
class probabilities stay the model's (an ensemble's: its members' weighted mean), which a
temperature never changes the ranking or the predicted class of. Without these fields,
predictions are exactly as described above.

Test-time augmentation (`derm.tta`): ``tta="flips"`` (or ``True``) averages the
probabilities over the image as given and its horizontal, vertical and double flips,
``"dihedral"`` over its 8 rotations and mirror images (masks mapped back first), and
``"multicrop:N"`` over N model-size crops of the image decoded at 1.25x the model size
(`Predictor.input_size`), each crop's mask put back on that canvas. Dermoscopy has no
"up", so every view is as valid as the original.

An ensemble's ``model.pt`` (`derm.checkpoint.save_ensemble`: retrain-best's fold or top-K
ensemble) loads as one Predictor whose probabilities are the weighted mean of its
members', each under the same TTA.

A model trained with ``model.metadata`` also reads each image's age, sex and lesion site
(``predict(image, metadata={"age": 45, "sex": "female", "localization": "back"})``);
without them every value is encoded as missing (`derm.data.metadata`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
import torch
from PIL import Image

from derm.calibration import apply_temperature
from derm.checkpoint import TrainingCheckpoint
from derm.config import RunConfig, config_from_dict
from derm.data.decoding import decode_image as decode_resized_image  # the decode the training cache uses
from derm.data.metadata import encode_metadata
from derm.data.preprocess import Preprocessing
from derm.data.transforms import eval_transform
from derm.errors import DataError
from derm.labels import ATTRIBUTES, CLASSES
from derm.models import build_model
from derm.runtime import autocast_dtype, select_device
from derm.postprocess import MaskPostprocess
from derm.predictions import average_probabilities, output_probabilities, probabilities_at_size
from derm.tta import FLIP_VIEWS, TTA

ImageSource = Union[str, Path, Image.Image, np.ndarray]

TTA_FLIPS = FLIP_VIEWS  # the views tta=True averages (derm.tta.FLIP_VIEWS)
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


def load_image(source: ImageSource, size: int, preprocessing: Preprocessing | None = None) -> PreparedImage:
    """Decode `source` (a path, PIL image or (H, W, 3) uint8 array) and bring it to size x size.

    `preprocessing` is the run's ``data.resize`` and ``data.color_constancy``
    (`Preprocessing.from_config(cfg.data)`; default: squash, no colour constancy). A path
    goes through the training cache's own decode (JPEG draft scaling, then the same
    `derm.data.preprocess` steps), so the model sees the pixels it was evaluated on.
    Unreadable files raise PIL's OSError / ValueError / SyntaxError, as `PIL.Image.open` does.
    """
    preprocessing = preprocessing or Preprocessing()
    if isinstance(source, (str, Path)):
        pixels, original_size = decode_resized_image(str(source), size, preprocessing=preprocessing)
        return PreparedImage(pixels, original_size)
    if isinstance(source, Image.Image):
        rgb = source.convert("RGB")
    elif isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ValueError(f"an image array must be (H, W, 3) uint8 RGB, got {source.shape} {source.dtype}")
        rgb = Image.fromarray(source)
    else:
        raise TypeError(f"an image is a path, a PIL image or an (H, W, 3) uint8 array, not {type(source).__name__}")
    return PreparedImage(preprocessing.apply(rgb, size), (rgb.height, rgb.width))


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[torch.nn.Module, RunConfig]:
    """The model of a derm checkpoint (latest.pt, best.pt, a sweep trial's), in eval mode on `device`.

    An ensemble's file (several models) is a DataError: load it with `load_members` or
    `Predictor.from_checkpoint`.
    """
    models, _, cfg = load_members(checkpoint, device)
    if len(models) > 1:
        raise DataError(f"{checkpoint}: holds an ensemble of {len(models)} models; load it with "
                        f"derm.inference.load_members or Predictor.from_checkpoint")
    return models[0], cfg


def load_members(checkpoint: str | Path, device: torch.device) -> tuple[list[torch.nn.Module], list[float], RunConfig]:
    """Every model of a derm checkpoint (one, or an ensemble's members) in eval mode on `device`,
    their weights (summing to 1) and the first member's config, which describes their input."""
    saved = TrainingCheckpoint.load(checkpoint, map_location="cpu")
    members = saved.members()
    models, configs = [], []
    for number, (state, config) in enumerate(members, start=1):
        name = f"{checkpoint}" if len(members) == 1 else f"{checkpoint} (ensemble member {number})"
        cfg = config_from_dict(config, source=f"{name} (its config)")
        # The checkpoint holds every weight: building with the config's pretrained encoder
        # (encoder_weights: imagenet) would download weights only to overwrite them, and fail
        # on machines without internet.
        model = build_model(cfg, probe=False, pretrained=False)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise DataError(f"{name}: its weights do not fit the model its config describes ({first})") from None
        models.append(model.to(device).eval())
        configs.append(cfg)
    return models, saved.member_weights(), configs[0]


def chosen_on_validation(checkpoint: str | Path) -> dict[str, MaskPostprocess | float | None]:
    """The checkpoint's ``postprocess`` (as a `MaskPostprocess`) and ``temperature``; None where absent."""
    saved = TrainingCheckpoint.load(checkpoint, map_location="cpu", mmap=True)  # mapped: the weights are not read
    postprocess = None if saved.postprocess is None else MaskPostprocess.from_dict(saved.postprocess)
    temperature = None if saved.temperature is None else float(saved.temperature)
    return {"postprocess": postprocess, "temperature": temperature}


class Predictor:
    """A trained derm model (or an ensemble of models) ready to predict on images of any size.

    Build it with `Predictor.from_checkpoint`; `predict` takes one image,
    `predict_batch` several; `derm.submission.predict_folder` writes ISIC 2018 submission files.
    `model` is one model or an ensemble's members, whose probabilities are averaged with
    `weights` (None: equal); `tta` is a `derm.tta.TTA` mode (True: "flips", False: none).
    """

    def __init__(self, model: torch.nn.Module | Sequence[torch.nn.Module], cfg: RunConfig, device: torch.device,
                 tta: bool | str | TTA | None = False, postprocess: MaskPostprocess | None = None,
                 temperature: float | None = None, weights: Sequence[float] | None = None):
        self.models = [m.eval() for m in ([model] if isinstance(model, torch.nn.Module) else model)]
        self.model = self.models[0]
        self.weights = [1 / len(self.models)] * len(self.models) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.models):
            raise ValueError(f"{len(self.models)} models need {len(self.models)} weights, got {len(self.weights)}")
        self.postprocess = postprocess or MaskPostprocess()  # the default: > 0.5, nothing more
        self.temperature = temperature  # None: the model's own probabilities
        self.cfg = cfg
        self.device = device
        self.tta = TTA.parse(tta)
        self.image_size = cfg.data.image_size
        self.input_size = self.tta.input_size(self.image_size)  # the decode size: larger for multicrop
        self.preprocessing = Preprocessing.from_config(cfg.data)  # as the training cache prepared its images
        self.geometry = self.preprocessing.geometry(self.input_size)  # inverted to map masks back
        self._normalise = eval_transform(self.input_size)
        self._amp_dtype = autocast_dtype(cfg.train.amp, device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", tta: bool | str | TTA | None = False,
                        calibrated: bool = False) -> "Predictor":
        """Load any derm checkpoint (weights_only=True), an ensemble's too, and rebuild its models from their configs.

        The checkpoint's mask post-processing is always applied; its temperature only with ``calibrated``.
        """
        torch_device = select_device(device, key="--device")
        models, weights, cfg = load_members(path, torch_device)
        chosen = chosen_on_validation(path)
        if not calibrated:
            chosen["temperature"] = None
        return cls(models, cfg, torch_device, tta=tta, weights=weights, **chosen)

    @property
    def task(self) -> str:
        return self.cfg.task

    @property
    def uses_metadata(self) -> bool:
        """Whether the model reads patient metadata (trained with ``model.metadata: true``)."""
        return self.cfg.model.metadata

    def predict(self, image: ImageSource, metadata: dict | None = None) -> Prediction:
        """Predict one image (a path, PIL image or (H, W, 3) uint8 RGB array).

        `metadata`, for a model trained with ``model.metadata``: the patient's
        ``{"age": 45, "sex": "female", "localization": "back"}`` (HAM10000 or ISIC 2019
        column names; absent keys and None are missing values, as is no dict at all).
        """
        return self.predict_prepared([load_image(image, self.input_size, self.preprocessing)],
                                     None if metadata is None else [metadata])[0]

    def predict_batch(self, images: Sequence[ImageSource],
                      metadata: Sequence[dict | None] | None = None) -> list[Prediction]:
        """Predict several images in one forward pass (sizes may differ); `metadata` one dict
        (or None) per image, as in `predict`."""
        return self.predict_prepared([load_image(image, self.input_size, self.preprocessing) for image in images],
                                     metadata)

    def predict_prepared(self, images: Sequence[PreparedImage],
                         metadata: Sequence[dict | None] | np.ndarray | None = None) -> list[Prediction]:
        """Predict images already decoded and resized by `load_image` (to `input_size`);
        `metadata` as in `predict_batch`, or already encoded (`metadata_tensor`)."""
        if not images:
            return []
        batch = torch.stack([self.to_tensor(image.pixels) for image in images])
        probs = self.probabilities(batch, self.metadata_tensor(metadata, len(images)))
        return [self._prediction(probs, i, image.original_size) for i, image in enumerate(images)]

    def to_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """A (S, S, 3) uint8 image as the normalised (3, S, S) float tensor the model reads."""
        normalised = self._normalise(image=pixels)["image"]
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1))).float()

    def metadata_tensor(self, metadata: Sequence[dict | None] | np.ndarray | None, n: int) -> torch.Tensor | None:
        """(n, METADATA_FEATURES) metadata for a metadata model: dicts are encoded
        (`derm.data.metadata.encode_metadata`), an array is taken as already encoded. None for
        other models or no metadata (the model then encodes every value as missing)."""
        if metadata is None or not self.uses_metadata:
            return None
        if len(metadata) != n:
            raise ValueError(f"{len(metadata)} metadata entries for {n} images")
        if isinstance(metadata, np.ndarray):
            return torch.from_numpy(np.asarray(metadata, dtype=np.float32))
        table = pd.DataFrame([dict(record or {}) for record in metadata], index=range(n))
        return torch.from_numpy(encode_metadata(table))

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor, metadata: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Sigmoid masks ("seg", (N, C, S, S)) and softmax classes ("cls", (N, 7)) of a batch at `input_size` S.

        With TTA, the mean over the mode's views, each mask mapped back onto the batch's own
        pixel grid (for multicrop, the canvas); an ensemble's, the weighted mean of its members'.
        """
        # Every view keeps the batch's image order, so each sees the same metadata rows.
        return self.tta.average(batch.to(self.device), partial(self._forward, metadata=metadata), self.image_size)

    def _forward(self, batch: torch.Tensor, metadata: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self._amp_dtype, enabled=self._amp_dtype is not None):
            outputs = [model(batch, metadata=metadata) for model in self.models]
        if len(outputs) == 1:
            return output_probabilities(outputs[0])
        return average_probabilities([output_probabilities(output) for output in outputs], self.weights)

    def _prediction(self, probs: dict[str, torch.Tensor], i: int, original_size: tuple[int, int]) -> Prediction:
        label = probabilities = lesion_mask = attribute_masks = None
        if "cls" in probs:
            values = probs["cls"][i].double().cpu().numpy()
            if self.temperature is not None:
                values = apply_temperature(values, self.temperature)
            values = values / values.sum()  # exactly 1 in float64, whatever the float32 softmax summed to
            probabilities = dict(zip(CLASSES, values.tolist()))
            label = CLASSES[int(values.argmax())]
        if "seg" in probs:
            masks = self.postprocess.binarise(probabilities_at_size(probs["seg"][i], original_size, self.geometry))
            if self.task == "attributes":
                attribute_masks = dict(zip(ATTRIBUTES, masks))
            else:
                lesion_mask = masks[0]
        return Prediction(label, probabilities, lesion_mask, attribute_masks, original_size)
