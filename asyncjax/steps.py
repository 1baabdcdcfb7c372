"""Pure functional train and inference steps.

A train step is (state, *extra, batch, rng) -> (state, metrics): phase II's `extra` is the frozen
phase-I backbone's variables, the other steps have none. programs.py jits each step once with
its shardings. A batch is a dict of arrays sharded on the mesh's `data` axis: `images` (uint8,
augmented on the device), `labels` (output rows, i.e. class ranks) and, in phase II, `is_memory`.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.struct
import jax
import jax.numpy as jnp
import optax

from asyncjax import losses


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # Optimiser steps taken in this phase.
    params: Any              # {'backbone': W_r, 'head': W_c}
    batch_stats: Any         # BatchNorm running statistics.
    opt_state: Any


def new_train_state(params, batch_stats, tx) -> TrainState:
    """A phase's first state: step 0 and a fresh optimiser state over `params`."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params))


def init_train_state(model, tx, rng, image_shape) -> TrainState:
    """A randomly initialised model's first state."""
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return new_train_state(variables["params"], variables["batch_stats"], tx)


def _apply_gradients(state, tx, grads, batch_stats):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state)


def default_loss(out: dict, labels: jax.Array, step: jax.Array) -> jax.Array:
    del step
    return losses.cross_entropy(out["logits"], labels)


