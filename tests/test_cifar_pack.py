"""CIFAR-100-LT packed for a device call and unpacked there: the rows a run reads byte for byte,
checked by SHA-256; any other row refused by the loader."""
import json
import os

import ml_collections
import numpy as np
import pytest

from asyncjax.data import cifar_pack, datasets
from tests import helpers


def _data_config(directory, imbalance=10, val_per_class=2):
    return ml_collections.ConfigDict(dict(cifar100_dir=str(directory), tfds_data_dir=None, imbalance=imbalance,
                                          subsample_seed=0, max_count=20, val_per_class=val_per_class))


def test_unpacked_copy_gives_the_same_run_data_and_refuses_other_rows(tmp_path):
    source = helpers.write_tiny_cifar(tmp_path / "cifar", train_per_class=20, test_per_class=3)
    manifest = cifar_pack.pack(source, str(tmp_path / "pack"), imbalances=(10,), val_per_class=2, max_count=20)
    assert not any(name.endswith(".bin") for name in os.listdir(tmp_path / "pack"))
    cifar_pack.unpack(str(tmp_path / "pack"), str(tmp_path / "unpacked"))
    original = np.fromfile(os.path.join(source, "train.bin"), np.uint8).reshape(-1, cifar_pack.RECORD)
    unpacked = np.fromfile(tmp_path / "unpacked" / "train.bin", np.uint8).reshape(-1, cifar_pack.RECORD)
    used = np.load(tmp_path / "unpacked" / "packed_rows.npy")
    assert len(used) == manifest["used_rows"] < len(original)
    np.testing.assert_array_equal(unpacked[used], original[used])         # Byte for byte.
    np.testing.assert_array_equal(unpacked[:, :2], original[:, :2])        # Every row's labels.
    others = np.setdiff1d(np.arange(len(original)), used)
    assert len(others) and not unpacked[others, 2:].any()                  # The rest: zero pixels.
    assert (tmp_path / "unpacked" / "test.bin").read_bytes() == open(os.path.join(source, "test.bin"), "rb").read()
    # The loader gives a run the very data the source gives it.
    want = datasets.load_cifar100_lt(_data_config(source))
    got = datasets.load_cifar100_lt(_data_config(tmp_path / "unpacked"))
    for name in ("train", "test", "val"):
        images = [getattr(d, f"{name}_images").images for d in (want, got)]  # InMemoryImages.
        np.testing.assert_array_equal(images[1], images[0], err_msg=name)
        np.testing.assert_array_equal(getattr(got, f"{name}_labels"), getattr(want, f"{name}_labels"))
    # Another imbalance factor or validation size would read rows the copy lacks: refused, named.
    for other in (_data_config(tmp_path / "unpacked", imbalance=5),
                  _data_config(tmp_path / "unpacked", val_per_class=5)):
        with pytest.raises(ValueError, match="packed copy of CIFAR-100 for imbalance"):
            datasets.load_cifar100_lt(other)
    assert json.loads((tmp_path / "unpacked" / cifar_pack.PACKED).read_text())["imbalances"] == [10.0]


def test_a_damaged_pack_is_refused(tmp_path):
    from PIL import Image

    source = helpers.write_tiny_cifar(tmp_path / "cifar", train_per_class=20, test_per_class=2)
    cifar_pack.pack(source, str(tmp_path / "pack"), imbalances=(10,), val_per_class=2, max_count=20)
    mosaic = tmp_path / "pack" / "train_0.webp"
    with Image.open(mosaic) as image:
        pixels = np.asarray(image.convert("RGB")).copy()
    pixels[0, 0] ^= 1  # One bit of one image.
    Image.fromarray(pixels).save(mosaic, "WEBP", lossless=True)
    with pytest.raises(ValueError, match="differ from the originals"):
        cifar_pack.unpack(str(tmp_path / "pack"), str(tmp_path / "unpacked"))
    assert not (tmp_path / "unpacked").exists()
