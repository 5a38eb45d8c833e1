"""A procedurally drawn demo dataset, written in the real HAM10000 or ISIC 2018 Task 2 layout.

It lets every part of derm (formats, splits, training, sweeps) run end to end on
a laptop with no download. Lesions differ by diagnosis in shape, border, colour
and texture the way the textbook describes them (melanoma: irregular and
multicoloured; nevus: round and uniform; BCC: pink with branching vessels; ...),
with enough per-image variation and deliberately ambiguous cases that a model
learns them well above chance but not perfectly.

Every lesion is described once in its own coordinates (unit radius) and rendered
through a view transform (rotation, scale, shift), so a lesion photographed
several times (HAM10000 has about 1.34 images per lesion_id) yields slight
variations of the same lesion. Masks are exact: the lesion mask is the set of
pixels where the drawn lesion covers more than half, attribute masks are the
pixels where the attribute is drawn, inside the lesion.

    >>> import tempfile
    >>> root = write_synthetic_dataset(tempfile.mkdtemp() + "/HAM10000", layout="ham10000", n=21, size=(64, 64))
    >>> sorted(path.name for path in root.iterdir())
    ['HAM10000_images_part_1', 'HAM10000_images_part_2', 'HAM10000_metadata.csv', 'HAM10000_segmentations_lesion_tschandl']

Command line: ``python -m derm.data.synth OUT --layout ham10000 --n 500 --size 128x128 --seed 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from derm.errors import ConfigError
from derm.labels import ATTRIBUTES
from derm.progress import progress

__all__ = ["LAYOUTS", "ham10000_class_counts", "write_synthetic_dataset"]

LAYOUTS = ("ham10000", "isic2018-task2")

# HAM10000 diagnosis counts (10,015 images), to reproduce its class imbalance.
HAM10000_DX_COUNTS = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
# HAM10000 images per lesion_id, by diagnosis (10,015 images of 7,470 lesions).
IMAGES_PER_LESION = {"nv": 1.24, "mel": 1.81, "bkl": 1.51, "bcc": 1.57, "akiec": 1.43, "vasc": 1.45, "df": 1.58}
MIN_IMAGES_PER_CLASS = 3
FIRST_HAM10000_ID = 24306  # HAM10000 image ids run from ISIC_0024306

# Share of ISIC 2018 Task 2 training images with each attribute (most masks are empty).
TASK2_ATTRIBUTE_RATES = {"pigment_network": 0.60, "negative_network": 0.08, "streaks": 0.05,
                         "milia_like_cyst": 0.20, "globules": 0.25}
MIN_IMAGES_PER_ATTRIBUTE = 2
# In the HAM10000 layout attributes are not written, but drawing them by diagnosis
# (network in nevi, streaks in melanoma, milia in keratoses) adds realistic cues.
HAM10000_ATTRIBUTE_RATES = {
    "nv": {"pigment_network": 0.6, "globules": 0.3},
    "mel": {"pigment_network": 0.4, "negative_network": 0.2, "streaks": 0.3, "globules": 0.3},
    "bkl": {"milia_like_cyst": 0.5, "pigment_network": 0.1},
    "df": {"pigment_network": 0.2},
}

# Metadata drawn like HAM10000's (dx_type counts per dx; sex and site frequencies).
DX_TYPES = {"nv": {"follow_up": 3704, "histo": 2498, "consensus": 503}, "mel": {"histo": 1},
            "bkl": {"histo": 766, "consensus": 264, "confocal": 69}, "bcc": {"histo": 1},
            "akiec": {"histo": 1}, "vasc": {"consensus": 75, "histo": 67}, "df": {"consensus": 60, "histo": 55}}
MEAN_AGE = {"nv": 47, "mel": 61, "bkl": 64, "bcc": 67, "akiec": 67, "vasc": 52, "df": 53}
SEXES = {"male": 5406, "female": 4552, "unknown": 57}
SITES = {"back": 2192, "lower extremity": 2077, "trunk": 1404, "upper extremity": 1118, "abdomen": 1022,
         "face": 745, "chest": 407, "foot": 319, "unknown": 234, "neck": 168, "scalp": 128, "hand": 90,
         "ear": 56, "genital": 48, "acral": 7}
MISSING_AGE_RATE = 57 / 10015
METADATA_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
# With a metadata signal, a lesion's patient is drawn from its diagnosis's typical one, as the
# dermatology literature describes them: BCC and actinic keratoses on the sun-exposed head of
# the old, melanoma on the back of older men, nevi on the trunk of the young, dermatofibroma
# on women's legs. Gives metadata fusion (model.metadata) a class signal to find.
METADATA_PROFILES = {
    "nv": (30, {"male": 0.5, "female": 0.5}, {"trunk": 0.4, "back": 0.3, "lower extremity": 0.3}),
    "mel": (65, {"male": 0.7, "female": 0.3}, {"back": 0.6, "upper extremity": 0.2, "chest": 0.2}),
    "bcc": (72, {"male": 0.6, "female": 0.4}, {"face": 0.6, "scalp": 0.15, "neck": 0.15, "ear": 0.1}),
    "akiec": (75, {"male": 0.6, "female": 0.4}, {"face": 0.4, "scalp": 0.2, "hand": 0.2, "upper extremity": 0.2}),
    "bkl": (62, {"male": 0.5, "female": 0.5}, {"trunk": 0.4, "face": 0.3, "back": 0.3}),
    "df": (40, {"male": 0.25, "female": 0.75}, {"lower extremity": 0.8, "upper extremity": 0.2}),
    "vasc": (45, {"male": 0.5, "female": 0.5}, {"trunk": 0.4, "abdomen": 0.3, "lower extremity": 0.3}),
}
PROFILE_AGE_SD = 8


@dataclass(frozen=True)
class ClassStyle:
    """How a diagnosis looks: radius (share of half the image side), border and colours."""

    radius: tuple[float, float]
    wobble: float  # amplitude of the border's harmonics; 0 is a circle
    max_harmonic: int
    edge_px: float  # width of the soft border; small means sharply demarcated
    palette: tuple  # base, second and third colour (RGB in 0..1)
    opacity: tuple[float, float] = (0.85, 1.0)


STYLES = {
    "nv": ClassStyle((0.35, 0.6), 0.04, 3, 1.5, ((0.50, 0.32, 0.22), (0.38, 0.22, 0.14), (0.58, 0.40, 0.30))),
    "mel": ClassStyle((0.45, 0.75), 0.13, 9, 0.8, ((0.40, 0.24, 0.16), (0.16, 0.09, 0.07), (0.28, 0.29, 0.37))),
    "bcc": ClassStyle((0.35, 0.65), 0.08, 5, 1.2, ((0.86, 0.58, 0.58), (0.46, 0.48, 0.58), (0.93, 0.76, 0.72)),
                      (0.7, 0.9)),
    "akiec": ClassStyle((0.35, 0.65), 0.10, 7, 1.5, ((0.80, 0.45, 0.40), (0.68, 0.34, 0.30), (0.94, 0.89, 0.83))),
    "bkl": ClassStyle((0.4, 0.7), 0.08, 5, 0.6, ((0.68, 0.50, 0.34), (0.54, 0.37, 0.24), (0.80, 0.66, 0.50))),
    "df": ClassStyle((0.2, 0.38), 0.05, 3, 2.0, ((0.55, 0.38, 0.28), (0.42, 0.28, 0.20), (0.93, 0.87, 0.83))),
    "vasc": ClassStyle((0.25, 0.5), 0.0, 0, 1.0, ((0.66, 0.12, 0.22), (0.45, 0.15, 0.38), (0.42, 0.07, 0.12))),
}
AMBIGUOUS_RATE = 0.2  # share of lesions that borrow their shape or colours from another class


@dataclass
class Lesion:
    """One lesion in its own coordinates (unit radius); its images are views of it."""

    dx: str
    shape_dx: str
    colour_dx: str
    radius: float
    elongation: float
    border: np.ndarray  # complex Fourier coefficients c_k of the border radius 1 + Re(sum c_k e^{ik phi})
    lobules: np.ndarray  # rows (u, v, radius); non-empty only for lobular (vascular) shapes
    palette: np.ndarray  # (3, 3)
    thresholds: np.ndarray  # where the second and third colours appear in the noise fields
    opacity: float
    edge_px: float
    waves: tuple  # two smooth and one fine noise field, each as plane waves (m, 3)
    rotation: float
    vessels: list = field(default_factory=list)  # polylines in lesion coordinates (BCC)
    attributes: dict = field(default_factory=dict)  # name -> parameters in lesion coordinates

    def level(self, u, v):
        """Shape function: < 1 inside the lesion, 1 on its border."""
        if len(self.lobules):
            du = u[..., None] - self.lobules[:, 0]
            dv = v[..., None] - self.lobules[:, 1]
            return (np.hypot(du, dv) / self.lobules[:, 2]).min(axis=-1)
        u = u / self.elongation
        rho = np.hypot(u, v)
        # Horner's rule in z = e^{i phi} avoids an arctan and a cosine per harmonic
        z = (u + 1j * v) / np.maximum(rho, 1e-9)
        series = np.zeros_like(z)
        for coefficient in self.border[:0:-1]:
            series = (series + coefficient) * z
        return rho / np.maximum(1 + series.real, 0.35)


def _weights(counts: dict) -> tuple[list, np.ndarray]:
    names = list(counts)
    values = np.array([counts[k] for k in names], dtype=float)
    return names, values / values.sum()


def ham10000_class_counts(n: int) -> dict[str, int]:
    """Images per dx for n images: HAM10000's proportions (largest remainder), at least 3 per class."""
    names, p = _weights(HAM10000_DX_COUNTS)
    if n < MIN_IMAGES_PER_CLASS * len(names):
        raise ConfigError(f"n={n} is too small for the ham10000 layout: need at least "
                          f"{MIN_IMAGES_PER_CLASS * len(names)} ({MIN_IMAGES_PER_CLASS} per class)")
    quota = n * p
    counts = np.maximum(np.floor(quota).astype(int), MIN_IMAGES_PER_CLASS)
    while counts.sum() != n:
        if counts.sum() > n:
            surplus = np.where(counts > MIN_IMAGES_PER_CLASS, counts - quota, -np.inf)
            counts[np.argmax(surplus)] -= 1
        else:
            counts[np.argmax(quota - counts)] += 1
    return dict(zip(names, counts.tolist()))