def make_classification_step(model, tx, schedule, preprocess: Callable,
                             objective: Callable = default_loss,
                             distortion_num_head: int | None = None) -> Callable:
    """Phase I (Eq. 1, cross-entropy over the C1 head classes) and the joint baselines
    (over all C classes): the same step on other data. `objective(out, labels, step)`
    replaces the cross-entropy for baselines such as LDAM-DRW.

    With `distortion_num_head` = C1, the step also measures the gradient distortion
    of the paper's Fig. 1 (see `gradient_distortion`)."""

    def step(state: TrainState, batch: dict, rng: jax.Array):
        images = preprocess(batch["images"], jax.random.fold_in(rng, state.step))

        def forward(params):
            out, new_vars = model.apply({"params": params, "batch_stats": state.batch_stats}, images,
                                        train=True, mutable=["batch_stats"])
            return out, new_vars["batch_stats"]

        def loss_fn(params):
            out, batch_stats = forward(params)
            return objective(out, batch["labels"], state.step), (out, batch_stats)

        if distortion_num_head is None:
            (loss, (out, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            extra = {}
        else:
            loss, grads, out, batch_stats, extra = gradient_distortion(
                forward, state.params, batch["labels"], distortion_num_head)
        metrics = {"loss": loss, "cls": loss, "lr": schedule(state.step), **extra,
                   "accuracy": jnp.mean(jnp.argmax(out["logits"], -1) == batch["labels"])}
        return _apply_gradients(state, tx, grads, batch_stats), metrics

    return step


def _tree_dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def gradient_distortion(forward: Callable, params, labels, num_head: int):
    """Gradient distortion (paper Sec. 3.1, Fig. 1) from one forward pass and two
    backward passes: the mean cross-entropy L = L_head + L_tail splits into the
    samples of the data-rich classes (rows < C1; 'grad1') and of the others
    ('grad2'), each summed over its samples and divided by the whole batch, so
    grad = grad1 + grad2 exactly. Returns (L, grad, out, batch_stats, metrics)
    with the cosines s(grad1, grad), s(grad2, grad) and the three norms."""
    def split_losses(p):
        out, batch_stats = forward(p)
        per_example = optax.softmax_cross_entropy_with_integer_labels(
            out["logits"].astype(jnp.float32), labels)
        is_head = (labels < num_head).astype(jnp.float32)
        total = per_example.shape[0]
        return (jnp.stack([jnp.sum(per_example * is_head), jnp.sum(per_example * (1 - is_head))]) / total,
                (out, batch_stats))

    split, pullback, (out, batch_stats) = jax.vjp(split_losses, params, has_aux=True)
    grad_head, = pullback(jnp.array([1.0, 0.0]))
    grad_tail, = pullback(jnp.array([0.0, 1.0]))
    grads = jax.tree.map(jnp.add, grad_head, grad_tail)
    norm = lambda g: jnp.sqrt(_tree_dot(g, g))
    norm_all, norm_head, norm_tail = norm(grads), norm(grad_head), norm(grad_tail)
    safe = lambda x: jnp.maximum(x, 1e-20)
    metrics = {"grad_norm": norm_all, "grad_norm_head": norm_head, "grad_norm_tail": norm_tail,
               "grad_cos_head": _tree_dot(grad_head, grads) / safe(norm_head * norm_all),
               "grad_cos_tail": _tree_dot(grad_tail, grads) / safe(norm_tail * norm_all)}
    return split.sum(), grads, out, batch_stats, metrics


def make_phase2_step(model, backbone, tx, schedule, preprocess: Callable, *, num_head: int,
                     retention_weight: float, loss_config, freeze_batch_norm: bool = False) -> Callable:
    """Phase II (Algorithm 1, lines 11-15; Eq. 9):

        L = mean_B (L_cls + L_intra) + lambda * L_dis(B)

    `old_variables` are the frozen phase-I backbone's {'params', 'batch_stats'};
    it runs in inference mode on the same augmented images. The graph of L_dis
    is the global batch: under jit the features are gathered across devices.
    `freeze_batch_norm`: the trained model's BatchNorm runs in inference mode too, normalising
    with (and keeping) phase I's running statistics instead of re-estimating them on X2 + M.
    """

    def step(state: TrainState, old_variables: dict, batch: dict, rng: jax.Array):
        images = preprocess(batch["images"], jax.random.fold_in(rng, state.step))
        old_features = jax.lax.stop_gradient(backbone.apply(old_variables, images, train=False))

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            if freeze_batch_norm:
                out, new_vars = model.apply(variables, images, train=False), {"batch_stats": state.batch_stats}
            else:
                out, new_vars = model.apply(variables, images, train=True, mutable=["batch_stats"])
            cls = losses.cross_entropy(out["logits"], batch["labels"])
            intra = losses.intra_margin_loss(out["cosine"], batch["labels"], batch["is_memory"], num_head,
                                             margin=loss_config.intra_margin, top_k=loss_config.intra_top_k)
            dis = losses.memory_retentive_loss(old_features, out["features"],
                                               temperature=loss_config.retention_temperature,
                                               normalize=loss_config.retention_normalize,
                                               reduction=loss_config.retention_reduction)
            total = cls + intra + retention_weight * dis
            return total, (out, new_vars["batch_stats"], {"cls": cls, "intra": intra, "dis": dis})

        (loss, (out, batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        diagnostics = losses.retention_diagnostics(old_features, out["features"],
                                                   temperature=loss_config.retention_temperature)
        metrics = {"loss": loss, **terms, **diagnostics, "lr": schedule(state.step),
                   "accuracy": jnp.mean(jnp.argmax(out["logits"], -1) == batch["labels"])}
        return _apply_gradients(state, tx, grads, batch_stats), metrics

    return step


def make_predict_step(model, preprocess: Callable, logit_offset=None) -> Callable:
    """Inference: (variables, images) -> {'prediction': top-1 row, 'features': z}.

    `logit_offset` ([C], optional) is added to the logits before the argmax
    (post-hoc logit adjustment)."""

    def predict(variables: dict, images: jax.Array):
        out = model.apply(variables, preprocess(images, None), train=False)
        logits = out["logits"] if logit_offset is None else out["logits"] + logit_offset
        return {"prediction": jnp.argmax(logits, -1).astype(jnp.int32), "features": out["features"]}

    return predict


def extend_classifier(phase1_params: dict, new_head_params: dict, num_old: int | None = None) -> dict:
    """Phase-I -> phase-II hand-off: keep W_r and the C1 rows of W_c1, append the C2
    new rows W_c2 along the class axis (the last one), giving C outputs.

    `new_head_params` is a freshly initialised C-class head, whose last C2 rows
    (random, or imprinted) become W_c2; its scale, if any, is replaced by
    phase I's. `num_old` = C1 where phase I's kernel is wider (padded for the
    model axis): its padding columns are dropped, and the new head's own come last.
    """
    def merge(old, new):
        if old.ndim == 0:       # The cosine head's scale sigma: carried over.
            return old
        keep = old.shape[-1] if num_old is None else num_old
        return jnp.concatenate([old[..., :keep], new[..., keep:]], axis=-1)

    head = jax.tree.map(merge, phase1_params["head"], new_head_params)
    return {**phase1_params, "head": head}


def make_classifier_retraining_step(model, tx, schedule, preprocess: Callable) -> Callable:
    """cRT (Kang et al., 2020): cross-entropy on the head only, the backbone frozen in
    inference mode (its BatchNorm statistics do not move). The optimiser must leave
    the backbone's parameters alone (optim.make_optimizer(trainable="head" or "class_scale"))."""

    def step(state: TrainState, batch: dict, rng: jax.Array):
        images = preprocess(batch["images"], jax.random.fold_in(rng, state.step))
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        features = jax.lax.stop_gradient(
            model.apply(variables, images, train=False, method=lambda m, x, train: m.backbone(x, train)))

        def loss_fn(params):
            out = model.apply({"params": params, "batch_stats": state.batch_stats}, features,
                              method=lambda m, z: m.head(z))
            return losses.cross_entropy(out["logits"], batch["labels"]), out

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = {"loss": loss, "cls": loss, "lr": schedule(state.step),
                   "accuracy": jnp.mean(jnp.argmax(out["logits"], -1) == batch["labels"])}
        return _apply_gradients(state, tx, grads, state.batch_stats), metrics

    return step


def scanned_steps(step, batch_extras, batch_sharding, unroll: bool = False):
    """(state, *extra, images, labels, positions [S, B], rng) -> (state, metrics summed over S):
    S train steps in one lax.scan, each gathering its global batch from device-resident data.

    `unroll=True` lays the S steps out one after another instead of in a while loop: XLA:CPU
    runs a convolution inside a loop body about 20x slower than outside one (jax#12868;
    measured on ResNet-8 here: 12 img/s in the loop, 271 unrolled), at the price of a compile
    that grows with S."""
    def multi_step(state, *args):
        *extra, images, labels, positions, rng = args

        def body(state, batch_positions):
            batch = {"images": images[batch_positions], "labels": labels[batch_positions]}
            if batch_extras is not None:
                batch.update(batch_extras(batch["labels"]))
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            return step(state, *extra, batch, rng)

        state, metrics = jax.lax.scan(body, state, positions, unroll=unroll)
        return state, jax.tree.map(lambda m: m.sum(axis=0), metrics)
    return multi_step
