"""Per-class sampling probabilities and the deterministic batch order.

Every batch is a pure function of (seed, phase, epoch, step), so a resumed run
sees exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import numpy as np

STRATEGIES = ("instance", "class_balanced", "sqrt", "progressive")


def class_probabilities(counts, strategy: str, epoch: int = 0, total_epochs: int = 1) -> np.ndarray:
    """p_j, the probability that a drawn sample belongs to class j.

    instance: n_j / sum n; class_balanced: 1/C; sqrt: sqrt(n_j) / sum sqrt(n);
    progressive (Kang et al., 2020; METHOD.md Phase I):
    p_j(t) = (1 - t/T) n_j / sum n + (t/T) / C, t = epoch, T = total epochs.
    """
    counts = np.asarray(counts, np.float64)
    if strategy == "instance":
        return counts / counts.sum()
    if strategy == "class_balanced":
        return np.full(len(counts), 1.0 / len(counts))
    if strategy == "sqrt":
        return np.sqrt(counts) / np.sqrt(counts).sum()
    if strategy == "progressive":
        t = epoch / total_epochs
        return (1 - t) * counts / counts.sum() + t / len(counts)
    raise ValueError(f"unknown sampler {strategy!r}; choose one of {STRATEGIES}")


class EpochSampler:
    """Global batches of dataset positions for (epoch, step).

    `labels` are the class labels of the phase's training rows. "instance" is a
    plain shuffle of all rows; the other strategies draw classes with
    `class_probabilities` and then rows uniformly within the class. An epoch
    has len(labels) // batch_size steps (the last partial batch is dropped),
    capped at `max_steps_per_epoch` when that is > 0.
    """

    def __init__(self, labels, batch_size: int, *, seed: int, phase: int, strategy: str = "instance",
                 total_epochs: int = 1, max_steps_per_epoch: int = 0):
        self.labels = np.asarray(labels)
        self.batch_size = batch_size
        self.seed, self.phase, self.strategy, self.total_epochs = seed, phase, strategy, total_epochs
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampler {strategy!r}; choose one of {STRATEGIES}")
        steps = len(self.labels) // batch_size
        if steps == 0:
            raise ValueError(f"phase {phase} has {len(self.labels)} training images, fewer than "
                             f"one batch of {batch_size}")
        self.steps_per_epoch = min(steps, max_steps_per_epoch) if max_steps_per_epoch > 0 else steps
        self.classes, self.counts = np.unique(self.labels, return_counts=True)
        self._rows_of = [np.flatnonzero(self.labels == c) for c in self.classes]
        self._epoch_cache = (None, None)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = np.random.default_rng([self.seed, self.phase, epoch])
        if self.strategy == "instance":
            order = rng.permutation(len(self.labels))
        else:
            p = class_probabilities(self.counts, self.strategy, epoch, self.total_epochs)
            n = self.steps_per_epoch * self.batch_size
            drawn = rng.choice(len(self.classes), size=n, p=p)
            order = np.empty(n, np.int64)
            for k, rows in enumerate(self._rows_of):
                where = np.flatnonzero(drawn == k)
                order[where] = rows[rng.integers(0, len(rows), size=len(where))]
        self._epoch_cache = (epoch, order)
        return order

    def batch(self, epoch: int, step: int) -> np.ndarray:
        """Positions (into `labels`) of the global batch at (epoch, step)."""
        order = self._epoch_order(epoch)
        return order[step * self.batch_size:(step + 1) * self.batch_size]