def _plane_waves(rng, m: int, freq: tuple[float, float]) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi, m)
    radius = rng.uniform(*freq, m)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(0, 2 * np.pi, m)], axis=1)


def _noise(waves: np.ndarray, affine: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Smooth noise of unit variance on the pixel grid: a sum of plane waves in the
    coordinates (u, v) = affine @ (x, y, 1), so the same lesion texture in every view.

    A plane wave in affine coordinates is a plane wave in pixels, and
    cos(ax + by + c) = Re(e^{iby + ic} e^{iax}): the whole sum is one complex matrix
    product (H, m) @ (m, W) instead of H * W * m cosines.
    """
    width, height = size
    freq = waves[:, :2] @ affine  # per wave: the phase's coefficients of x, y and 1
    along_y = np.exp(1j * (np.arange(height)[:, None] * freq[:, 1] + freq[:, 2] + waves[:, 2]))
    along_x = np.exp(1j * freq[:, 0, None] * np.arange(width))
    # Re(Y @ X) as one real product: complex products of this size run far slower in BLAS
    real = np.hstack([along_y.real, -along_y.imag]) @ np.vstack([along_x.real, along_x.imag])
    return real * np.sqrt(2 / len(waves))


def _make_lesion(rng, dx: str, attribute_rates: dict) -> Lesion:
    shape_dx = colour_dx = dx
    if rng.random() < AMBIGUOUS_RATE:
        other = rng.choice([c for c in STYLES if c != dx])
        shape_dx, colour_dx = (other, dx) if rng.random() < 0.5 else (dx, other)
    shape, colour = STYLES[shape_dx], STYLES[colour_dx]
    k = np.arange(shape.max_harmonic + 1)
    phases = np.exp(2j * np.pi * rng.random(k.size))
    border = shape.wobble * rng.normal(size=k.size) / np.sqrt(np.maximum(k, 1)) * phases
    border[:2] = 0
    if shape_dx == "mel":  # asymmetry: one large bulge to one side
        border[1] = rng.uniform(0.1, 0.25) * np.exp(2j * np.pi * rng.random())
    lobules = np.zeros((0, 3))
    if shape_dx == "vasc":
        m = rng.integers(3, 8)
        angle, dist = rng.uniform(0, 2 * np.pi, m), rng.uniform(0, 0.6, m)
        lobules = np.stack([dist * np.cos(angle), dist * np.sin(angle), rng.uniform(0.3, 0.55, m)], axis=1)
    palette = np.clip(np.array(colour.palette) * rng.uniform(0.8, 1.15) + rng.normal(0, 0.04, (3, 3)), 0, 1)
    thresholds = {"nv": (1.2, 1.6), "mel": (rng.uniform(-0.4, 0.5), rng.uniform(0, 0.8)),
                  "bcc": (0.8, 0.3), "akiec": (0.0, 0.9)}.get(colour_dx, (0.0, 0.5))
    lesion = Lesion(
        dx=dx, shape_dx=shape_dx, colour_dx=colour_dx, radius=rng.uniform(*shape.radius),
        elongation=rng.uniform(1, 1.3 if shape_dx == "nv" else 1.5), border=border, lobules=lobules,
        palette=palette, thresholds=np.array(thresholds), opacity=rng.uniform(*colour.opacity),
        edge_px=shape.edge_px, rotation=rng.uniform(0, 2 * np.pi),
        waves=(_plane_waves(rng, 6, (2, 5)), _plane_waves(rng, 6, (2, 5)), _plane_waves(rng, 10, (12, 28))),
    )
    if colour_dx == "bcc":
        lesion.vessels = [_vessel(rng, lesion) for _ in range(rng.integers(2, 5))]
    for name, rate in attribute_rates.items():
        if rng.random() < rate:
            lesion.attributes[name] = _attribute_params(rng, lesion, name)
    return lesion


def _points_inside(rng, lesion: Lesion, k: int, limit: float = 0.85) -> np.ndarray:
    candidates = rng.uniform(-1.5, 1.5, (400, 2))
    inside = candidates[lesion.level(candidates[:, 0], candidates[:, 1]) < limit]
    return inside[:k]


def _vessel(rng, lesion: Lesion) -> np.ndarray:
    """A branching vessel as one polyline (a branch doubles back along its trunk)."""
    start = _points_inside(rng, lesion, 1, 0.6)
    point, angle = (start[0] if len(start) else np.zeros(2)), rng.uniform(0, 2 * np.pi)
    path = [point]
    for _ in range(rng.integers(4, 8)):
        angle += rng.normal(0, 0.7)
        point = point + 0.18 * np.array([np.cos(angle), np.sin(angle)])
        path.append(point)
    return np.array(path)


def _attribute_params(rng, lesion: Lesion, name: str) -> dict:
    if name in ("pigment_network", "negative_network"):
        # the pattern covers the part of the lesion on one side of a line
        return {"direction": rng.uniform(0, 2 * np.pi), "offset": rng.uniform(-0.9, 0.1)}
    if name in ("globules", "milia_like_cyst"):
        return {"points": _points_inside(rng, lesion, rng.integers(3, 12))}
    angles = rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.8, rng.integers(4, 10))
    ts = np.linspace(0, 1.8, 46)
    segments = []
    for a in angles:  # a streak runs outwards along the ray, ending just inside the border
        inside = np.nonzero(lesion.level(ts * np.cos(a), ts * np.sin(a)) < 1)[0]
        if len(inside):
            edge = ts[inside[-1]]
            segments.append(np.array([[np.cos(a), np.sin(a)]]) * [[0.7 * edge], [0.97 * edge]])
    return {"segments": segments}


@lru_cache(maxsize=4)
def _pixel_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    return xx, yy


@dataclass
class View:
    """Where a lesion sits in one image: centre (px), unit radius (px) and rotation."""

    cx: float
    cy: float
    radius_px: float
    rotation: float

    @property
    def affine(self) -> np.ndarray:
        """Pixel (x, y, 1) -> lesion coordinates (u, v)."""
        c, s = np.cos(self.rotation) / self.radius_px, np.sin(self.rotation) / self.radius_px
        return np.array([[c, s, -(c * self.cx + s * self.cy)], [-s, c, s * self.cx - c * self.cy]])

    def to_lesion(self, xx, yy):
        (a, b, c), (d, e, f) = self.affine
        return a * xx + b * yy + c, d * xx + e * yy + f

    def to_pixels(self, points: np.ndarray) -> list[tuple[float, float]]:
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        u, v = points[:, 0], points[:, 1]
        xs, ys = self.cx + self.radius_px * (c * u - s * v), self.cy + self.radius_px * (s * u + c * v)
        return list(zip(xs.tolist(), ys.tolist()))


def _smoothstep(x):
    """A soft step from 0 to 1 around x = 0 (the logistic function)."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _lesion_colour(lesion: Lesion, view: View, size, u, level):
    """Per-pixel lesion colour (H, W, 3) from its palette, noise fields and diagnosis."""
    base, second, third = lesion.palette
    n1, n2, fine = (_noise(w, view.affine, size) for w in lesion.waves)
    w2 = _smoothstep((n1 - lesion.thresholds[0]) / 0.15)
    w3 = _smoothstep((n2 - lesion.thresholds[1]) / 0.15)
    kind = lesion.colour_dx
    if kind == "mel":  # colours unevenly spread: darker on one side
        w2 = np.clip(w2 + 0.5 * u, 0, 1)
    elif kind == "akiec":  # rough scales
        w3 = _smoothstep((fine - 1.3) / 0.1) * (0.5 + 0.5 * _smoothstep(n2 / 0.3))
    elif kind == "bkl":  # waxy, brain-like ridges
        w2 = 0.5 + 0.5 * np.sin(9 * (u + 0.15 * n1))
        w3 = w3 * 0.5
    elif kind == "df":  # central white patch inside a brown ring
        w3 = _smoothstep((0.45 - level) / 0.07)
        w2 = np.exp(-(((level - 0.75) / 0.15) ** 2))
    elif kind == "vasc":  # red to purple lobules
        w2 = 0.5 + 0.5 * np.sin(6 * n1)
        w3 = _smoothstep((0.5 - level) / 0.1) * 0.6
    colour = base + w2[..., None] * (second - base)
    colour = colour + w3[..., None] * (third - colour)
    roughness = {"akiec": 0.08, "bkl": 0.05}.get(kind, 0.02)
    darker_centre = 0.15 if kind == "nv" else 0.0
    return colour * (1 + roughness * fine - darker_centre * np.clip(1 - level, 0, 1))[..., None]


def _draw_layer(size: tuple[int, int], draw) -> np.ndarray:
    layer = Image.new("L", size, 0)
    draw(ImageDraw.Draw(layer))
    return np.asarray(layer, dtype=np.float64) / 255


def _blend(image, weight, colour, strength=1.0):
    image += (strength * weight)[..., None] * (np.asarray(colour) - image)


def _draw_attribute(image, name, params, lesion, view, u, v, lesion_mask, size):
    """Draw one attribute inside the lesion and return its exact mask."""
    half = min(size) / 2
    if name in ("pigment_network", "negative_network"):
        side = u * np.cos(params["direction"]) + v * np.sin(params["direction"])
        region = lesion_mask & (side > params["offset"])
        spacing = max(3.5, 0.06 * min(size)) / view.radius_px
        warp = [0.1 * _noise(w, view.affine, size) for w in lesion.waves[:2]]
        gu, gv = (u + warp[0]) / spacing, (v + warp[1]) / spacing
        line = _smoothstep((0.13 - np.minimum(np.abs(gu - np.round(gu)), np.abs(gv - np.round(gv)))) / 0.05)
        if not region.any():  # the lesion lies wholly on the other side of the line
            region = lesion_mask
        if name == "pigment_network":
            _blend(image, line * region, lesion.palette[1] * 0.6, 0.7)
        else:  # light lines around dark holes
            _blend(image, (1 - line) * region, lesion.palette[1] * 0.5, 0.5)
            _blend(image, line * region, (0.85, 0.72, 0.62), 0.45)
        mask = region
    else:
        colour = {"globules": lesion.palette[1] * 0.5, "milia_like_cyst": (0.97, 0.95, 0.86),
                  "streaks": lesion.palette[1] * 0.5}[name]
        if name == "streaks":
            width = max(1, round(half / 48))
            layer = _draw_layer(size, lambda d: [d.line(view.to_pixels(s), fill=255, width=width)
                                                 for s in params["segments"]])
        else:
            r = max(1.0, (0.02 if name == "globules" else 0.014) * half * 2)
            layer = _draw_layer(size, lambda d: [d.ellipse([x - r, y - r, x + r, y + r], fill=255)
                                                 for x, y in view.to_pixels(params["points"])])
        mask = (layer > 0.5) & lesion_mask
        if not mask.any():  # a tiny lesion can miss every dot: mark its central pixel instead
            centre = np.argmin(np.where(lesion_mask, np.hypot(u, v), np.inf))
            mask.flat[centre] = True
        _blend(image, mask.astype(float), colour, 0.9)
    return mask


def _skin(rng, size):
    tone = np.clip(np.array([0.90, 0.72, 0.62]) * rng.uniform(0.65, 1.05) + rng.normal(0, 0.015, 3), 0, 1)
    half = min(size) / 2
    blotches = _noise(_plane_waves(rng, 4, (0.5, 2)), np.array([[1 / half, 0, 0], [0, 1 / half, 0]]), size)
    return tone * (1 + 0.03 * blotches)[..., None]


def _hair(rng, size):
    def draw(d):
        half = min(size) / 2
        for _ in range(rng.integers(1, 12)):
            p0 = rng.uniform(0, 1, 2) * size
            direction = rng.uniform(0, 2 * np.pi)
            p2 = p0 + rng.uniform(0.5, 2) * half * np.array([np.cos(direction), np.sin(direction)])
            p1 = (p0 + p2) / 2 + rng.normal(0, 0.2 * half, 2)
            t = np.linspace(0, 1, 10)[:, None]
            curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
            d.line([tuple(p) for p in curve.tolist()], fill=255, width=max(1, round(half / 64)))
    return _draw_layer(size, draw)


def _render(rng, lesion: Lesion, size: tuple[int, int], shift=(0.0, 0.0), rotation=0.0, zoom=1.0):
    """Draw one image of a lesion: returns (RGB uint8 array, lesion mask, {attribute: mask})."""
    width, height = size
    xx, yy = _pixel_grid(width, height)
    half = min(size) / 2
    view = View(width / 2 + shift[0] * half, height / 2 + shift[1] * half,
                lesion.radius * zoom * half, lesion.rotation + rotation)
    u, v = view.to_lesion(xx, yy)
    level = lesion.level(u, v)
    lesion_mask = level < 1
    # (1 - level) * radius_px is about the distance to the border in pixels, so the
    # drawn lesion covers more than half of a pixel exactly where the mask is set
    alpha = np.clip((1 - level) * view.radius_px / lesion.edge_px + 0.5, 0, 1)
    image = _skin(rng, size)
    image += (alpha * lesion.opacity)[..., None] * (_lesion_colour(lesion, view, size, u, level) - image)
    attribute_masks = {name: _draw_attribute(image, name, params, lesion, view, u, v, lesion_mask, size)
                       for name, params in lesion.attributes.items()}
    if lesion.vessels:
        vessels = _draw_layer(size, lambda d: [d.line(view.to_pixels(p), fill=255, width=max(1, round(half / 64)))
                                               for p in lesion.vessels])
        _blend(image, vessels * lesion_mask, (0.70, 0.10, 0.16), 0.8)
    if rng.random() < 0.4:
        _blend(image, _hair(rng, size), (0.12, 0.08, 0.06), 0.85)
    direction = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(direction) * (xx - width / 2) + np.sin(direction) * (yy - height / 2)) / half
    image *= (rng.uniform(0.85, 1.1) * (1 + rng.uniform(0, 0.15) * gradient))[..., None]
    if rng.random() < 0.4:  # the dark circular rim of a contact dermoscope
        rim = np.hypot(xx - width / 2, yy - height / 2) / np.hypot(width, height) * 2
        image *= (1 - 0.95 * _smoothstep((rim - rng.uniform(0.85, 1.1)) / 0.03))[..., None]
    image += rng.normal(0, 0.015, image.shape)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), lesion_mask, attribute_masks


