"""CIFAR-100 readers: the official binary layout, and TFDS `cifar100`.

The binary layout (``train.bin``, ``test.bin``; records of 3,074 bytes: coarse
label, fine label, 1,024 red, 1,024 green, 1,024 blue pixel bytes) is what
``cifar-100-binary.tar.gz`` unpacks to, and what ../shared/data/cifar-100-binary
holds (a seeded re-split of the official images; say so beside any number
measured on it).
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

RECORD_BYTES = 3074
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 100
SPLIT_FILES = {"train": "train.bin", "test": "test.bin"}


def read_records(directory: str, split: str) -> np.ndarray:
    """One split's raw records, uint8 [N, 3074] (coarse label, fine label, pixel planes), checked:
    FileNotFoundError / ValueError with the offending path when the directory or file is missing
    or the file is not a whole number of records."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"CIFAR-100 directory {directory!r} does not exist; it must hold train.bin and "
            "test.bin from the official cifar-100-binary.tar.gz "
            "(https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz)")
    path = os.path.join(directory, SPLIT_FILES[split])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-100 file {path!r} is missing")
    size = os.path.getsize(path)
    if size == 0 or size % RECORD_BYTES:
        raise ValueError(
            f"{path!r} has {size} bytes, not a whole number of {RECORD_BYTES}-byte "
            "CIFAR-100 records: the file is truncated or not CIFAR-100 binary")
    return np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)


def read_cifar100_binary(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split of CIFAR-100 in the official binary layout.

    Returns (images uint8 [N, 32, 32, 3] in HWC order, fine labels int64 [N]); the checks
    of read_records.
    """
    raw = read_records(directory, split)
    path = os.path.join(directory, SPLIT_FILES[split])
    labels = raw[:, 1].astype(np.int64)
    if labels.max() >= NUM_CLASSES:
        raise ValueError(f"{path!r} has fine labels >= {NUM_CLASSES}: not CIFAR-100")
    images = raw[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def load_cifar100_tfds(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 through TFDS (`cifar100`, downloaded and prepared on first use).

    Reads through `tfds.data_source`, which needs no TensorFlow at read time.
    """
    import tensorflow_datasets as tfds  # Imported lazily: only this source needs it.

    try:
        source = tfds.data_source("cifar100", split=split, data_dir=data_dir, download=True)
    except Exception as e:  # Offline, a proxy, a half-prepared directory: one line that says what to do.
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise FileNotFoundError(
            f"CIFAR-100 through TFDS failed ({type(e).__name__}: {reason}); on a machine without network, pass "
            "--config.data.cifar100_dir=DIR (the official cifar-100-binary layout)") from e
    images = np.empty((len(source),) + IMAGE_SHAPE, np.uint8)
    labels = np.empty((len(source),), np.int64)
    for i in range(len(source)):
        example = source[i]
        images[i] = example["image"]
        labels[i] = example["label"]
    return images, labels


def load_cifar100(split: str, cifar100_dir: str | None = None,
                  tfds_data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One split of CIFAR-100: from `cifar100_dir` (binary layout) if given, else TFDS."""
    if cifar100_dir:
        return read_cifar100_binary(cifar100_dir, split)
    return load_cifar100_tfds(split, tfds_data_dir)


def verify_sha256sums(directory: str) -> None:
    """Checks the files listed in `directory`/SHA256SUMS (if present) against it.

    Raises ValueError naming the first file whose SHA-256 differs.
    """
    listing = os.path.join(directory, "SHA256SUMS")
    if not os.path.isfile(listing):
        return
    with open(listing) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            expected, name = line.split(maxsplit=1)
            path = os.path.join(directory, name.strip().lstrip("*"))
            digest = hashlib.sha256()
            with open(path, "rb") as data:
                for block in iter(lambda: data.read(1 << 22), b""):
                    digest.update(block)
            if digest.hexdigest() != expected.lower():
                raise ValueError(f"{path!r} does not match its checksum in {listing}:{line_number}")
