import os

import numpy as np
import pytest

from asyncjax.data import cifar, longtail


def test_reads_real_cifar100(cifar100_dir):
    images, labels = cifar.read_cifar100_binary(cifar100_dir, "test")
    assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), np.full(100, 100))
    # The first record, decoded by hand from the file's bytes (planes R, G, B).
    with open(os.path.join(cifar100_dir, "test.bin"), "rb") as f:
        record = np.frombuffer(f.read(cifar.RECORD_BYTES), np.uint8)
    assert labels[0] == record[1]
    np.testing.assert_array_equal(images[0, :, :, 0].ravel(), record[2:1026])
    np.testing.assert_array_equal(images[0, :, :, 2].ravel(), record[2050:])
    # Real photographs, not noise: neighbouring pixels are strongly correlated.
    x = images[:500].astype(np.float64)
    corr = np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1]
    assert corr > 0.8


def test_real_cifar100_long_tail(cifar100_dir):
    _, labels = cifar.read_cifar100_binary(cifar100_dir, "train")
    assert len(labels) == 50000
    counts = longtail.lt_counts(100, 500, 100)
    kept = longtail.subsample_long_tail(labels, counts, seed=0)
    assert len(kept) == 10847
    np.testing.assert_array_equal(np.bincount(labels[kept]), counts)


def test_checksums(cifar100_dir, tmp_path):
    cifar.verify_sha256sums(cifar100_dir)  # The shared copy is intact.
    (tmp_path / "test.bin").write_bytes(b"x")
    (tmp_path / "SHA256SUMS").write_text("00ff  test.bin\n")
    with pytest.raises(ValueError, match="test.bin.*checksum"):
        cifar.verify_sha256sums(str(tmp_path))


def test_missing_directory_and_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cifar.read_cifar100_binary(str(tmp_path / "nope"), "train")
    with pytest.raises(FileNotFoundError, match="train.bin"):
        cifar.read_cifar100_binary(str(tmp_path), "train")
    (tmp_path / "train.bin").write_bytes(b"\0" * (cifar.RECORD_BYTES + 7))
    with pytest.raises(ValueError, match="whole number"):
        cifar.read_cifar100_binary(str(tmp_path), "train")
    with pytest.raises(ValueError, match="split"):
        cifar.read_cifar100_binary(str(tmp_path), "validation")


def test_tfds_source_without_a_directory():
    """No cifar100_dir: CIFAR-100 comes from TFDS (mocked here; nothing downloads)."""
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=9):
        images, labels = cifar.load_cifar100("test", cifar100_dir=None)
    assert images.shape == (9, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < 100