def _lesion_groups(rng, counts: dict[str, int]) -> list[tuple[str, int]]:
    """(dx, images of that lesion) per lesion, with HAM10000's images-per-lesion ratio by dx."""
    groups = []
    for dx, count in counts.items():
        lesions = int(np.clip(round(count / IMAGES_PER_LESION[dx]), 1, count))
        sizes = 1 + rng.multinomial(count - lesions, np.full(lesions, 1 / lesions))
        groups += [(dx, int(s)) for s in sizes]
    return groups


def _metadata(rng, dx: str) -> dict:
    """dx_type, age, sex and site for one lesion, drawn like HAM10000's."""
    types, p_types = _weights(DX_TYPES[dx])
    sexes, p_sexes = _weights(SEXES)
    sites, p_sites = _weights(SITES)
    age = int(np.clip(5 * round(rng.normal(MEAN_AGE[dx], 14) / 5), 0, 85))  # HAM10000 rounds ages to 5 years
    if rng.random() < MISSING_AGE_RATE:
        age = None
    return {"dx_type": rng.choice(types, p=p_types), "age": age,
            "sex": rng.choice(sexes, p=p_sexes), "localization": rng.choice(sites, p=p_sites)}


def _profile_metadata(rng, dx: str, metadata: dict) -> dict:
    """`metadata` with age, sex and site redrawn from `dx`'s METADATA_PROFILES (a missing age stays missing)."""
    mean_age, sex_weights, site_weights = METADATA_PROFILES[dx]
    sexes, p_sexes = _weights(sex_weights)
    sites, p_sites = _weights(site_weights)
    age = int(np.clip(5 * round(rng.normal(mean_age, PROFILE_AGE_SD) / 5), 0, 85))
    return {**metadata, "age": None if metadata["age"] is None else age,
            "sex": rng.choice(sexes, p=p_sexes), "localization": rng.choice(sites, p=p_sites)}


