"""What every image goes through before the model sees it: geometry to the square input, then colour.

One definition serves training (the decode-once cache, `derm.data.cache`), evaluation
and prediction (`derm.inference.load_image`), so a model always reads pixels prepared the
way it was trained on, and predicted masks go back to the original image through the
exact inverse of the geometry that made its input.

**Geometry** (``data.resize``), a `Resize`:

* ``squash`` stretches the whole image to size x size (derm's original behaviour; the
  aspect ratio is lost, HAM10000's 600x450 lesions come out 4/3 taller);
* ``pad`` scales the longest side to size, keeps the aspect ratio, and centres the image
  on a black square. Black (constant 0), not reflection: a contact dermoscope already
  leaves black corners, and a mirrored lesion would show the model structure its
  (zero-padded) mask says is not there;
* ``center_crop`` cuts the centred min(H, W) square out of the original and resizes it
  to size x size (the same as scaling the shortest side to size and cropping the centre,
  but the cut falls on whole original pixels, so the inverse is exact). The borders cut
  away are predicted as background.

Each mode is a `Placement`: a box of the original image mapped onto a box of the size x
size output. Forward crops the source box, resizes it to the target box (images
bilinear, masks nearest neighbour) and pastes it on black; `Resize.inverse` crops the
target box of the mask probabilities, resizes it (bilinear) to the source box and puts it
into zeros at the original size.

**Colour constancy** (``data.color_constancy``): Shades of Gray (Finlayson & Trezzi 2004),
the normalisation of the ISIC 2018/2019 winners (Gessert et al. 2019), see
`shades_of_gray`. It runs after the geometry, on exactly the pixels the model receives:
cheaper than at full resolution, identical in the cache and in prediction, and pad's
black bars do not move the estimate (they scale every channel's mean of I^p by the same
factor, and only the ratios between channels matter).

    >>> prepare = Preprocessing(resize="pad", color_constancy="shades_of_gray")
    >>> pixels = prepare.apply(np.full((40, 80, 3), (200, 100, 50), np.uint8), size=32)
    >>> pixels.shape, pixels[0, 0].tolist(), pixels[16, 16].tolist()
    ((32, 32, 3), [0, 0, 0], [132, 132, 132])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

RESIZE_MODES = ("squash", "pad", "center_crop")
COLOR_CONSTANCY_METHODS = ("none", "shades_of_gray")
DEFAULT_MINKOWSKI_P = 6.0  # Finlayson & Trezzi's best p, used by the ISIC 2018/2019 winners


def shades_of_gray(image: np.ndarray, p: float = DEFAULT_MINKOWSKI_P) -> np.ndarray:
    """Shades of Gray colour constancy of a uint8 (H, W, 3) RGB image, as uint8.

    The illuminant of channel c is its Minkowski p-norm mean e_c = mean(I_c^p)^(1/p)
    (p = 1 is grey world, p -> infinity max-RGB). Each channel is scaled by r / e_c with
    r the root mean square of (e_R, e_G, e_B), which is what the ISIC winners' reference
    code computes (gain = |e| / (sqrt(3) e_c)); a neutral image (e_R = e_G = e_B) is left
    as it is. Results are rounded and clipped to 0..255. An image with a channel that
    holds no light at all (e_c = 0) has no cast to estimate and is returned unchanged.

    Grey 100 and 50 under channel gains (1.3, 1.0, 0.7) come back grey, times the gains'
    root mean square sqrt(1.06) = 1.0296:

    >>> cast = np.array([[[130, 100, 70], [65, 50, 35]]], np.uint8)
    >>> shades_of_gray(cast).tolist()
    [[[103, 103, 103], [51, 51, 51]]]
    """
    pixels = image.reshape(-1, 3).astype(np.float64)
    peak = pixels.max(axis=0)
    if not (peak > 0).all():
        return image.copy()
    # Dividing by the channel's peak first keeps I^p inside 0..1 for any p (255^p overflows
    # float64 above p ~ 127) and the mean above 0 (the peak pixel contributes 1).
    illuminant = peak * np.mean((pixels / peak) ** p, axis=0) ** (1.0 / p)
    gains = np.sqrt(np.mean(illuminant ** 2)) / illuminant
    return np.clip(np.rint(pixels * gains), 0, 255).astype(np.uint8).reshape(image.shape)


@dataclass(frozen=True)
class Placement:
    """Where an image goes: the `source` box of the original (top, left, height, width)
    is resized onto the `target` box of the size x size output; the rest of it is black."""

    source: tuple[int, int, int, int]
    target: tuple[int, int, int, int]


def _rounded_ratio(value: int, numerator: int, denominator: int) -> int:
    """round(value * numerator / denominator), half up, in integers (at least 1)."""
    return max(1, (2 * value * numerator + denominator) // (2 * denominator))


@dataclass(frozen=True)
class Resize:
    """The geometry from an image of any size to the model's size x size input, and back.

    >>> Resize("pad", 32).placement((40, 80))          # (height, width): a 16x32 band in the middle
    Placement(source=(0, 0, 40, 80), target=(8, 0, 16, 32))
    >>> Resize("center_crop", 32).placement((40, 80))  # the centred 40x40 square
    Placement(source=(0, 20, 40, 40), target=(0, 0, 32, 32))
    """

    mode: str = "squash"
    size: int = 256

    def __post_init__(self):
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.mode!r}; allowed: {', '.join(RESIZE_MODES)}")
        if self.size < 1:
            raise ValueError(f"size must be at least 1, got {self.size}")

    def placement(self, original_size: tuple[int, int]) -> Placement:
        """The source and target boxes for an image of `original_size` (height, width)."""
        height, width = original_size
        size = self.size
        if self.mode == "pad":
            longest = max(height, width)
            scaled_height = _rounded_ratio(height, size, longest)
            scaled_width = _rounded_ratio(width, size, longest)
            target = ((size - scaled_height) // 2, (size - scaled_width) // 2, scaled_height, scaled_width)
            return Placement((0, 0, height, width), target)
        if self.mode == "center_crop":
            side = min(height, width)
            return Placement(((height - side) // 2, (width - side) // 2, side, side), (0, 0, size, size))
        return Placement((0, 0, height, width), (0, 0, size, size))

    def _place(self, image: Image.Image, original_size: tuple[int, int] | None, resample) -> np.ndarray:
        original_size = original_size or (image.height, image.width)
        placement = self.placement(original_size)
        (top, left, height, width), (target_top, target_left, target_height, target_width) = \
            placement.source, placement.target
        whole = (top, left, height, width) == (0, 0, *original_size)
        if whole and (target_height, target_width) == (self.size, self.size) == (image.height, image.width):
            return np.asarray(image)  # already the model's size: resizing would only blur it
        # A JPEG decoded at reduced scale (PIL draft) is smaller than the original: map the
        # source box from original pixels onto the decoded ones.
        scale_y, scale_x = image.height / original_size[0], image.width / original_size[1]
        box = None if whole else (left * scale_x, top * scale_y, (left + width) * scale_x, (top + height) * scale_y)
        placed = image.resize((target_width, target_height), resample, box=box)
        if (target_height, target_width) == (self.size, self.size):
            return np.asarray(placed)
        canvas = Image.new(image.mode, (self.size, self.size), 0)
        canvas.paste(placed, (target_left, target_top))
        return np.asarray(canvas)

    def apply_image(self, image: Image.Image | np.ndarray,
                    original_size: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 (size, size, 3) RGB: `image` placed bilinearly (see the module docstring).

        `original_size` is the source (height, width) when `image` was decoded at reduced
        scale (JPEG draft); by default, the image's own size.
        """
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return self._place(image.convert("RGB"), original_size, Image.Resampling.BILINEAR).astype(np.uint8)

    def apply_mask(self, mask: Image.Image | np.ndarray) -> np.ndarray:
        """uint8 (size, size): a mask at its image's original size placed with nearest neighbour.

        Values are kept (0/1 stays 0/1, 0/255 stays 0/255); the padding is 0.
        """
        if isinstance(mask, np.ndarray):
            mask = Image.fromarray(mask.astype(np.uint8))
        return self._place(mask, None, Image.Resampling.NEAREST)

    def inverse(self, probabilities, original_size: tuple[int, int]):
        """(C, size, size) mask probabilities (a torch tensor) -> (C, H, W) float32 at the original size.

        The target box is resized (bilinear: the edge stays where the model put it instead of
        a staircase of model pixels) onto the source box; pixels outside it (center_crop's cut
        borders) are 0, background.
        """
        import torch  # here, not at the top: decoding and `derm.data.check` never need torch
        import torch.nn.functional as F

        if tuple(probabilities.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"expected ({self.size}, {self.size}) probabilities, got {tuple(probabilities.shape)}")
        placement = self.placement(original_size)
        (top, left, height, width), (target_top, target_left, target_height, target_width) = \
            placement.source, placement.target
        window = probabilities[None, :, target_top:target_top + target_height,
                               target_left:target_left + target_width].float()
        resized = F.interpolate(window, size=(height, width), mode="bilinear", align_corners=False)[0]
        if (height, width) == tuple(original_size):
            return resized
        full = torch.zeros((probabilities.shape[0], *original_size), dtype=resized.dtype, device=resized.device)
        full[:, top:top + height, left:left + width] = resized
        return full


