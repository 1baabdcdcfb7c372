import math

import numpy as np
import pytest

from asyncjax.data import longtail


@pytest.mark.parametrize("imbalance,total", [(50, 12608), (100, 10847), (200, 9502)])
def test_cifar100_lt_totals(imbalance, total):
    counts = longtail.lt_counts(100, 500, imbalance)
    assert counts.sum() == total
    assert counts[0] == 500 and counts[-1] == 500 // imbalance


@pytest.mark.parametrize("seed", range(5))
def test_lt_counts_matches_formula(seed):
    rng = np.random.default_rng(seed)
    c, top, factor = int(rng.integers(2, 300)), int(rng.integers(10, 2000)), float(rng.uniform(1, 500))
    expected = [math.floor(top * (1 / factor) ** (j / (c - 1))) for j in range(c)]
    counts = longtail.lt_counts(c, top, factor)
    # floor vs int() agree for positive values; allow no slack at all.
    np.testing.assert_array_equal(counts, expected)
    assert np.all(np.diff(counts) <= 0)


def test_lt_counts_rejects_bad_arguments():
    with pytest.raises(ValueError, match="imbalance_factor"):
        longtail.lt_counts(10, 100, 0.5)
    with pytest.raises(ValueError, match="num_classes"):
        longtail.lt_counts(1, 100, 10)


def test_subsample_long_tail_counts_and_determinism():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), 50))
    counts = longtail.lt_counts(10, 50, 10)
    kept = longtail.subsample_long_tail(labels, counts, seed=3)
    np.testing.assert_array_equal(np.bincount(labels[kept], minlength=10), counts)
    assert len(np.unique(kept)) == len(kept) and np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(kept, longtail.subsample_long_tail(labels, counts, seed=3))
    assert not np.array_equal(kept, longtail.subsample_long_tail(labels, counts, seed=4))
    # Reference: the documented rule, written out.
    ref_rng = np.random.default_rng(3)
    ref = np.sort(np.concatenate([ref_rng.permutation(np.flatnonzero(labels == c))[:n]
                                  for c, n in enumerate(counts)]))
    np.testing.assert_array_equal(kept, ref)
    with pytest.raises(ValueError, match="fewer than"):
        longtail.subsample_long_tail(labels, counts + 1, seed=0)


@pytest.mark.parametrize("seed", range(5))
def test_rank_classes_by_count_then_id(seed):
    counts = np.random.default_rng(seed).integers(1, 6, size=40)  # Many ties.
    ranked = longtail.rank_classes(counts)
    expected = sorted(range(40), key=lambda c: (-counts[c], c))
    np.testing.assert_array_equal(ranked, expected)
    np.testing.assert_array_equal(longtail.class_to_rank(ranked)[ranked], np.arange(40))


def test_head_tail_split():
    counts = longtail.lt_counts(100, 500, 100)
    assert longtail.num_head_classes(counts) == 70  # The paper's C1 on CIFAR-100-LT IF100.
    assert longtail.num_head_classes(counts, 30) == 30
    for bad in (0, 100, 150):
        with pytest.raises(ValueError, match="no (head|tail) classes"):
            longtail.num_head_classes(counts, bad)
    with pytest.raises(ValueError, match="no tail classes"):
        longtail.num_head_classes(np.full(10, 50))  # All classes >= 20 images.
    shuffled = np.random.default_rng(0).permutation(counts)
    split = longtail.make_class_split(shuffled)
    assert split.num_head == 70 and split.num_tail == 30
    assert np.all(shuffled[split.head_classes] >= 20) and np.all(shuffled[split.tail_classes] < 20)
    np.testing.assert_array_equal(split.to_rank(split.rank_to_class), np.arange(100))


@pytest.mark.parametrize("seed", range(3))
def test_shot_groups(seed):
    counts = np.random.default_rng(seed).integers(1, 300, size=200)
    counts[:6] = [19, 20, 21, 99, 100, 101]
    groups = longtail.shot_groups(counts)
    for c, n in enumerate(counts):
        name = "many" if n > 100 else ("medium" if n >= 20 else "few")
        assert groups[name][c] and sum(g[c] for g in groups.values()) == 1


def test_validation_split_is_disjoint_seeded_and_capped(cifar100_dir):
    """On real CIFAR-100 (IF100): never a training row, at most 20 per class, none for the class
    kept whole, the same for the same seed; the test split is another file altogether."""
    from asyncjax.data import cifar
    _, labels = cifar.load_cifar100("train", cifar100_dir)
    counts = longtail.lt_counts(100, 500, 100)
    kept = longtail.subsample_long_tail(labels, counts, seed=0)
    val = longtail.validation_split(labels, kept, 20, seed=0)
    assert not set(val) & set(kept)
    per_class = np.bincount(labels[val], minlength=100)
    assert per_class[0] == 0  # 500 of 500 kept: nothing left over.
    np.testing.assert_array_equal(per_class, np.minimum(20, 500 - counts))
    np.testing.assert_array_equal(longtail.validation_split(labels, kept, 20, seed=0), val)
    assert not np.array_equal(longtail.validation_split(labels, kept, 20, seed=1), val)
    # A larger split draws more images, never other training images.
    assert set(val) <= set(longtail.validation_split(labels, kept, 30, seed=0))
