"""Training and evaluation sets as host arrays, by dataset name.

CIFAR-100-LT is small enough to hold in memory: images stay uint8 and are
augmented on the device. The other benchmarks (ImageNet-LT, Places-LT,
iNaturalist 2018) need the streaming grain pipeline, which is not written yet.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from asyncjax.data import cifar, longtail


@dataclasses.dataclass
class LongTailData:
    train_images: np.ndarray     # uint8 [N, H, W, 3]
    train_labels: np.ndarray     # original class ids [N]
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    note: str = ""               # Said beside every figure measured on this data.

    @property
    def image_shape(self) -> tuple:
        return tuple(self.train_images.shape[1:])

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.train_labels, minlength=self.num_classes)


def load(config: ml_collections.ConfigDict) -> LongTailData:
    if config.dataset == "cifar100_lt":
        return load_cifar100_lt(config.data)
    raise ValueError(
        f"dataset {config.dataset!r} has no input pipeline in this version: only 'cifar100_lt' "
        "can be trained so far (ImageNet-LT, Places-LT and iNaturalist 2018 need the grain "
        "pipeline that is still to be written)")


def load_cifar100_lt(data_config) -> LongTailData:
    """CIFAR-100-LT: the training split subsampled to lt_counts(100, max_count, IF); the
    balanced test split untouched."""
    directory = data_config.cifar100_dir
    train_images, train_labels = cifar.load_cifar100("train", directory, data_config.tfds_data_dir)
    test_images, test_labels = cifar.load_cifar100("test", directory, data_config.tfds_data_dir)
    counts = longtail.lt_counts(cifar.NUM_CLASSES, data_config.max_count, data_config.imbalance)
    keep = longtail.subsample_long_tail(train_labels, counts, seed=data_config.subsample_seed)
    note = ""
    if directory and "shared" in str(directory).split("/"):
        note = "CIFAR-100 re-split copy from ../shared (seeded re-split of the official images)"
    return LongTailData(train_images[keep], train_labels[keep], test_images, test_labels,
                        cifar.NUM_CLASSES, note)
