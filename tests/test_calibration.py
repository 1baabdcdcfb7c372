"""calibration.py: the post-hoc offsets against numpy written out here, and the choice on
validation."""
import numpy as np
import pytest

from asyncjax import calibration


def _fixed():
    rng = np.random.default_rng(3)
    counts = np.array([500, 200, 90, 40, 12, 5])  # By output row, head first (C1 = 3).
    logits = rng.normal(size=(400, 6)).astype(np.float32)
    labels = rng.integers(0, 6, size=400)
    logits[np.arange(400), labels] += 1.0       # Some signal,
    logits[:, 3:] += 0.8                         # and a model that favours the tail.
    return logits, labels, counts


def test_offsets_match_their_formulas():
    _, _, counts = _fixed()
    bias = calibration.offset("tail_bias", -0.75, counts, num_head=3)
    np.testing.assert_array_equal(bias, [0, 0, 0, -0.75, -0.75, -0.75])
    tau = 1.3
    prior = counts / counts.sum()
    want = np.array([-tau * np.log(p) for p in prior])
    np.testing.assert_allclose(calibration.offset("logit_adjustment", tau, counts, 3), want, rtol=1e-6)
    assert calibration.offset("none", 5.0, counts, 3) is None
    with pytest.raises(ValueError, match="calibration.kind"):
        calibration.offset("bias", 1.0, counts, 3)


def test_a_class_without_training_images_counts_as_one():
    """Data whose class lists hold a class only in val or test (TFDS mock data, a user's folders):
    the offset stays finite, and tau 0 is no correction at all (log 0 gave inf, 0 * inf NaN)."""
    counts = np.array([50, 10, 0, 3])
    np.testing.assert_array_equal(calibration.offset("logit_adjustment", 0.0, counts, 2), np.zeros(4))
    floored = np.array([50, 10, 1, 3]) / 64
    np.testing.assert_allclose(calibration.offset("logit_adjustment", 0.7, counts, 2), -0.7 * np.log(floored),
                               rtol=1e-6)


@pytest.mark.parametrize("kind", ["tail_bias", "logit_adjustment"])
def test_choice_is_the_best_validation_accuracy_on_the_grid(kind):
    logits, labels, counts = _fixed()
    grid = (-1.0, -0.5, 0.5, 1.0)
    chosen = calibration.choose(logits, labels, kind, grid, counts, num_head=3)
    assert chosen["grid"] == [0.0, *grid]  # No correction is always a candidate.
    # Reference: each value's accuracy with a loop over the samples.
    accuracy = []
    for value in chosen["grid"]:
        correct = 0
        for row, label in zip(logits, labels):
            if kind == "tail_bias":
                adjusted = [z + (value if j >= 3 else 0.0) for j, z in enumerate(row)]
            else:
                adjusted = [z - value * np.log(n / counts.sum()) for z, n in zip(row, counts)]
            correct += int(np.argmax(adjusted) == label)
        accuracy.append(100.0 * correct / len(labels))
    np.testing.assert_allclose(chosen["val_overall"], accuracy)
    best = max(accuracy)
    assert chosen["value"] == min((v for v, a in zip(chosen["grid"], accuracy) if a == best), key=abs)
    if kind == "tail_bias":  # The tail was favoured by +0.8: a negative bias is the better value.
        assert chosen["value"] < 0 and max(accuracy) > accuracy[0]


def test_default_grids_hold_zero_and_both_signs():
    for kind in ("tail_bias", "logit_adjustment"):
        values = calibration.grid_of(kind, ())
        assert 0.0 in values and min(values) < 0 < max(values)
    assert calibration.grid_of("tail_bias", (1.0, 2.0)) == (0.0, 1.0, 2.0)