def _with_metadata_signal(metadata: dict, dx: str, strength: float, seed: int, number: int) -> dict:
    """With probability `strength`, the lesion's patient is its diagnosis's typical one (`_profile_metadata`).

    Drawn from a stream of its own, so a signal leaves every other draw (and pixel) as it was.
    """
    rng = np.random.default_rng([seed, 5, number])
    return _profile_metadata(rng, dx, metadata) if rng.random() < strength else metadata


def _view_jitter(rng, first: bool) -> dict:
    """Repeat images of a lesion are slightly shifted, turned and zoomed."""
    if first:
        return {"shift": rng.normal(0, 0.05, 2).clip(-0.12, 0.12)}
    return {"shift": rng.normal(0, 0.07, 2).clip(-0.15, 0.15), "rotation": rng.normal(0, 0.3),
            "zoom": rng.uniform(0.9, 1.1)}


def _colour_cast(pixels: np.ndarray, strength: float, rng) -> np.ndarray:
    """The image under a random illuminant, for colour constancy to undo: each channel times
    exp(N(0, strength)), the gains divided by their geometric mean so that only the colour
    moves, not the brightness."""
    gains = np.exp(rng.normal(0, strength, 3))
    gains /= np.exp(np.log(gains).mean())
    return np.clip(np.rint(pixels * gains), 0, 255).astype(np.uint8)


