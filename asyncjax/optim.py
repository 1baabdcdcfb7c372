"""Optimiser and learning-rate schedules (METHOD.md "Recipes"): SGD with momentum
0.9 and coupled weight decay 5e-4 (as PyTorch's SGD, which the paper used), a
linear warm-up, then step decay or cosine decay to 0."""
from __future__ import annotations

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import optax


def scaled_learning_rate(recipe: ml_collections.ConfigDict) -> float:
    """lr = base_lr * global batch / base_batch_size (linear scaling rule)."""
    return recipe.base_lr * recipe.batch_size / recipe.base_batch_size


def learning_rate_schedule(recipe: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Warm-up over `warmup_epochs` (from lr/W to lr, as LDAM-DRW), then
    "step" (x decay_factor at each of decay_fractions of the run) or "cosine" (to 0)."""
    lr = scaled_learning_rate(recipe)
    total = recipe.epochs * steps_per_epoch
    warmup = recipe.warmup_epochs * steps_per_epoch
    if recipe.schedule == "step":
        boundaries = {int(round(f * total)) - warmup: recipe.decay_factor for f in recipe.decay_fractions}
        main = optax.piecewise_constant_schedule(lr, boundaries)
    elif recipe.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(1, total - warmup))
    else:
        raise ValueError(f"unknown schedule {recipe.schedule!r}; choose 'step' or 'cosine'")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(lr / warmup, lr, warmup), main], [warmup])


def decay_mask(params):
    """True for every parameter that gets weight decay: all of them (BatchNorm's scale and bias
    too, as PyTorch's SGD does) except the cosine classifier's scale sigma, `head/scale`
    (choice: a temperature, not a weight)."""
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict({k: k[-2:] != ("head", "scale") for k in flat})


def _head_labels(params):
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict({k: "head" if k[0] == "head" else "backbone" for k in flat})


def _class_scale_labels(params):
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict({k: "head" if k[-1] == "class_scale" else "backbone" for k in flat})


TRAINABLE = ("all", "head", "class_scale")


def freeze_head_columns(num: int) -> optax.GradientTransformation:
    """Zeroes the updates of the classifier's first `num` classes (the last axis of the head's
    kernel and bias): phase II's phase2_old_rows=freeze keeps W_c1 as phase I left it, whatever
    weight decay and momentum computed before this. The cosine scale sigma stays trained."""
    def mask(path, update):
        names = [getattr(part, "key", None) for part in path]
        if names[0] == "head" and names[-1] in ("kernel", "bias"):
            return update * (jnp.arange(update.shape[-1]) >= num).astype(update.dtype)
        return update
    return optax.stateless(lambda updates, params: jax.tree_util.tree_map_with_path(mask, updates))


def make_optimizer(recipe: ml_collections.ConfigDict, steps_per_epoch: int, *, trainable: str = "all",
                   frozen_head_columns: int = 0):
    """Returns (optax transformation, schedule). The head's lr is the scheduled lr times
    `head_lr_multiplier` (Places-LT: 0.05 / 5e-4), the backbone's times `backbone_lr_multiplier`.
    `trainable="head"` leaves
    W_r untouched (no update, no weight decay): classifier re-training (cRT);
    `"class_scale"` trains only LWS's per-class scales. `frozen_head_columns` > 0: the first
    classes' columns of the head stay fixed (freeze_head_columns)."""
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
    if frozen_head_columns:
        tx, schedule = make_optimizer(recipe, steps_per_epoch, trainable=trainable)
        return optax.chain(tx, freeze_head_columns(frozen_head_columns)), schedule
    schedule = learning_rate_schedule(recipe, steps_per_epoch)

    def sgd(multiplier):
        return optax.chain(
            optax.add_decayed_weights(recipe.weight_decay, mask=decay_mask),
            optax.sgd(lambda step: multiplier * schedule(step), momentum=recipe.momentum))

    if trainable != "all":
        labels = _head_labels if trainable == "head" else _class_scale_labels
        return optax.multi_transform(
            {"backbone": optax.set_to_zero(), "head": sgd(recipe.head_lr_multiplier)}, labels), schedule
    backbone_multiplier = recipe.get("backbone_lr_multiplier", 1.0)
    if recipe.head_lr_multiplier == 1.0 and backbone_multiplier == 1.0:
        return sgd(1.0), schedule
    return optax.multi_transform(
        {"backbone": sgd(backbone_multiplier), "head": sgd(recipe.head_lr_multiplier)}, _head_labels), schedule
