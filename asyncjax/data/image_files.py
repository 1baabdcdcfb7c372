"""Image files of your own data: sizes from their headers, headers checked up front, every image
decoded to uint8 RGB (in-memory path; transforms.to_rgb: EXIF orientation, 16-bit, CMYK). A file
that cannot be read is named with how many more; one of more pixels than data.max_image_pixels (a
decompression bomb: a small file that decodes to gigabytes) is refused naming it and the limit."""
from __future__ import annotations

import collections
import warnings

import numpy as np

from asyncjax.data import transforms

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PROBE = 256  # Training images whose size decides between the in-memory and the streaming path.
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own limit (about 9,459 x 9,459), the default of data.max_image_pixels.


class TooManyPixels(ValueError):
    """An image over data.max_image_pixels: refused at once, not collected with the unreadable ones."""


def set_pixel_limit(max_pixels: int) -> int:
    """Pillow's decompression-bomb limit for this process (0: the default); returns it."""
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = max_pixels or DEFAULT_MAX_PIXELS
    return Image.MAX_IMAGE_PIXELS


def open_image(path, name: str | None = None):
    """The PIL image of `path` (a file name, or an open binary file with `name` for messages), its
    header read (nothing decoded yet). One of more pixels than the limit (set_pixel_limit) is a
    ValueError naming the file, its size and the limit."""
    from PIL import Image
    name = path if name is None else name
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():  # Pillow warns between 1x and 2x its limit: refused below instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as e:
            raise TooManyPixels(f"{name}: {str(e).split(' could be')[0]}, above data.max_image_pixels = {limit:,} "
                             "(a decompression bomb?); raise --config.data.max_image_pixels to accept it") from None
    if limit and image.width * image.height > limit:
        width, height = image.size
        image.close()
        raise TooManyPixels(f"{name}: {width} x {height} = {width * height:,} pixels, above data.max_image_pixels = "
                         f"{limit:,} (a decompression bomb?); raise --config.data.max_image_pixels to accept it")
    return image


def probe_sizes(paths: list[str]) -> list[tuple[int, int]]:
    """(width, height) from the headers of up to PROBE evenly spaced images (nothing decoded;
    unreadable ones are skipped here and named by decode_all / check_headers)."""
    picks = np.unique(np.linspace(0, len(paths) - 1, min(PROBE, len(paths))).astype(int))
    sizes = []
    for i in picks:
        try:
            with open_image(paths[i]) as image:
                sizes.append(image.size)
        except (OSError, ValueError, SyntaxError):
            continue
    return sizes or [(0, 0)]


def refuse_unreadable(bad: list) -> None:
    """One error for every unreadable image: the first named, with how many more."""
    if not bad:
        return
    more = (f" (and {len(bad) - 1} more: {', '.join(p for p, _ in bad[1:4])}{', ...' if len(bad) > 4 else ''})"
            if len(bad) > 1 else "")
    raise ValueError(f"{bad[0][0]}: unreadable or truncated image ({bad[0][1]}){more}")


def check_headers(paths: list[str]) -> None:
    """Every image's header read (the streaming path decodes in its workers, later): files PIL
    cannot open are named up front. A file cut short after its header surfaces when it is decoded."""
    bad = []
    for path in paths:
        try:
            with open_image(path):
                pass
        except TooManyPixels:
            raise
        except (OSError, ValueError, SyntaxError) as e:
            bad.append((path, e))
    refuse_unreadable(bad)


def decode_all(paths: list[str], size: tuple[int, int] | None, log=print) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 [N, H, W, 3] of every image, RGB, resized to `size` (width, height; default: the most
    common size among them). Every unreadable or truncated image is collected and the first named."""
    from PIL import Image
    images, bad = [], []
    for path in paths:
        try:
            with open_image(path) as image:
                image.load()  # A truncated file fails here, not at open.
                images.append(transforms.to_rgb(image))
        except TooManyPixels:
            raise
        except (OSError, ValueError, SyntaxError) as e:
            bad.append((path, e))
    refuse_unreadable(bad)
    sizes = collections.Counter(image.size for image in images)
    size = size or sizes.most_common(1)[0][0]
    odd = sum(n for s, n in sizes.items() if s != size)
    if odd:
        log(f"data: {odd} of {len(images)} images resized to the most common size {size[0]}x{size[1]}")
    return np.stack([np.asarray(image if image.size == size else image.resize(size, Image.BILINEAR), np.uint8)
                     for image in images]), size


def rgb(image) -> np.ndarray:
    """A decoded array (grayscale [H, W] or [H, W, 1], RGB, RGBA) as uint8 RGB [H, W, 3]."""
    array = np.asarray(image, np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]
