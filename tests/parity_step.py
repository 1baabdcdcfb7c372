"""Runs two phase-II steps sharded over all visible devices, for each layout named on the command
line (MODEL_AXIS:NUM_CLASSES); prints the metrics as one JSON list.

Called by test_train.py with XLA_FLAGS=--xla_force_host_platform_device_count=N (the one-device
layout in the test's own process: `parity`).
"""
import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from asyncjax import augment, config_utils, optim, sharding, steps
from asyncjax.models import make_backbone, make_model


def parity(model_axis: int = 1, num_classes: int = 8) -> dict:
    """Two phase-II steps over a mesh of every visible device with a model axis of `model_axis`
    (7 classes do not divide a model axis of 2: a padded head); what main() prints."""
    num_head, batch = 5, 16
    recipe = config_utils.phase_recipe(epochs=1, batch_size=batch, base_lr=0.1, base_batch_size=batch,
                                       schedule="step")
    tx, schedule = optim.make_optimizer(recipe, 10)
    mesh = sharding.make_mesh(model_axis)
    model = make_model("resnet8", "cosine", num_classes, num_padded=sharding.padded_classes(num_classes, mesh))
    loss_config = ml_collections.ConfigDict(dict(retention_temperature=1.0, retention_normalize=True,
                                                 retention_reduction="mean", intra_margin=0.5, intra_top_k=2))
    rng = np.random.default_rng(0)
    local = {"images": rng.integers(0, 256, (batch, 32, 32, 3)).astype(np.uint8),
             "labels": rng.integers(0, num_classes, batch).astype(np.int32)}
    local["is_memory"] = (local["labels"] < num_head).astype(np.float32)
    with jax.set_mesh(mesh):
        init = lambda: steps.init_train_state(model, tx, jax.random.key(0), (32, 32, 3))
        shardings = sharding.state_shardings(jax.eval_shape(init), mesh)
        state = jax.jit(init, out_shardings=shardings)()
        old = jax.tree.map(lambda x: jnp.array(x, copy=True) + 0.01,
                           {"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]})
        old_shardings = jax.tree.map(lambda x: x.sharding, old)
        step = jax.jit(steps.make_phase2_step(model, make_backbone("resnet8"), tx, schedule, augment.cifar_train,
                                              num_head=num_head, retention_weight=1.2, loss_config=loss_config),
                       in_shardings=(shardings, old_shardings, sharding.batch_sharding(mesh),
                                     sharding.replicated(mesh)),
                       out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
        results = []
        for _ in range(2):
            state, metrics = step(state, old, sharding.global_batch(local, mesh, batch), jax.random.key(3))
            results.append({k: float(v) for k, v in metrics.items()})
        kernel_spec = str(state.params["head"]["kernel"].sharding.spec)
        kernel = np.asarray(state.params["head"]["kernel"])
        padding = kernel[:, num_classes:]
        kernel = kernel[:, :num_classes]
    return {"devices": jax.device_count(), "metrics": results, "kernel_spec": kernel_spec,
            "kernel_sum": float(np.abs(kernel).sum()), "kernel_width": int(kernel.shape[1] + padding.shape[1]),
            "padding_abs_sum": float(np.abs(padding).sum())}


if __name__ == "__main__":
    # argv: layouts MODEL_AXIS:NUM_CLASSES (default 1:8), each over every visible device; one JSON list.
    specs = [tuple(int(v) for v in spec.split(":")) for spec in sys.argv[1:] or ["1:8"]]
    print(json.dumps([parity(model_axis, num_classes) for model_axis, num_classes in specs]))
