"""ISIC-sized benchmark images made from the real ISIC 2018 samples in /work/shared/data.

Each image is one of the six real 1022x767 ISIC 2018 Task 1 images (with its real
lesion mask), flipped or rotated, cropped by up to 10 %, colour-shifted a little and
resized to an ISIC 2018 size: half at 1022x767, a quarter at 1504x1128, a quarter at
2048x1536 (the Task 1 training images range from about 540x576 to 6688x4439). JPEG
quality 95, as in the ISIC archive. Written in the HAM10000 layout so derm reads them
with `derm.data.formats.load_table`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

SAMPLE_ROOT = Path(os.environ.get("DERM_ISIC_SAMPLE", "/work/shared/data/isic2018_sample"))
ISIC_SIZES = ((1022, 767), (1022, 767), (1504, 1128), (2048, 1536))
CLASSES = ("nv", "mel", "bkl", "bcc", "akiec", "df", "vasc")


def write_isic_sized_dataset(root: Path, n: int, sizes=ISIC_SIZES, seed: int = 0) -> Path:
    """Write n images with lesion masks under `root` (HAM10000 layout), once; returns root."""
    root = Path(root)
    if (root / ".complete").exists():
        return root
    images, masks = root / "HAM10000_images_part_1", root / "HAM10000_segmentations_lesion_tschandl"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    sources = sorted((SAMPLE_ROOT / "images").glob("ISIC_*.jpg"))
    if not sources:
        raise SystemExit(f"no ISIC sample images in {SAMPLE_ROOT}/images; set DERM_ISIC_SAMPLE")
    rng = np.random.default_rng(seed)
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for i in range(n):
        source = sources[i % len(sources)]
        image = Image.open(source).convert("RGB")
        mask = Image.open(SAMPLE_ROOT / "task1_masks" / f"{source.stem}_segmentation.png").convert("L")
        image, mask = _vary(image, mask, sizes[i % len(sizes)], rng)
        image_id = f"ISIC_{9000000 + i:07d}"
        image.save(images / f"{image_id}.jpg", quality=95)
        mask.save(masks / f"{image_id}_segmentation.png")
        rows.append(f"HAM_{i:07d},{image_id},{CLASSES[i % len(CLASSES)]},histo,50.0,female,back")
    (root / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    (root / ".complete").write_text("")
    return root


def _vary(image: Image.Image, mask: Image.Image, size: tuple[int, int], rng) -> tuple[Image.Image, Image.Image]:
    turn = [None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180]
    step = turn[int(rng.integers(len(turn)))]
    if step is not None:
        image, mask = image.transpose(step), mask.transpose(step)
    width, height = image.size
    dx, dy = (int(rng.integers(0, width // 10)), int(rng.integers(0, height // 10)))
    box = (dx, dy, width - int(rng.integers(0, width // 10)), height - int(rng.integers(0, height // 10)))
    image = image.crop(box).resize(size, Image.Resampling.BICUBIC)
    mask = mask.crop(box).resize(size, Image.Resampling.NEAREST)
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.85, 1.15)))
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.9, 1.1)))
    return image, mask