def _cast_rng(seed: int, index: int):
    """The colour cast's own stream, apart from the image's: a cast leaves every other pixel draw as it was."""
    return np.random.default_rng([seed, 4, index])


def _save_image(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, quality=90)


def _save_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _write_ham10000(root: Path, n: int, size, seed: int, colour_cast: float = 0.0,
                    metadata_signal: float = 0.0) -> None:
    groups = _lesion_groups(np.random.default_rng([seed, 0]), ham10000_class_counts(n))
    order = np.random.default_rng([seed, 1])
    lesion_numbers = order.permutation(len(groups))  # ids carry no hint of the class
    image_numbers = iter(order.permutation(n))
    folders = [root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"]
    masks = root / "HAM10000_segmentations_lesion_tschandl"
    for folder in [*folders, masks]:
        folder.mkdir(parents=True)
    rows = []
    with progress(total=n, desc="writing", unit="image") as bar:
        for number, (dx, images) in sorted(zip(lesion_numbers.tolist(), groups)):
            rng = np.random.default_rng([seed, 2, number])
            lesion = _make_lesion(rng, dx, HAM10000_ATTRIBUTE_RATES.get(dx, {}))
            metadata = _metadata(rng, dx)
            if metadata_signal:
                metadata = _with_metadata_signal(metadata, dx, metadata_signal, seed, number)
            for repeat in range(images):
                index = int(next(image_numbers))
                image_id = f"ISIC_{FIRST_HAM10000_ID + index:07d}"
                view_rng = np.random.default_rng([seed, 3, index])
                pixels, lesion_mask, _ = _render(view_rng, lesion, size, **_view_jitter(view_rng, repeat == 0))
                if colour_cast:
                    pixels = _colour_cast(pixels, colour_cast, _cast_rng(seed, index))
                # like the original, the first half of the ids sits in part 1
                _save_image(folders[index >= (n + 1) // 2] / f"{image_id}.jpg", pixels)
                _save_mask(masks / f"{image_id}_segmentation.png", lesion_mask)
                rows.append({"lesion_id": f"HAM_{number:07d}", "image_id": image_id, "dx": dx, **metadata})
                bar.update()
    table = pd.DataFrame(rows, columns=METADATA_COLUMNS).astype({"age": "Int64"})
    table.to_csv(root / "HAM10000_metadata.csv", index=False, lineterminator="\r\n")


def _task2_lesions(rng, n: int) -> list[Lesion]:
    """n lesions with Task 2's attribute rates, each attribute in at least two images."""
    names, p = _weights(HAM10000_DX_COUNTS)
    lesions = [_make_lesion(rng, dx, TASK2_ATTRIBUTE_RATES) for dx in rng.choice(names, size=n, p=p)]
    for name in ATTRIBUTES:
        lacking = [lesion for lesion in lesions if name not in lesion.attributes]
        missing = MIN_IMAGES_PER_ATTRIBUTE - (n - len(lacking))
        for index in rng.permutation(len(lacking))[:max(missing, 0)]:
            lacking[index].attributes[name] = _attribute_params(rng, lacking[index], name)
    return lesions


def _write_task2(root: Path, n: int, size, seed: int, colour_cast: float = 0.0) -> None:
    images = root / "ISIC2018_Task1-2_Training_Input"
    masks = root / "ISIC2018_Task1_Training_GroundTruth"
    attributes = root / "ISIC2018_Task2_Training_GroundTruth_v3"
    for folder in (images, masks, attributes):
        folder.mkdir(parents=True)
    lesions = _task2_lesions(np.random.default_rng([seed, 0]), n)
    for index, lesion in enumerate(progress(lesions, desc="writing", unit="image")):
        image_id = f"ISIC_{index:07d}"
        view_rng = np.random.default_rng([seed, 3, index])
        pixels, lesion_mask, attribute_masks = _render(view_rng, lesion, size, **_view_jitter(view_rng, True))
        if colour_cast:
            pixels = _colour_cast(pixels, colour_cast, _cast_rng(seed, index))
        _save_image(images / f"{image_id}.jpg", pixels)
        _save_mask(masks / f"{image_id}_segmentation.png", lesion_mask)
        for name in ATTRIBUTES:
            mask = attribute_masks.get(name, np.zeros_like(lesion_mask))
            _save_mask(attributes / f"{image_id}_attribute_{name}.png", mask)


def write_synthetic_dataset(out, layout: str = "ham10000", n: int = 500, size=(128, 128), seed: int = 0,
                            *, colour_cast: float = 0.0, metadata_signal: float = 0.0) -> Path:
    """Write n generated images with masks (and metadata) under `out` in a real layout; returns `out`.

    layout "ham10000" writes HAM10000_images_part_{1,2}/, HAM10000_metadata.csv (CRLF) and
    HAM10000_segmentations_lesion_tschandl/; "isic2018-task2" writes the Task 1-2 inputs, Task 1
    lesion masks and all five Task 2 attribute masks per image. The same seed gives the same bytes.

    `colour_cast` > 0 photographs each image under its own random illuminant (channel gains
    exp(N(0, colour_cast)), brightness kept), as dermoscopes of different makes and settings
    do, so that colour constancy (``data.color_constancy``) has something to undo; 0 writes
    exactly the bytes it wrote before the option existed.

    `metadata_signal` in [0, 1] (ham10000 only) is the share of lesions whose patient's age,
    sex and lesion site follow their diagnosis (`METADATA_PROFILES`) instead of HAM10000's
    overall frequencies, so that metadata fusion (``model.metadata``) has a signal to use;
    0 writes exactly the bytes it wrote before the option existed.

        >>> import tempfile
        >>> root = write_synthetic_dataset(tempfile.mkdtemp() + "/ISIC2018", "isic2018-task2", n=4, size=(64, 64))
        >>> sorted(p.name for p in root.iterdir())
        ['ISIC2018_Task1-2_Training_Input', 'ISIC2018_Task1_Training_GroundTruth', 'ISIC2018_Task2_Training_GroundTruth_v3']
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown synthetic layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    if layout == "ham10000":
        ham10000_class_counts(n)  # raises when n is too small for 3 images per class
    elif n < MIN_IMAGES_PER_ATTRIBUTE:
        raise ConfigError(f"n={n} is too small for the isic2018-task2 layout: need at least "
                          f"{MIN_IMAGES_PER_ATTRIBUTE} so that every attribute occurs")
    width, height = size
    if min(width, height) < 32:  # below that the smallest lesions can miss every pixel
        raise ConfigError(f"synthetic image size {width}x{height} is too small; use at least 32x32")
    if not 0 <= colour_cast < float("inf"):
        raise ConfigError(f"colour cast strength must be a number >= 0 (0: none, 0.2: strong), got {colour_cast}")
    if not 0 <= metadata_signal <= 1:
        raise ConfigError(f"metadata signal must be a share between 0 and 1 (0: none, 1: every lesion), "
                          f"got {metadata_signal}")
    if metadata_signal and layout != "ham10000":
        raise ConfigError(f"a metadata signal needs layout ham10000 ({layout} writes no metadata)")
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root} already exists and is not an empty folder; give a new folder for the dataset")
    root.mkdir(parents=True, exist_ok=True)
    writer = _write_ham10000 if layout == "ham10000" else _write_task2
    signal = {"metadata_signal": float(metadata_signal)} if metadata_signal else {}
    writer(root, n, (int(width), int(height)), seed, colour_cast=float(colour_cast), **signal)
    return root
