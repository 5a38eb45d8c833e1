"""Test-time augmentation (TTA): the views of an image whose predictions a `Predictor` averages.

Modes, as ``python -m derm.predict --tta MODE`` and ``Predictor(..., tta=MODE)`` spell them:

- ``none``: the image as given (``tta=False``);
- ``flips``: as given, flipped left-right, upside down, and both (4 views; ``--tta`` alone, ``tta=True``);
- ``dihedral``: the 8 symmetries of the square, 4 quarter turns each with and without a
  left-right flip. Dermoscopy has no "up", so every one is as valid a view as the original;
- ``multicrop:N`` (``multicrop`` alone: N = 5): the image decoded at `canvas_size` (1.25x the
  model size) and N crops of model size: the centre and the 4 corners for N = 5, a k x k grid
  from corner to corner for N = k * k (4, 9, 16, ...). Class probabilities are the mean over
  the crops; each crop's mask probabilities are put back at their place on the canvas and
  averaged where crops overlap (every canvas pixel is covered, as the corners touch the edges).

Every view is a rearrangement of pixels, so each mask is mapped back exactly before averaging.

>>> TTA.parse(True), TTA.parse("dihedral").size, TTA.parse("multicrop:9").size
(TTA(mode='flips', crops=0), 8, 9)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import isqrt

import torch

MODES = ("none", "flips", "dihedral", "multicrop")
DEFAULT_CROPS = 5
# Multicrop decodes the image this much larger than the model's input, as the ISIC 2018/2019
# winners' multi-crop evaluation does: each crop sees part of the lesion at a finer scale.
MULTICROP_SCALE = 1.25
SPELLING = "none, flips, dihedral or multicrop:N (N = 5, or a square: 4, 9, 16, ...)"

# predict(batch (N, 3, S, S)) -> {"seg": (N, C, S, S) mask probabilities, "cls": (N, K) class probabilities}
PredictFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class View:
    """A symmetry of the square on (N, C, H, W) tensors: a left-right `mirror`, then `quarter_turns` x 90°.

    `forward` makes the view the model sees; `inverse` maps the model's mask back onto the image.
    """

    name: str
    quarter_turns: int = 0  # counter-clockwise, as torch.rot90 turns dims (2, 3)
    mirror: bool = False

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        mirrored = batch.flip(3) if self.mirror else batch
        return torch.rot90(mirrored, self.quarter_turns, dims=(2, 3)) if self.quarter_turns else mirrored

    def inverse(self, batch: torch.Tensor) -> torch.Tensor:
        turned_back = torch.rot90(batch, -self.quarter_turns, dims=(2, 3)) if self.quarter_turns else batch
        return turned_back.flip(3) if self.mirror else turned_back


IDENTITY = View("as given")
# A vertical flip is a half turn of the left-right mirror image; both flips are a half turn.
FLIP_VIEWS = (IDENTITY, View("left-right flip", mirror=True), View("upside-down flip", 2, mirror=True),
              View("both flips", 2))
DIHEDRAL_VIEWS = tuple(View(f"rotate {90 * turns}" + (" + mirror" if mirror else ""), turns, mirror)
                       for turns in range(4) for mirror in (False, True))


def canvas_size(model_size: int) -> int:
    """The side multicrop decodes an image at: 1.25x `model_size`, plus an even margin so the
    centre crop starts on a whole pixel.

    >>> canvas_size(256), canvas_size(384), canvas_size(32)
    (320, 480, 40)
    """
    return model_size + 2 * round(model_size * (MULTICROP_SCALE - 1) / 2)


def check_crop_count(crops: int) -> None:
    """ValueError unless `crops` is 5 (centre and corners) or a square k * k >= 4 (a grid)."""
    side = isqrt(crops) if crops >= 0 else 0
    if crops != 5 and (side < 2 or side * side != crops):
        raise ValueError(f"multicrop takes 5 crops or a square number (4, 9, 16, ...), not {crops}")


def crop_offsets(crops: int, canvas: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of each size x size crop of a canvas x canvas image: 5 -> the centre, then the
    corners; k * k -> a k x k grid whose outer crops touch the canvas's edges.

    >>> crop_offsets(5, 40, 32)
    [(4, 4), (0, 0), (0, 8), (8, 0), (8, 8)]
    >>> crop_offsets(9, 40, 32)[:4]
    [(0, 0), (0, 4), (0, 8), (4, 0)]
    """
    check_crop_count(crops)
    span = canvas - size
    if crops == 5:
        return [(span // 2, span // 2), (0, 0), (0, span), (span, 0), (span, span)]
    side = isqrt(crops)
    steps = [round(i * span / (side - 1)) for i in range(side)]
    return [(top, left) for top in steps for left in steps]


@dataclass(frozen=True)
class TTA:
    """A test-time augmentation mode (see the module's docstring); build it with `TTA.parse`."""

    mode: str = "none"
    crops: int = 0  # multicrop's number of crops; 0 for the other modes

    @classmethod
    def parse(cls, spec: str | bool | None | TTA) -> TTA:
        """`spec` as the CLI and Predictor take it: True -> flips, False/None -> none,
        "flips", "dihedral", "multicrop" (5 crops) or "multicrop:N"; ValueError names the spellings."""
        if isinstance(spec, TTA):
            return spec
        if spec is None or spec is False:
            return cls()
        if spec is True:
            return cls("flips")
        if not isinstance(spec, str):
            raise TypeError(f"a TTA mode is {SPELLING}; got {spec!r}")
        mode, _, count = spec.strip().lower().partition(":")
        if mode not in MODES or (count and mode != "multicrop"):
            raise ValueError(f"{spec!r} is not a TTA mode; choose {SPELLING}")
        if mode != "multicrop":
            return cls(mode)
        if count and not count.isdigit():
            raise ValueError(f"{spec!r}: the number of crops after multicrop: is a whole number, e.g. multicrop:5")
        crops = int(count) if count else DEFAULT_CROPS
        check_crop_count(crops)
        return cls(mode, crops)

    def __str__(self) -> str:
        return f"multicrop:{self.crops}" if self.mode == "multicrop" else self.mode

    def __bool__(self) -> bool:
        return self.mode != "none"

    @property
    def size(self) -> int:
        """How many forward passes one image takes."""
        return self.crops if self.mode == "multicrop" else len(self.views())

    def views(self) -> tuple[View, ...]:
        """The symmetries averaged over (just the identity for none and multicrop)."""
        return {"flips": FLIP_VIEWS, "dihedral": DIHEDRAL_VIEWS}.get(self.mode, (IDENTITY,))

    def input_size(self, model_size: int) -> int:
        """The side images are decoded at: `canvas_size` for multicrop, the model's own otherwise."""
        return canvas_size(model_size) if self.mode == "multicrop" else model_size

    def average(self, batch: torch.Tensor, predict: PredictFn, model_size: int) -> dict[str, torch.Tensor]:
        """`predict`'s probabilities averaged over this mode's views of `batch` (N, 3, H, W).

        Masks come back on `batch`'s own pixel grid (the canvas, for multicrop).
        """
        if self.mode == "multicrop":
            canvas = self.input_size(model_size)
            if tuple(batch.shape[-2:]) != (canvas, canvas):
                raise ValueError(f"multicrop reads images decoded at {canvas} x {canvas} (TTA.input_size of a "
                                 f"{model_size} px model), got {tuple(batch.shape[-2:])}")
            return average_over_crops(batch, crop_offsets(self.crops, canvas, model_size), model_size, predict)
        return average_over_views(batch, self.views(), predict)


def average_over_views(batch: torch.Tensor, views: tuple[View, ...], predict: PredictFn) -> dict[str, torch.Tensor]:
    """The mean of `predict` over `views` of `batch`, each mask mapped back by its view's inverse."""
    total: dict[str, torch.Tensor] = {}
    for view in views:
        for head, value in predict(view.forward(batch)).items():
            if head == "seg":
                value = view.inverse(value)
            total[head] = total[head] + value if head in total else value
    return {head: value / len(views) for head, value in total.items()}


def average_over_crops(canvas: torch.Tensor, offsets: list[tuple[int, int]], size: int,
                       predict: PredictFn) -> dict[str, torch.Tensor]:
    """Class probabilities: the mean over the crops at `offsets`; masks: each crop's put back on
    the canvas, averaged over the crops covering each pixel."""
    side = canvas.shape[-1]
    if canvas.shape[-2] != side or not all(0 <= t <= side - size and 0 <= left <= side - size for t, left in offsets):
        raise ValueError(f"multicrop takes square images of side {side} >= {size} that its crops fit in, "
                         f"got {tuple(canvas.shape)}; decode images at TTA.input_size(model size)")
    class_total, mask_total = None, None
    coverage = torch.zeros(side, side, device=canvas.device)
    for top, left in offsets:
        probs = predict(canvas[..., top:top + size, left:left + size])
        if "cls" in probs:
            class_total = probs["cls"] if class_total is None else class_total + probs["cls"]
        if "seg" in probs:
            if mask_total is None:
                mask_total = probs["seg"].new_zeros((*probs["seg"].shape[:2], side, side))
            mask_total[..., top:top + size, left:left + size] += probs["seg"]
        coverage[top:top + size, left:left + size] += 1
    if not bool((coverage > 0).all()):
        raise ValueError(f"the crops at {offsets} leave part of the {side} px canvas uncovered")
    averaged = {}
    if mask_total is not None:
        averaged["seg"] = mask_total / coverage
    if class_total is not None:
        averaged["cls"] = class_total / len(offsets)
    return averaged
