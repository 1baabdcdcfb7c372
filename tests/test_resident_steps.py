"""The device-resident path (steps.scanned_steps, unrolled on CPU) trains what one step per call trains.

Two float32 programs of the same arithmetic (XLA fuses and orders the unrolled steps differently)
agree only to rounding, and training amplifies rounding: how much depends on the CPU's code
generation (an Intel Xeon and an AMD EPYC differed by 1.1% in a few BatchNorm biases after 12
steps). So the tolerances here are not tuned on one CPU but stated against exact arithmetic:

- one step: the two paths agree to 1e-5 of each leaf's norm. One forward and backward pass in
  float32 has a relative rounding error of order 1e-6 in the update (float32 epsilon 6e-8 times
  the few hundred terms of each reduction), and the update is lr x grad, far smaller than the
  parameters, so 1e-5 holds on any CPU with room to spare; a wrong batch or key moves the update
  by O(1) of itself.
- several steps: the same steps in float64 are the reference. Each float32 path's distance to it
  (norm-wise, per leaf) is its rounding error after those steps, measured on this CPU. The resident
  path must be as accurate as the step-by-step path: within 4x of its error (two rounding
  sequences of the same length differ by a small factor, never by orders of magnitude) plus 1e-6
  of the leaf's norm (leaves whose float32 error happens to be near zero). A wiring error (a batch
  out of order, a missing input) is an error of O(1e-2) or more: hundreds of times larger.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from asyncjax import augment, config_utils, optim, sharding, steps
from asyncjax.models import make_backbone, make_model

NUM_HEAD, NUM_CLASSES, BATCH, POOL = 5, 8, 8, 24


def _setup(phase: int, dtype, augmented: bool):
    recipe = config_utils.phase_recipe(epochs=1, batch_size=BATCH, base_lr=0.1, base_batch_size=BATCH,
                                       schedule="step")
    tx, schedule = optim.make_optimizer(recipe, 10)
    model = make_model("resnet8", "cosine", NUM_CLASSES, dtype=dtype)
    state = steps.init_train_state(model, tx, jax.random.key(0), (32, 32, 3))
    cast = lambda tree: jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
    state = state.replace(params=cast(state.params), batch_stats=cast(state.batch_stats),
                          opt_state=cast(state.opt_state))
    # jax.random draws other bits under float64 (x64), so the float64 reference runs without the
    # random crop and flip; the one-step test keeps them (the same key must reach both paths).
    preprocess = augment.cifar_train if augmented else augment.get_preprocess("cifar100_lt")[1]
    if phase == 1:
        return steps.make_classification_step(model, tx, schedule, preprocess), state, ()
    loss_config = ml_collections.ConfigDict(dict(retention_temperature=0.5, retention_normalize=True,
                                                 retention_reduction="mean", intra_margin=0.5, intra_top_k=2))
    # A frozen model that is not the trained one, so that L_dis has something to pull towards.
    old = jax.tree.map(lambda x: x * 1.05 + 0.01,
                       {"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]})
    step = steps.make_phase2_step(model, make_backbone("resnet8", dtype), tx, schedule, preprocess,
                                  num_head=NUM_HEAD, retention_weight=1.2, loss_config=loss_config)
    return step, state, (old,)


def _data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (POOL, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, NUM_CLASSES, POOL).astype(np.int32)
    positions = np.stack([rng.permutation(POOL)[:BATCH] for _ in range(4)]).astype(np.int32)
    return images, labels, positions


def _extras(phase):
    return None if phase == 1 else (lambda y: {"is_memory": (y < NUM_HEAD).astype(jnp.float32)})


def _step_by_step(phase, dtype, num_steps, augmented=False):
    step, state, extra = _setup(phase, dtype, augmented)
    images, labels, positions = _data()
    jitted = jax.jit(step)
    for p in positions[:num_steps]:
        batch = {"images": images[p], "labels": labels[p]}
        if phase == 2:
            batch.update(_extras(phase)(jnp.asarray(labels[p])))
        state, _ = jitted(state, *extra, batch, jax.random.key(7))
    return state


def _resident(phase, num_steps, augmented=False):
    step, state, extra = _setup(phase, jnp.float32, augmented)
    images, labels, positions = _data()
    mesh = sharding.make_mesh()
    with jax.set_mesh(mesh):
        multi = jax.jit(steps.scanned_steps(step, _extras(phase), sharding.batch_sharding(mesh), unroll=True))
        state, _ = multi(state, *extra, jnp.asarray(images), jnp.asarray(labels),
                         jnp.asarray(positions[:num_steps]), jax.random.key(7))
    return state


def _relative_errors(state, reference) -> dict:
    """||leaf - ref|| / ||ref|| per float leaf of params and batch_stats, in float64."""
    tree = {"params": state.params, "batch_stats": state.batch_stats}
    ref = {"params": reference.params, "batch_stats": reference.batch_stats}
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    flat_ref = jax.tree_util.tree_leaves(ref)
    errors = {}
    for (path, leaf), leaf_ref in zip(flat, flat_ref):
        a, b = np.asarray(leaf, np.float64), np.asarray(leaf_ref, np.float64)
        errors[jax.tree_util.keystr(path)] = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
    return errors


def test_one_resident_step_equals_one_step():
    for phase in (1, 2):
        errors = _relative_errors(_resident(phase, 1, augmented=True),
                                  _step_by_step(phase, jnp.float32, 1, augmented=True))
        worst = max(errors, key=errors.get)
        assert errors[worst] < 1e-5, (phase, worst, errors[worst])


def test_resident_steps_are_as_accurate_as_step_by_step_against_float64():
    num_steps = 4
    for phase in (1, 2):
        resident = _resident(phase, num_steps)
        by_step = _step_by_step(phase, jnp.float32, num_steps)
        with jax.enable_x64(True):
            exact = _step_by_step(phase, jnp.float64, num_steps)
            assert exact.params["head"]["kernel"].dtype == jnp.float64
        resident_error = _relative_errors(resident, exact)
        step_error = _relative_errors(by_step, exact)
        for name, error in resident_error.items():
            assert error <= 4 * step_error[name] + 1e-6, (phase, name, error, step_error[name])
        # The reference is meaningful: float32 rounding is visible against it, and small.
        assert 0 < max(step_error.values()) < 1e-2


def test_a_wrong_batch_order_is_far_outside_the_tolerance():
    """The test above can fail: the resident path over the batches in another order."""
    num_steps = 4
    step, state, extra = _setup(1, jnp.float32, augmented=False)
    images, labels, positions = _data()
    mesh = sharding.make_mesh()
    with jax.set_mesh(mesh):
        multi = jax.jit(steps.scanned_steps(step, None, sharding.batch_sharding(mesh), unroll=True))
        swapped, _ = multi(state, jnp.asarray(images), jnp.asarray(labels),
                           jnp.asarray(positions[:num_steps][::-1]), jax.random.key(7))
    by_step = _step_by_step(1, jnp.float32, num_steps)
    with jax.enable_x64(True):
        exact = _step_by_step(1, jnp.float64, num_steps)
    wrong, right = _relative_errors(swapped, exact), _relative_errors(by_step, exact)
    assert any(wrong[name] > 4 * right[name] + 1e-6 for name in wrong)
