"""Host-side transforms of the 224-px pipelines against direct computations."""
import io
import math

import numpy as np
import pytest
from PIL import Image

from asyncjax.data import transforms


@pytest.mark.parametrize("height,width", [(375, 500), (500, 120), (224, 224), (60, 900)])
def test_crop_box_follows_scale_and_ratio(height, width):
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = transforms.crop_box(height, width, rng)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
        if h * w < height * width:  # Not the fallback: area and aspect within torchvision's ranges.
            assert 0.08 * height * width * 0.9 <= h * w
            assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_crop_box_fallback_is_centred_and_clipped_to_the_ratio():
    class NoLuck:  # Every try draws an area larger than the image.
        def uniform(self, low, high):
            return high * 50
        def integers(self, low, high):
            raise AssertionError("no try should succeed")
    top, left, h, w = transforms.crop_box(100, 400, NoLuck())
    assert (h, w) == (100, round(100 * 4 / 3)) and left == (400 - w) // 2 and top == 0


def test_train_transform_is_seeded_and_flips():
    image = np.random.default_rng(1).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    a = transforms.train_transform(image, np.random.default_rng([3, 1, 4]), size=32)
    b = transforms.train_transform(image, np.random.default_rng([3, 1, 4]), size=32)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    flips = [transforms.train_transform(np.tile(np.arange(120, dtype=np.uint8)[None, :, None], (90, 1, 3)),
                                        np.random.default_rng(s), size=16) for s in range(40)]
    increasing = sum(int(f[0, -1, 0]) > int(f[0, 0, 0]) for f in flips)
    assert 10 <= increasing <= 30  # About half the crops of a left-to-right ramp are mirrored.


def test_eval_transform_is_resize_then_centre_crop():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    out = transforms.eval_transform(image, size=224, resize=256)
    # Direct: shorter side 300 -> 256, so 400 -> 341; crop the centre 224 x 224.
    resized = np.asarray(Image.fromarray(image).resize((341, 256), Image.BILINEAR))
    top, left = (256 - 224) // 2, (341 - 224) // 2
    np.testing.assert_array_equal(out, resized[top:top + 224, left:left + 224])


def test_decode_bytes_and_arrays_agree():
    image = np.random.default_rng(3).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    np.testing.assert_array_equal(np.asarray(transforms.decode(buffer.getvalue())), image)
    grey = image[..., :1]
    np.testing.assert_array_equal(np.asarray(transforms.decode(grey)), np.repeat(grey, 3, axis=-1))
    assert math.isclose(np.asarray(transforms.decode(image)).mean(), image.mean())
