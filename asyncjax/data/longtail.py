"""Long-tailed data: the `LongTailData` every loader returns, long-tailed subsets and
validation splits, class ranking, the head/tail split and shot groups.

Everything here is plain numpy: it runs once on the host before training, and
its outputs (counts, index lists, the rank <-> class-id mapping) are saved with
every checkpoint so that a run can be resumed and its exports read back.
See ../shared/METHOD.md, "Notation" and "CIFAR-100-LT".
"""
from __future__ import annotations

import dataclasses

import numpy as np

# Shot-group boundaries used by the field (Liu et al., 2019): Many > 100,
# Medium 20..100, Few < 20 training images.
MANY_SHOT_MIN = 101
FEW_SHOT_MAX = 19
# Default split point: phase I takes the classes with at least this many images
# (Many + Medium shot), which gives C1 = 70 on CIFAR-100-LT IF100.
DEFAULT_HEAD_MIN_COUNT = 20


def lt_counts(num_classes: int, max_count: int, imbalance_factor: float) -> np.ndarray:
    """Exponential long-tail profile n_j = floor(max_count * (1/IF)^(j/(C-1))).

    Class j = 0 .. C-1 in original id order (paper Sec. 4, "Datasets"; LDAM's
    generator). CIFAR-100 with max_count 500 gives 12,608 / 10,847 / 9,502
    images for IF = 50 / 100 / 200.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")
    if imbalance_factor < 1:
        raise ValueError(f"imbalance_factor must be >= 1, got {imbalance_factor}")
    # Written exactly as LDAM-DRW's generator (img_max * mu ** (j / (C - 1.0)))
    # so that float rounding gives the same floors as the published subsets.
    mu = 1.0 / imbalance_factor
    return np.array(
        [int(max_count * mu ** (j / (num_classes - 1.0))) for j in range(num_classes)],
        dtype=np.int64)


def subsample_long_tail(labels: np.ndarray, counts: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of a long-tailed subset: for each class c (in id order), the first
    counts[c] entries of a seeded permutation of that class's indices.

    (choice, METHOD.md) The permutations come from one numpy Generator seeded
    with `seed`, drawn class by class in id order. Returns indices sorted
    ascending, so the subset does not depend on iteration order downstream.
    """
    labels = np.asarray(labels)
    counts = np.asarray(counts)
    rng = np.random.default_rng(seed)
    kept = []
    for c, n_c in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        if n_c > len(idx):
            raise ValueError(
                f"class {c} has {len(idx)} images, fewer than the {n_c} asked for")
        kept.append(rng.permutation(idx)[:n_c])
    return np.sort(np.concatenate(kept)).astype(np.int64)


