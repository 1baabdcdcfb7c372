"""The grain pipeline: deterministic batches, exact resume, decoding in worker processes."""
import os

import numpy as np
import pytest

from asyncjax.data import pipeline, sources, transforms
from tests.helpers import write_jpeg_folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    path = write_jpeg_folder(root / "images", root / "lists", "Places_LT_train.txt", num_images=16)
    return sources.ListFolderSource(path, str(root / "images"))


def _index_batches():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 16, size=4) for _ in range(5)]


def test_batches_match_direct_transforms(source):
    table = pipeline.StreamingImages(source, size=24, resize=28)
    batches = _index_batches()
    got = list(table.batches(batches, training=True, key=(7, 1, 3), start=2))
    assert len(got) == 5 and got[0].shape == (4, 24, 24, 3) and got[0].dtype == np.uint8
    for i, (indices, images) in enumerate(zip(batches, got)):
        for position, index in enumerate(indices):
            rng = np.random.default_rng([7, 1, 3, 2 + i, position])
            np.testing.assert_array_equal(images[position],
                                          transforms.train_transform(source[int(index)]["image"], rng, 24))
    evaluated = next(table.batches(batches[:1], training=False))
    np.testing.assert_array_equal(evaluated[1], transforms.eval_transform(source[int(batches[0][1])]["image"], 24, 28))


def test_resuming_at_a_step_repeats_the_batches(source):
    table = pipeline.StreamingImages(source, size=16, resize=18)
    batches = _index_batches()
    whole = list(table.batches(batches, training=True, key=(0, 1, 0)))
    resumed = list(table.batches(batches[3:], training=True, key=(0, 1, 0), start=3))
    for a, b in zip(whole[3:], resumed):
        np.testing.assert_array_equal(a, b)
    other_epoch = next(table.batches(batches, training=True, key=(0, 1, 1)))
    assert not np.array_equal(whole[0], other_epoch)


class ParentForbidden:
    """A source that refuses to be read in the process that built it."""

    def __init__(self, inner):
        self.inner, self.parent = inner, os.getpid()

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        if os.getpid() == self.parent:
            raise RuntimeError("read in the training process")
        return self.inner[index]


def test_workers_decode_outside_the_training_process(source):
    batches = _index_batches()
    in_process = list(pipeline.StreamingImages(source, size=16, resize=18).batches(
        batches, training=True, key=(1, 2, 3)))
    with pytest.raises(RuntimeError, match="training process"):
        next(pipeline.StreamingImages(ParentForbidden(source), size=16).batches(batches, training=False))
    workers = pipeline.StreamingImages(ParentForbidden(source), size=16, resize=18, workers=2)
    from_workers = list(workers.batches(batches, training=True, key=(1, 2, 3)))
    assert len(from_workers) == len(in_process)
    for a, b in zip(in_process, from_workers):  # Same bytes, in order, whichever process decoded them.
        np.testing.assert_array_equal(a, b)


def test_in_memory_table_gathers():
    images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    table = pipeline.InMemoryImages(images)
    got = list(table.batches([np.array([3, 1]), np.array([9, 9])], training=True))
    np.testing.assert_array_equal(got[0], images[[3, 1]])
    assert table.image_shape == (2, 2, 3) and len(table) == 10


def test_the_pixel_limit_holds_in_grain_workers_too(tmp_path):
    """data.max_image_pixels reaches the decoding workers (each process has its own Pillow limit;
    they used to keep Pillow's default) and a bomb is refused there with the file named."""
    from asyncjax.data import image_files
    path = write_jpeg_folder(tmp_path / "images", tmp_path / "lists", "train.txt", num_images=4, sizes=((40, 40),))
    source = sources.ListFolderSource(path, str(tmp_path / "images"))
    try:
        for workers in (1, 0):  # The worker first, while this process still has Pillow's default.
            table = pipeline.StreamingImages(source, size=16, resize=18, workers=workers, max_pixels=1000)
            with pytest.raises(Exception, match=r"img_0.jpg: 40 x 40 = 1,600 pixels, above data.max_image_pixels = 1,000"):
                list(table.batches([np.arange(4)], training=False))
        allowed = pipeline.StreamingImages(source, size=16, resize=18, workers=1, max_pixels=1600)
        assert next(allowed.batches([np.arange(4)], training=False)).shape == (4, 16, 16, 3)
    finally:
        image_files.set_pixel_limit(0)
