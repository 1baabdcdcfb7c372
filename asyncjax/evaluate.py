"""Evaluation: sharded prediction over an image table, and top-1 accuracy overall and by shot
group (Many / Medium / Few; paper Sec. 4).

The accuracy functions are plain numpy and return fractions in [0, 1]; `percent` turns them into
the percentages that logs and results.json carry. `Evaluator` runs a model over a split: each
process reads only its share of each batch, and every process gets all predictions.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from asyncjax import sharding, steps
from asyncjax.data.longtail import shot_groups

EVAL_BATCH = 500


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


def percent(fractions: dict) -> dict:
    """Fractions -> percent; an empty shot group (NaN) becomes None, so results.json stays strict JSON."""
    return {k: None if np.isnan(v) else 100.0 * v for k, v in fractions.items()}


def summary(percentages: dict) -> str:
    """'overall 44.18% (many 62.29, medium 50.54, few 15.63)'."""
    text = lambda v: "n/a" if v is None else f"{v:.2f}"
    return (f"overall {text(percentages['overall'])}% (many {text(percentages['many'])}, "
            f"medium {text(percentages['medium'])}, few {text(percentages['few'])})")


def eval_batch(rows: int, mesh) -> int:
    """The inference batch for `rows` images: EVAL_BATCH, or fewer for small sets (smoke runs get a
    batch of their own size, not a mostly padded one), a multiple of the data axis."""
    unit = sharding.data_size(mesh)
    return -(-min(EVAL_BATCH, rows) // unit) * unit


def jit_predict(model, preprocess, logit_offset, variable_shardings, mesh):
    """The jitted inference step: (variables, images) -> top-1 output rows and features."""
    return jax.jit(steps.make_predict_step(model, preprocess, logit_offset),
                   in_shardings=(variable_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.batch_sharding(mesh))


def jit_logits(model, preprocess, variable_shardings, mesh):
    """The jitted logits step (no offset): (variables, images) -> the C output rows' logits, what a
    post-hoc correction is chosen on (calibration.py)."""
    width = model.head.num_classes  # Without the padding columns of a head padded for the model axis.
    apply = lambda variables, images: {
        "logits": model.apply(variables, preprocess(images, None), train=False)["logits"][:, :width]}
    return jax.jit(apply, in_shardings=(variable_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.batch_sharding(mesh))


class Evaluator:
    """Predictions and accuracies of a run's models on its splits (setup.Context's).

    `logit_offset` ([C] or None) is added to the logits before the argmax: post-hoc logit
    adjustment (methods.joint.logit_offset)."""

    def __init__(self, ctx, logit_offset=None):
        self.ctx, self.logit_offset = ctx, logit_offset
        self._programs = {}  # One compilation per model, not per call.

    def program(self, model, variable_shardings):
        return jit_predict(model, self.ctx.eval_preprocess, self.logit_offset, variable_shardings, self.ctx.mesh)

    def predictions_and_features(self, model, state, table, indices=None) -> tuple[np.ndarray, np.ndarray]:
        """(top-1 output rows, features) of the rows `indices` (default: all) of an image table."""
        out = self._run(model, lambda shardings: self.program(model, shardings), state, table, indices)
        return out["prediction"], out["features"]

    def logits(self, model, state, table, indices=None) -> np.ndarray:
        """[N, C] logits (no offset) of the rows `indices` (default: all) of an image table: what
        a post-hoc calibration is chosen on (calibration.py)."""
        make = lambda shardings: jit_logits(model, self.ctx.eval_preprocess, shardings, self.ctx.mesh)
        return self._run(("logits", model), make, state, table, indices)["logits"]

    def _run(self, key, make, state, table, indices) -> dict[str, np.ndarray]:
        """The program `make(variable shardings)` (compiled once per `key`) over the rows `indices`
        of `table`, in batches; every output gathered on every process."""
        mesh = self.ctx.mesh
        indices = np.arange(len(table)) if indices is None else np.asarray(indices)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        batch = eval_batch(len(indices), mesh)
        if key not in self._programs:
            self._programs[key] = make(jax.tree.map(lambda x: x.sharding, variables))
        program = self._programs[key]
        outputs = []
        chunks = [indices[start:start + batch] for start in range(0, len(indices), batch)]
        # The last chunk is padded with its first row up to a whole batch (results dropped).
        padded = [np.concatenate([c, np.full(batch - len(c), c[0])]) for c in chunks]
        local_batches = table.batches([sharding.process_slice(p, mesh) for p in padded], training=False)
        for chunk, local in zip(chunks, local_batches):
            out = program(variables, sharding.global_batch({"images": local}, mesh, batch)["images"])
            out = multihost_utils.process_allgather(out, tiled=True)
            outputs.append({k: np.asarray(v)[:len(chunk)] for k, v in out.items()})
        return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}

    def shot_fractions(self, model, state, split, first_rows: tuple = (None,)) -> list[dict]:
        """shot_accuracy (fractions) on an EvalSplit, for each entry of `first_rows`: over all its
        images (None) or those of the first k output rows (k)."""
        predictions, _ = self.predictions_and_features(model, state, split.images)
        results = []
        for k in first_rows:
            keep = np.ones(len(predictions), bool) if k is None else split.labels < k
            results.append(shot_accuracy(predictions[keep], split.labels[keep], self.ctx.counts))
        return results

    def val_percent(self, model, state, num_classes: int | None = None) -> dict | None:
        """Shot accuracies (percent) on the validation split, over its images of the first
        `num_classes` output rows (all: None), with `classes`: how many classes have images there.
        None where the data has no validation split."""
        val = self.ctx.val
        if val is None:
            return None
        fractions, = self.shot_fractions(model, state, val, (num_classes,))
        labels = val.labels if num_classes is None else val.labels[val.labels < num_classes]
        return {**percent(fractions), "classes": int(len(np.unique(labels)))}

    def test_percent(self, predictions: np.ndarray) -> dict:
        """Overall / shot accuracies (percent) of test-split predictions, with the per-class accuracy
        by output row and the training counts."""
        ctx = self.ctx
        per_class = per_class_accuracy(predictions, ctx.test.labels, ctx.split.num_classes)
        return {**percent(shot_accuracy(predictions, ctx.test.labels, ctx.counts)),
                "per_class_accuracy": [None if np.isnan(a) else 100.0 * a for a in per_class],
                "train_counts": ctx.counts.tolist()}

    def final(self, model, state, val: dict | None = None) -> dict:
        """The reported figures of a final model: test_percent, and `val` (val_percent, unless the
        caller already has it) where the data has a validation split; `val` alone where the test
        split is not read (read_test=False)."""
        val = val or self.val_percent(model, state)
        if self.ctx.test is None:
            return {"val": val, "train_counts": self.ctx.counts.tolist()}
        predictions, _ = self.predictions_and_features(model, state, self.ctx.test.images)
        result = self.test_percent(predictions)
        return {**result, "val": val} if val else result
