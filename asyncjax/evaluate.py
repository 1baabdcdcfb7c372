"""Top-1 accuracy overall and by shot group (Many / Medium / Few; paper Sec. 4)."""
from __future__ import annotations

import numpy as np

from asyncjax.data.longtail import shot_groups


def per_class_accuracy(predictions, labels, num_classes: int) -> np.ndarray:
    """Accuracy of each class over its test samples; NaN for classes with none."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    correct = np.bincount(labels, weights=(predictions == labels), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def shot_accuracy(predictions, labels, train_counts) -> dict:
    """Top-1 accuracy overall and per shot group.

    Args:
      predictions, labels: [N] class ids, in the same id space as `train_counts`.
      train_counts: [C] training images of each class; it defines the groups
        Many (> 100), Medium (20..100) and Few (< 20).

    Returns:
      {'overall', 'many', 'medium', 'few'}: fractions in [0, 1]. `overall` is the
      fraction of test samples classified correctly; each group is the mean of
      the per-class accuracies of its classes (NaN for an empty group). On a
      balanced test set, as in all four benchmarks, the two definitions agree.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    train_counts = np.asarray(train_counts)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    accuracy = per_class_accuracy(predictions, labels, len(train_counts))
    result = {"overall": float(np.mean(predictions == labels)) if labels.size else float("nan")}
    for name, mask in shot_groups(train_counts).items():
        values = accuracy[mask & ~np.isnan(accuracy)]
        result[name] = float(values.mean()) if values.size else float("nan")
    return result