@dataclass(frozen=True)
class Preprocessing:
    """The ``data.resize`` and ``data.color_constancy`` options of a run, in one value.

    The default is derm's original behaviour: squash, no colour constancy.
    """

    resize: str = "squash"
    color_constancy: str = "none"
    color_constancy_p: float = DEFAULT_MINKOWSKI_P

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}; allowed: {', '.join(RESIZE_MODES)}")
        if self.color_constancy not in COLOR_CONSTANCY_METHODS:
            raise ValueError(f"unknown colour constancy {self.color_constancy!r}; "
                             f"allowed: {', '.join(COLOR_CONSTANCY_METHODS)}")
        if not self.color_constancy_p >= 1:
            raise ValueError(f"color_constancy_p must be >= 1, got {self.color_constancy_p}")

    @classmethod
    def from_config(cls, data) -> "Preprocessing":
        """The options of a run's ``data`` section (a `derm.config.DataConfig`)."""
        return cls(data.resize, data.color_constancy, float(data.color_constancy_p))

    @property
    def is_default(self) -> bool:
        """Whether images come out as derm always made them (squash, no colour constancy)."""
        return self.pixel_options() == Preprocessing().pixel_options()

    def pixel_options(self) -> dict:
        """The options that decide the pixels, what the cache key hashes: p only with colour constancy.

        >>> Preprocessing("pad", "none", 2.0).pixel_options()
        {'resize': 'pad', 'color_constancy': 'none'}
        """
        options = {"resize": self.resize, "color_constancy": self.color_constancy}
        if self.color_constancy != "none":
            options["color_constancy_p"] = self.color_constancy_p
        return options

    def to_dict(self) -> dict:
        """Every option as plain values (what the cache's index.json stores)."""
        return asdict(self)

    def describe(self) -> str:
        """'squash', 'pad, shades_of_gray p=6': for log lines."""
        if self.color_constancy == "none":
            return self.resize
        return f"{self.resize}, {self.color_constancy} p={self.color_constancy_p:g}"

    def geometry(self, size: int) -> Resize:
        """The `Resize` to a size x size model input."""
        return Resize(self.resize, size)

    def apply_colour(self, pixels: np.ndarray) -> np.ndarray:
        """The colour step alone on uint8 (H, W, 3) pixels."""
        if self.color_constancy == "shades_of_gray":
            return shades_of_gray(pixels, self.color_constancy_p)
        return pixels

    def apply(self, image: Image.Image | np.ndarray, size: int | None,
              original_size: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 RGB model input: the geometry to size x size (none when `size` is None), then colour.

        `original_size` as in `Resize.apply_image`.
        """
        if size is None:
            pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
        else:
            pixels = self.geometry(size).apply_image(image, original_size)
        return self.apply_colour(pixels)
