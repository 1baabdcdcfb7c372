import numpy as np
import pytest

from asyncjax import memory


def reference_select(features, num):
    """METHOD.md's algorithm, written plainly in float64 for one class."""
    f = np.asarray(features, np.float64)
    cos = lambda a, rows: rows @ a / (np.linalg.norm(rows, axis=-1) * np.linalg.norm(a))
    centre = f.mean(axis=0)
    chosen = []
    for k in range(min(num, len(f))):
        if k == 0:
            target = centre
        else:
            m = f[chosen]
            p = np.exp(cos(centre, m))
            p /= p.sum()
            target = centre + (centre - p @ m)
        scores = cos(target, f)
        scores[chosen] = -np.inf
        chosen.append(int(np.argmax(scores)))
    return chosen + [-1] * (num - len(chosen))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n,d,num", [(40, 8, 10), (64, 16, 5), (7, 4, 10), (10, 6, 10)])
def test_select_class_exemplars_matches_reference(seed, n, d, num):
    rng = np.random.default_rng(seed * 100 + n)
    # Shifted so the prototype is not near zero (as for real, class-conditional features).
    features = rng.normal(size=(n, d)) + rng.normal(size=d)
    valid = np.ones(n, bool)
    got = np.asarray(memory.select_class_exemplars(features.astype(np.float32), valid, num))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, reference_select(features, num))


@pytest.mark.parametrize("seed", range(4))
def test_padding_rows_are_ignored(seed):
    rng = np.random.default_rng(seed)
    n_valid, pad, num = 12, 9, 5
    features = rng.normal(size=(n_valid, 8)) + 1.0
    padded = np.concatenate([features, 100 * rng.normal(size=(pad, 8))])
    order = rng.permutation(n_valid + pad)  # Padding interleaved with real rows.
    padded, valid = padded[order], order < n_valid
    got = np.asarray(memory.select_class_exemplars(padded.astype(np.float32), valid, num))
    expected = reference_select(features, num)
    position_of = {int(o): i for i, o in enumerate(order)}
    np.testing.assert_array_equal(got, [position_of[e] for e in expected])


def test_fewer_valid_rows_than_wanted_returns_all_then_minus_one():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(16, 4)).astype(np.float32) + 1
    valid = np.zeros(16, bool)
    valid[[3, 8, 11]] = True
    got = np.asarray(memory.select_class_exemplars(features, valid, 6))
    assert sorted(got[:3]) == [3, 8, 11] and np.all(got[3:] == -1)
    assert np.all(np.asarray(memory.select_class_exemplars(features, np.zeros(16, bool), 3)) == -1)


@pytest.mark.parametrize("seed", range(2))
def test_build_memory_bank_matches_per_class_reference(seed):
    rng = np.random.default_rng(seed)
    num_classes, d, per_class = 13, 8, 4
    sizes = rng.integers(1, 40, size=num_classes)
    labels = rng.permutation(np.repeat(np.arange(num_classes), sizes))
    centres = 2 * rng.normal(size=(num_classes, d))
    features = (centres[labels] + rng.normal(size=(len(labels), d))).astype(np.float32)
    classes = np.array([5, 0, 12, 3, 7, 1, 9])
    # A tiny chunk budget forces several chunks and several padded shapes.
    bank = memory.build_memory_bank(features, labels, classes, per_class, max_chunk_bytes=4 * 8 * 64)
    assert bank.shape == (len(classes), per_class)
    for row, c in zip(bank, classes):
        rows = np.flatnonzero(labels == c)
        expected = [rows[i] if i >= 0 else -1 for i in reference_select(features[rows], per_class)]
        np.testing.assert_array_equal(row, expected)
        assert np.all(labels[row[row >= 0]] == c)
    flat = memory.flatten_bank(bank)
    assert len(flat) == np.minimum(sizes[classes], per_class).sum()
    with pytest.raises(ValueError, match="per_class"):
        memory.build_memory_bank(features, labels, classes, 0)


def test_build_memory_bank_from_device_array():
    import jax.numpy as jnp
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(3), 20)
    features = rng.normal(size=(60, 5)).astype(np.float32) + 1
    host = memory.build_memory_bank(features, labels, np.arange(3), 3)
    device = memory.build_memory_bank(jnp.asarray(features), labels, np.arange(3), 3)
    np.testing.assert_array_equal(host, device)


def test_padded_lengths_cover_the_class_and_pad_by_less_than_half():
    lengths = [memory._padded_length(rows) for rows in range(1, 3000)]
    assert all(length >= rows and (length <= 4 or length < 1.5 * rows) for rows, length in enumerate(lengths, 1))
    assert sorted(set(lengths))[:8] == [1, 2, 4, 6, 8, 12, 16, 24]


def test_grouped_chunks_match_the_reference(monkeypatch):
    """At real scale a chunk holds several groups of classes (lax.map over groups, vmap inside);
    tiny features never reach that path, so the group size is shrunk to force 2-8 groups per chunk."""
    rng = np.random.default_rng(3)
    num_classes, d, per_class = 24, 8, 3
    sizes = rng.integers(5, 16, size=num_classes)  # All pad to 16 rows: one padded shape.
    labels = rng.permutation(np.repeat(np.arange(num_classes), sizes))
    features = (2 * rng.normal(size=(num_classes, d))[labels] + rng.normal(size=(len(labels), d))).astype(np.float32)
    monkeypatch.setattr(memory, "GROUP_BYTES", 16 * d * 4 * 2)  # Two classes' blocks per group.
    calls = []
    original = memory.select_chunk
    monkeypatch.setattr(memory, "select_chunk", lambda f, v, num, group: calls.append((f.shape[0], group))
                        or original(f, v, num, group))
    bank = memory.build_memory_bank(features, labels, np.arange(num_classes), per_class)
    assert any(chunk > group > 1 for chunk, group in calls), calls
    for c, row in enumerate(bank):
        rows = np.flatnonzero(labels == c)
        expected = [rows[i] if i >= 0 else -1 for i in reference_select(features[rows], per_class)]
        np.testing.assert_array_equal(row, expected)
