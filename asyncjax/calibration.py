"""A post-hoc correction of the final model's logits, its value chosen on the validation split.

Phase II trains on the tail's images and a few exemplars per head class, a nearly
class-balanced set, and its classifier loses the head's prior (RESULTS.md: Many-shot pays 8
points). The class-incremental remedy is a correction of the logits after training:

    tail_bias          z_j + b for the tail classes (output rows >= C1), z_j for the head
                       (one bias between old and new classes' logits: BiC, Wu et al., 2019)
    logit_adjustment   z_j - tau log(pi_j), pi the long-tailed training prior n_j / sum(n)
                       (Menon et al., 2021; method=logit_adjustment applies it with a fixed tau)

`choose` picks b or tau from a grid by overall accuracy on the validation split (the least
correction, |value| smallest, among equals); the grid holds 0, so the choice never does worse on
validation than no correction. The chosen [C] offset is added to the logits before the argmax
by the evaluation, saved in the workdir (OFFSET_FILE) and in the export, and applied by predict.
"""
from __future__ import annotations

import os

import numpy as np

from asyncjax import files

KINDS = ("none", "tail_bias", "logit_adjustment")
# Default grids (calibration.grid=() in the config): logit units, both signs, 0 included. The cosine
# head's logits span about sigma (16 at the start) and the linear head's a few units.
GRIDS = {"tail_bias": tuple(float(v) for v in np.round(np.arange(-4.0, 4.001, 0.25), 2)),
         "logit_adjustment": tuple(float(v) for v in np.round(np.arange(-1.0, 2.001, 0.1), 2))}
OFFSET_FILE = "logit_offset.json"   # In the workdir: {"kind", "value", "offset": [C] by output row}.


def offset(kind: str, value: float, counts, num_head: int) -> np.ndarray | None:
    """The [C] float32 offset added to the logits (by output row), or None for kind "none".

    Args:
      kind: one of KINDS.
      value: b (tail_bias) or tau (logit_adjustment).
      counts: [C] training images of each output row (the long-tailed prior's counts). A class
        without training images counts as one: its prior is then the smallest the data can show,
        not zero, whose log would make the offset infinite (every image that class, and NaN at tau 0).
      num_head: C1, the head classes (output rows 0..C1-1).
    """
    counts = np.maximum(np.asarray(counts, np.float64), 1.0)
    if kind == "none":
        return None
    if kind == "tail_bias":
        return np.where(np.arange(len(counts)) >= num_head, value, 0.0).astype(np.float32)
    if kind == "logit_adjustment":
        return (-value * np.log(counts / counts.sum())).astype(np.float32)
    raise ValueError(f"calibration.kind must be one of {KINDS}, got {kind!r}")


def grid_of(kind: str, grid) -> tuple[float, ...]:
    """The values tried: the config's grid, or the kind's default one."""
    values = tuple(float(v) for v in grid) if grid else GRIDS[kind]
    if 0.0 not in values:  # No correction is always a candidate.
        values = (0.0, *values)
    return values


def choose(logits, labels, kind: str, grid, counts, num_head: int) -> dict:
    """The grid value with the best overall validation accuracy.

    Args:
      logits: [N, C] validation logits of the final model; labels: [N] output rows.
      kind, grid: as in the config (grid () -> GRIDS[kind]).
      counts, num_head: as in `offset`.

    Returns:
      {'kind', 'value', 'grid': [values], 'val_overall': [accuracy (percent) per value]}.
    """
    logits, labels = np.asarray(logits, np.float32), np.asarray(labels)
    values = grid_of(kind, grid)
    accuracy = [100.0 * float(np.mean(np.argmax(logits + offset(kind, v, counts, num_head), -1) == labels))
                for v in values]
    return {"kind": kind, "value": best_value(values, accuracy), "grid": list(values), "val_overall": accuracy}


def best_value(values, accuracy) -> float:
    """The value of the highest validation accuracy; among equals the smallest |value| (the least
    correction)."""
    best = max(accuracy)
    return min((v for v, a in zip(values, accuracy) if a == best), key=abs)


def save(workdir: str, kind: str, value: float, offset_row) -> None:
    """The chosen offset beside the checkpoints (export and predict read it)."""
    files.write_json(os.path.join(workdir, OFFSET_FILE), {"kind": kind, "value": float(value),
                                                  "offset": [float(x) for x in offset_row]})


def load(workdir: str) -> dict | None:
    """The workdir's saved offset ({'kind', 'value', 'offset'}), or None."""
    path = os.path.join(workdir, OFFSET_FILE)
    return files.read_json(path) if os.path.exists(path) else None
