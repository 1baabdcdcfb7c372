"""Host-side image transforms for the 224-px benchmarks, run in grain workers.

Training: Inception-style random-resized crop to 224 (area 8%-100%, aspect 3/4-4/3,
torchvision's algorithm with its ten tries and centre-crop fallback) and a
horizontal flip. Evaluation: resize the shorter side to 256, centre crop 224.
The output stays uint8; per-channel normalisation happens on the device
(`asyncjax.augment`), so the host sends a quarter of the bytes.
Randomness comes from a numpy Generator seeded by the caller, so a batch's crops
are a function of (seed, phase, epoch, step, position) and a resumed run repeats them.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as RGB, the way it is meant to be seen: its EXIF orientation applied (phone
    photos are stored sideways), 16-bit images scaled to 8 bits (not clipped to white), CMYK,
    palette, grayscale and alpha converted. Training, evaluation and predict all decode through here."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grayscale (PNG, TIFF).
        array = np.clip(np.asarray(image, np.int64), 0, 65535) >> 8
        image = Image.fromarray(array.astype(np.uint8), "L")
    return image.convert("RGB")


def decode(image) -> Image.Image:
    """Encoded bytes (JPEG/PNG), an opened PIL image or a uint8 HxWx{1,3} array -> an RGB PIL image
    (to_rgb)."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as opened:
            return to_rgb(opened)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array.astype(np.uint8)).convert("RGB")


def crop_box(height: int, width: int, rng: np.random.Generator, scale=(0.08, 1.0),
             ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a random-resized crop (torchvision's rule)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    # Fallback: the whole image clipped to the aspect range, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_h, crop_w = height, int(round(height * ratio[1]))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def train_transform(image, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Random-resized crop to size x size, flip with probability 1/2; uint8 [size, size, 3]."""
    picture = decode(image)
    top, left, crop_h, crop_w = crop_box(picture.height, picture.width, rng)
    picture = picture.resize((size, size), Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
    out = np.asarray(picture, np.uint8)
    return out[:, ::-1] if rng.random() < 0.5 else out


def eval_transform(image, size: int = 224, resize: int = 256) -> np.ndarray:
    """Resize the shorter side to `resize`, centre crop size x size; uint8 [size, size, 3]."""
    picture = decode(image)
    short = min(picture.width, picture.height)
    new_w = max(size, round(picture.width * resize / short))
    new_h = max(size, round(picture.height * resize / short))
    picture = picture.resize((new_w, new_h), Image.BILINEAR)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.asarray(picture.crop((left, top, left + size, top + size)), np.uint8)