def validation_split(labels: np.ndarray, kept: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of a validation split drawn from the rows a long-tailed subset leaves out
    (METHOD.md, CIFAR-100-LT): up to `per_class` of each class, the first of a seeded permutation
    of its left-out rows, so never a training row (and, taken from the training split, never a
    test image). A class the subset keeps whole (the largest) has none. Sorted ascending.
    The generator is seeded with (seed, 1), a stream of its own: changing the validation size
    never changes which images train."""
    labels = np.asarray(labels)
    left_out = np.ones(len(labels), bool)
    left_out[np.asarray(kept)] = False
    rng = np.random.default_rng([seed, 1])
    chosen = [rng.permutation(np.flatnonzero(left_out & (labels == c)))[:per_class]
              for c in range(int(labels.max()) + 1)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def carve_validation(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of a training split that leaves nothing out (your own data
    given without a validation split): up to `per_class` images of each class, seeded, taken out of
    training, from classes that can spare them (a class keeps at least as many as it gives).
    `validation_split` is the rule where a long-tailed subset leaves images out to draw from."""
    rng = np.random.default_rng([seed, 1])
    val = []
    for c in range(int(labels.max()) + 1):
        rows = np.flatnonzero(labels == c)
        val.append(rng.permutation(rows)[:min(per_class, len(rows) // 2)])
    val = np.sort(np.concatenate(val)).astype(np.int64)
    return np.setdiff1d(np.arange(len(labels)), val), val


def long_tailed_subset(train_labels: np.ndarray, num_classes: int, data_config, max_count: int):
    """(kept rows, validation rows or None) of a balanced training split made long-tailed:
    lt_counts(C, max_count, data.imbalance) per class, seeded by data.subsample_seed, and up to
    data.val_per_class validation images per class from the rows it leaves out. CIFAR-100-LT and
    custom TFDS datasets (configs/custom.py:kind=tfds) both go through here."""
    counts = lt_counts(num_classes, max_count, data_config.imbalance)
    keep = subsample_long_tail(train_labels, counts, seed=data_config.subsample_seed)
    val = None
    if data_config.get("val_per_class", 0) > 0:  # Monitoring and free choices use it; test is read once.
        val = validation_split(train_labels, keep, data_config.val_per_class, data_config.subsample_seed)
    return keep, val


def rank_classes(counts: np.ndarray) -> np.ndarray:
    """Class ids ordered by training count, descending; ties by id, ascending.

    Returns `rank_to_class`: entry r is the original id of the class of rank r,
    which is also the model's output row r (METHOD.md, "Class order").
    """
    counts = np.asarray(counts)
    ids = np.arange(len(counts))
    return np.lexsort((ids, -counts)).astype(np.int64)


def class_to_rank(rank_to_class: np.ndarray) -> np.ndarray:
    """Inverse of `rank_classes`: entry c is the rank (output row) of class id c."""
    inverse = np.empty_like(rank_to_class)
    inverse[rank_to_class] = np.arange(len(rank_to_class))
    return inverse


def num_head_classes(counts: np.ndarray, split=None) -> int:
    """C1, the number of classes that phase I trains on (the head, X1).

    `split=None`: classes with n_j >= 20 (Many + Medium shot, METHOD.md default).
    `split=int`: that many classes, taken in rank order.
    Raises ValueError when the split leaves no head or no tail classes.
    """
    counts = np.asarray(counts)
    num_classes = len(counts)
    if split is None or split == "auto":
        c1 = int(np.sum(counts >= DEFAULT_HEAD_MIN_COUNT))
    else:
        c1 = int(split)
    if c1 < 1:
        raise ValueError(
            f"the split point leaves no head classes (C1 = {c1} of {num_classes}); "
            "set split.num_head_classes to a number between 1 and C-1")
    if c1 >= num_classes:
        raise ValueError(
            f"the split point leaves no tail classes (C1 = {c1} of {num_classes}); "
            "set split.num_head_classes to a number between 1 and C-1")
    return c1


@dataclasses.dataclass(frozen=True)
class ClassSplit:
    """Rank order of the classes and the phase-I / phase-II partition.

    rank_to_class[r] = original class id of output row r; rows 0..C1-1 are the
    head (phase I, X1), rows C1..C-1 the tail (X2).
    """
    rank_to_class: np.ndarray
    num_head: int

    @property
    def num_classes(self) -> int:
        return len(self.rank_to_class)

    @property
    def num_tail(self) -> int:
        return self.num_classes - self.num_head

    @property
    def head_classes(self) -> np.ndarray:
        return self.rank_to_class[:self.num_head]

    @property
    def tail_classes(self) -> np.ndarray:
        return self.rank_to_class[self.num_head:]

    def to_rank(self, labels: np.ndarray) -> np.ndarray:
        """Original class ids -> output rows."""
        return class_to_rank(self.rank_to_class)[np.asarray(labels)]


def make_class_split(counts: np.ndarray, split=None) -> ClassSplit:
    """Ranks classes by count and chooses C1 (see `num_head_classes`)."""
    return ClassSplit(rank_to_class=rank_classes(counts),
                      num_head=num_head_classes(counts, split))


@dataclasses.dataclass
class LongTailData:
    """What every dataset loader returns (asyncjax.data.datasets, asyncjax.data.custom)."""
    train_images: object          # An image table (asyncjax.data.pipeline).
    train_labels: np.ndarray      # Original class ids [N].
    test_images: object
    test_labels: np.ndarray
    num_classes: int
    note: str = ""                # Said beside every figure measured on this data.
    val_images: object = None     # Monitoring split; None: monitor on test (CIFAR, iNaturalist).
    val_labels: np.ndarray | None = None
    class_names: list | None = None  # By original class id (custom data; CIFAR's from its names file).
    small: bool = False              # Custom data of small images: held in memory, augmented on the device.
    split_sizes: dict | None = None  # Images per split as given (custom data), for the summary.

    @property
    def image_shape(self) -> tuple:
        return tuple(self.train_images.image_shape)

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.train_labels, minlength=self.num_classes)


def shot_groups(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean class masks for Many (> 100), Medium (20..100), Few (< 20) shot."""
    train_counts = np.asarray(train_counts)
    return {
        "many": train_counts >= MANY_SHOT_MIN,
        "medium": (train_counts > FEW_SHOT_MAX) & (train_counts < MANY_SHOT_MIN),
        "few": train_counts <= FEW_SHOT_MAX,
    }
