"""Command line: python -m asyncjax.example_data --output=DIR [--size=28] [--imbalance=20]

Writes a small long-tailed image classification set to try the custom-data path on (README,
"Your own data"): 10 classes of drawn shapes (disc, square, triangle, cross, ring, bar, ...),
grayscale, `--size` px, from 200 training images for the first class down to 200/imbalance for
the last (the exponential profile of CIFAR-100-LT), and 20 test images per class, as

    DIR/train/CLASS/*.png, DIR/test/CLASS/*.png      (kind=folder)
    DIR/train.txt, DIR/test.txt, DIR/names.txt       (kind=lists: `relative/path label`)

Seeded: the same command writes the same images.
"""
from __future__ import annotations

import os

import numpy as np
from absl import app, flags



def define_flags():
    """Defined only when run as a program: the tests import SHAPES and write() beside other tools."""
    flags.DEFINE_string("output", None, "Folder to write (created).")
    flags.DEFINE_integer("size", 28, "Image side in pixels (> 64 gives the streaming path).")
    flags.DEFINE_float("imbalance", 20.0, "n_max / n_min of the training split.")
    flags.DEFINE_integer("max_count", 200, "Training images of the largest class.")
    flags.DEFINE_integer("test_per_class", 20, "Test images per class.")
    flags.DEFINE_integer("seed", 0, "Seed of the drawings.")


SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar", "diamond", "corner", "dots", "stripes")


def draw(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [size, size]: one jittered drawing of `shape` on noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.35, 0.65, 2)
    r = rng.uniform(0.18, 0.3)
    dy, dx = y - cy, x - cx
    masks = {
        "disc": dy ** 2 + dx ** 2 < r ** 2,
        "square": (abs(dy) < r) & (abs(dx) < r),
        "triangle": (dy < r) & (dy > -r) & (abs(dx) < (dy + r) / 2),
        "cross": ((abs(dy) < r / 4) | (abs(dx) < r / 4)) & (abs(dy) < r) & (abs(dx) < r),
        "ring": (dy ** 2 + dx ** 2 < r ** 2) & (dy ** 2 + dx ** 2 > (0.6 * r) ** 2),
        "bar": (abs(dy) < r / 3) & (abs(dx) < 1.3 * r),
        "diamond": abs(dy) + abs(dx) < r,
        "corner": (dy > -r) & (dx > -r) & ((dy < -r / 2) | (dx < -r / 2)) & (dy < r) & (dx < r),
        "dots": ((dy - r / 2) ** 2 + (dx - r / 2) ** 2 < (r / 3) ** 2) | ((dy + r / 2) ** 2 + (dx + r / 2) ** 2 < (r / 3) ** 2),
        "stripes": (np.sin(x * size * rng.uniform(0.8, 1.2)) > 0) & (abs(dy) < r) & (abs(dx) < r),
    }
    image = rng.normal(40, 20, (size, size)) + 170 * masks[shape]
    return np.clip(image, 0, 255).astype(np.uint8)


def write(output: str, size: int = 28, imbalance: float = 20.0, max_count: int = 200, test_per_class: int = 20,
          seed: int = 0) -> dict:
    """Writes the set; returns {split: images per class}."""
    from PIL import Image

    from asyncjax.data import longtail
    rng = np.random.default_rng(seed)
    counts = {"train": longtail.lt_counts(len(SHAPES), max_count, imbalance).tolist(),
              "test": [test_per_class] * len(SHAPES)}
    for split, per_class in counts.items():
        lines = []
        for label, (shape, count) in enumerate(zip(SHAPES, per_class)):
            folder = os.path.join(output, split, shape)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                Image.fromarray(draw(shape, size, rng), mode="L").save(os.path.join(folder, f"{i:04d}.png"))
                lines.append(f"{split}/{shape}/{i:04d}.png {label}")
        with open(os.path.join(output, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(output, "names.txt"), "w") as f:
        f.write("\n".join(SHAPES) + "\n")
    return counts


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if not FLAGS.output:
        raise app.UsageError("--output=DIR is required")
    if FLAGS.size < 8 or FLAGS.imbalance < 1 or FLAGS.max_count < 1 or FLAGS.test_per_class < 0:
        raise ValueError("--size >= 8, --imbalance >= 1, --max_count >= 1 and --test_per_class >= 0, please")
    counts = write(FLAGS.output, FLAGS.size, FLAGS.imbalance, FLAGS.max_count, FLAGS.test_per_class, FLAGS.seed)
    print(f"wrote {sum(counts['train'])} training images ({counts['train'][0]} to {counts['train'][-1]} per class) "
          f"and {sum(counts['test'])} test images of {len(SHAPES)} classes, {FLAGS.size}x{FLAGS.size} px, "
          f"to {FLAGS.output}")


if __name__ == "__main__":
    from asyncjax import cli
    define_flags()
    cli.run(main, __doc__)
