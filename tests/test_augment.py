"""CIFAR training augmentation against a numpy reference: a 4-pixel zero pad, a 32x32 crop at
offsets 0..8, a horizontal (width-axis) flip, then normalisation (so padding is black, not the mean)."""
import jax
import numpy as np

from asyncjax import augment


def _reference(images, offsets, flips):
    mean, std = np.asarray(augment.CIFAR100_MEAN), np.asarray(augment.CIFAR100_STD)
    out = []
    for image, (dy, dx), flip in zip(images, offsets, flips):
        padded = np.zeros((40, 40, 3), np.float64)
        padded[4:36, 4:36] = image
        crop = padded[dy:dy + 32, dx:dx + 32]
        if flip:
            crop = crop[:, ::-1]      # Width axis: a mirror image, not upside down.
        out.append((crop / 255.0 - mean) / std)
    return np.stack(out)


def test_cifar_train_matches_numpy_reference():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (256, 32, 32, 3)).astype(np.uint8)
    key = jax.random.key(3)
    got = np.asarray(augment.cifar_train(images, key))
    # The draws the function makes from its key, reproduced here to drive the reference.
    crop_key, flip_key = jax.random.split(key)
    offsets = np.asarray(jax.random.randint(crop_key, (256, 2), 0, 9))
    flips = np.asarray(jax.random.bernoulli(flip_key, 0.5, (256,)))
    # float32 normalisation against float64: |x| <= 2.1 after normalising, so 1e-5 is a few ulps.
    np.testing.assert_allclose(got, _reference(images, offsets, flips), rtol=0, atol=1e-5)
    # Every offset 0..8 on both axes occurs (a 0..7 or 1..8 range would miss one), and both flips.
    assert set(offsets[:, 0]) == set(range(9)) and set(offsets[:, 1]) == set(range(9))
    assert 0 < flips.sum() < len(flips)
    # Padding is zero before normalisation: a crop at offset 0 has a black top-left border.
    corner = np.argmax((offsets[:, 0] == 0) & (offsets[:, 1] == 0) & ~flips)
    black = (0.0 - np.asarray(augment.CIFAR100_MEAN)) / np.asarray(augment.CIFAR100_STD)
    np.testing.assert_allclose(got[corner, 0, 0], black, atol=1e-5)


def test_cifar_eval_only_normalises():
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    want = (images / 255.0 - np.asarray(augment.CIFAR100_MEAN)) / np.asarray(augment.CIFAR100_STD)
    np.testing.assert_allclose(np.asarray(augment.cifar_eval(images)), want, rtol=0, atol=1e-5)
