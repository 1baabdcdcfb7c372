import numpy as np
import pytest

from asyncjax.evaluate import shot_accuracy


@pytest.mark.parametrize("seed", range(4))
def test_shot_accuracy_matches_reference(seed):
    rng = np.random.default_rng(seed)
    num_classes = 30
    train_counts = rng.integers(1, 400, size=num_classes)
    train_counts[:3] = [5, 50, 200]  # Every group non-empty.
    labels = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, size=500 - num_classes)])
    predictions = np.where(rng.random(500) < 0.6, labels, rng.integers(0, num_classes, size=500))
    got = shot_accuracy(predictions, labels, train_counts)

    per_class = {}
    for c in range(num_classes):
        members = [i for i in range(500) if labels[i] == c]
        if members:
            per_class[c] = sum(predictions[i] == c for i in members) / len(members)
    def group(low, high):
        values = [a for c, a in per_class.items() if low <= train_counts[c] <= high]
        return sum(values) / len(values)
    assert got["overall"] == pytest.approx(np.mean(predictions == labels))
    assert got["many"] == pytest.approx(group(101, 10**9))
    assert got["medium"] == pytest.approx(group(20, 100))
    assert got["few"] == pytest.approx(group(0, 19))
    assert all(0.0 <= v <= 1.0 for v in got.values())


def test_empty_group_is_nan():
    got = shot_accuracy(np.array([0, 1]), np.array([0, 1]), np.array([500, 300]))
    assert got["overall"] == 1.0 and got["many"] == 1.0
    assert np.isnan(got["medium"]) and np.isnan(got["few"])
