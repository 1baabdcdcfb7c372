"""On-device preprocessing of uint8 image batches, inside the jitted steps.

For CIFAR the uint8 images are sent as they are and augmented on the device
(pad-4 random crop + horizontal flip), so the host only gathers indices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# CIFAR-100 training-set channel statistics.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images, mean, std):
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean)) / jnp.asarray(std)


def pad_crop_flip(images, rng):
    """Pad 4 pixels with zeros, crop back to the images' size at a random offset, flip half:
    float32 pixel values (0-255), at any image size."""
    crop_rng, flip_rng = jax.random.split(rng)
    batch, height, width, channels = images.shape
    padded = jnp.pad(images.astype(jnp.float32), ((0, 0), (4, 4), (4, 4), (0, 0)))
    offsets = jax.random.randint(crop_rng, (batch, 2), 0, 9)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (height, width, channels))
    crops = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(flip_rng, 0.5, (batch,))
    return jnp.where(flip[:, None, None, None], crops[:, :, ::-1, :], crops)


def cifar_train(images, rng):
    """CIFAR's augmentation (pad-4 random crop, horizontal flip), normalised."""
    return normalize(pad_crop_flip(images, rng), CIFAR100_MEAN, CIFAR100_STD)


def cifar_eval(images, rng=None):
    del rng
    return normalize(images, CIFAR100_MEAN, CIFAR100_STD)


def imagenet_eval(images, rng=None):
    del rng
    return normalize(images, IMAGENET_MEAN, IMAGENET_STD)


def small_train(images, rng):
    """Custom data of small images: CIFAR's pad-4 crop and flip at their own size, normalised
    with ImageNet's statistics (fixed, so that a prediction needs only the config)."""
    return normalize(pad_crop_flip(images, rng), IMAGENET_MEAN, IMAGENET_STD)


def get_preprocess(dataset: str, small: bool = False):
    """(train_fn(images, rng), eval_fn(images, rng)) for a dataset name; `small`: custom data
    held in memory (augmented here, on the device)."""
    if dataset.startswith("cifar"):
        return cifar_train, cifar_eval
    if small:
        return small_train, imagenet_eval
    # Larger datasets arrive already cropped and flipped by the input pipeline.
    return imagenet_eval, imagenet_eval
