"""Image tables: what the trainer asks for the images of given rows.

The trainer decides which rows form each batch (`asyncjax.data.sampling`, a pure
function of seed, phase, epoch and step, already cut to this process's share);
an image table turns a sequence of such index batches into uint8 image batches.

- `InMemoryImages`: CIFAR, held as one uint8 array; a batch is a gather, and the
  augmentation runs on the device.
- `StreamingImages`: the 224-px benchmarks, over a grain-compatible source
  (`asyncjax.data.sources`). A grain `MapDataset` maps each index batch to images
  (read, decode, random-resized crop or resize + centre crop) and, with
  `workers > 0`, `mp_prefetch` runs that map in worker processes ahead of the step.
  Each image's randomness is seeded by (key, step, position), so resuming at a
  step rebuilds the same batches: the iterator position is the (epoch, step) saved
  with the checkpoint.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Iterator, Sequence

import grain
import numpy as np
from absl import flags

from asyncjax.data import image_files, transforms


class InMemoryImages:
    """uint8 [N, H, W, 3] images in host memory."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    def batches(self, index_batches: Sequence[np.ndarray], *, training: bool, key: tuple = (),
                start: int = 0) -> Iterator[np.ndarray]:
        del training, key, start  # Augmentation happens on the device.
        return (self.images[np.asarray(indices)] for indices in index_batches)


@dataclasses.dataclass(frozen=True)
class LoadBatch:
    """(indices, seed tuple) -> uint8 [len(indices), size, size, 3]; runs in grain workers."""
    source: object
    training: bool
    size: int
    resize: int
    max_pixels: int = 0  # data.max_image_pixels (0: Pillow's default)

    def __call__(self, element) -> np.ndarray:
        # Pillow's decompression-bomb limit is per process, and this may run in a grain worker,
        # which does not inherit the training process's setting.
        image_files.set_pixel_limit(self.max_pixels)
        indices, seed = element
        images = []
        for position, index in enumerate(indices):
            record = self.source[int(index)]
            name, image = record.get("path", f"record {int(index)}"), record["image"]
            if isinstance(image, (bytes, bytearray)):  # Its header read here: over the limit, refused, named.
                image = image_files.open_image(io.BytesIO(image), name)
            try:
                if self.training:
                    rng = np.random.default_rng([*seed, position])
                    images.append(transforms.train_transform(image, rng, self.size))
                else:
                    images.append(transforms.eval_transform(image, self.size, self.resize))
            except (OSError, ValueError, SyntaxError) as e:  # A file cut short after its header, say.
                raise ValueError(f"{name}: unreadable or truncated image ({e})") from e
            finally:
                if hasattr(image, "close"):
                    image.close()
        return np.stack(images)


class StreamingImages:
    """Images read and transformed on the fly from a random-access source."""

    def __init__(self, source, size: int = 224, resize: int = 256, workers: int = 0,
                 per_worker_buffer: int = 2, max_pixels: int = 0):
        if workers < 0:
            raise ValueError(f"data.workers must be >= 0, got {workers}")
        self.source, self.size, self.resize = source, size, resize
        self.workers, self.per_worker_buffer = workers, per_worker_buffer
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.source)

    @property
    def image_shape(self) -> tuple:
        return (self.size, self.size, 3)

    def dataset(self, index_batches: Sequence[np.ndarray], *, training: bool, key: tuple = (),
                start: int = 0) -> grain.IterDataset:
        """The grain pipeline over these batches; batch i's crops are seeded by (*key, start + i)."""
        if any(int(k) < 0 for k in key) or start < 0:
            raise ValueError(f"seed key {key} and start {start} must be non-negative")
        elements = [(np.asarray(indices), (*key, start + i)) for i, indices in enumerate(index_batches)]
        dataset = grain.MapDataset.source(elements).map(
            LoadBatch(self.source, training, self.size, self.resize, self.max_pixels)).to_iter_dataset()
        if self.workers:
            if not flags.FLAGS.is_parsed():
                # grain's multiprocessing reads its absl flags; outside an absl app (a notebook,
                # pytest) they were never parsed, and their defaults are what we want.
                flags.FLAGS.mark_as_parsed()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.workers, per_worker_buffer_size=self.per_worker_buffer))
        return dataset

    def batches(self, index_batches: Sequence[np.ndarray], *, training: bool, key: tuple = (),
                start: int = 0) -> Iterator[np.ndarray]:
        return iter(self.dataset(index_batches, training=training, key=key, start=start))


def streaming_tables(split_sources: dict, data_config) -> dict:
    """{split: StreamingImages} over random-access sources, at data.image_size: the 224-px
    benchmarks and custom data of larger images both stream through here."""
    return {split: StreamingImages(source, size=data_config.image_size, resize=data_config.resize_size,
                                   workers=data_config.workers, max_pixels=data_config.get("max_image_pixels", 0))
            for split, source in split_sources.items()}
