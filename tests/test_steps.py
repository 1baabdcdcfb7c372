"""Train steps on tiny shapes, and the phase-I -> phase-II classifier extension."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from asyncjax import augment, config_utils, losses, optim, steps
from asyncjax.models import make_backbone, make_model

LOSS_CONFIG = ml_collections.ConfigDict(dict(
    retention_temperature=1.0, retention_normalize=True, retention_reduction="mean",
    intra_margin=0.5, intra_top_k=2))


def _setup(num_classes, batch=8):
    recipe = config_utils.phase_recipe(epochs=1, batch_size=batch, base_lr=0.05, base_batch_size=batch,
                                       schedule="step")
    tx, schedule = optim.make_optimizer(recipe, 20)
    model = make_model("resnet8", "cosine", num_classes)
    rng = np.random.default_rng(0)
    batch_data = {"images": jnp.asarray(rng.integers(0, 256, (batch, 32, 32, 3)), jnp.uint8),
                  "labels": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)}
    return tx, schedule, model, batch_data


def test_phase1_step_decreases_loss_on_a_fixed_batch():
    tx, schedule, model, batch = _setup(5)
    state = steps.init_train_state(model, tx, jax.random.key(0), (32, 32, 3))
    step = jax.jit(steps.make_classification_step(model, tx, schedule, augment.cifar_eval))
    first = None
    for _ in range(12):
        state, metrics = step(state, batch, jax.random.key(1))
        first = float(metrics["loss"]) if first is None else first
    assert int(state.step) == 12
    assert float(metrics["loss"]) < 0.7 * first


def test_phase2_step_decreases_loss_and_reports_each_term():
    num_head, num_classes = 3, 6
    tx, schedule, model, batch = _setup(num_classes)
    batch["is_memory"] = (batch["labels"] < num_head).astype(jnp.float32)
    phase1 = make_model("resnet8", "cosine", num_head).init(jax.random.key(2), jnp.zeros((1, 32, 32, 3)),
                                                           train=False)
    old = {"params": phase1["params"]["backbone"], "batch_stats": phase1["batch_stats"]["backbone"]}
    state = steps.init_train_state(model, tx, jax.random.key(0), (32, 32, 3))
    step = jax.jit(steps.make_phase2_step(model, make_backbone("resnet8"), tx, schedule, augment.cifar_eval,
                                          num_head=num_head, retention_weight=1.5, loss_config=LOSS_CONFIG))
    history = []
    for _ in range(12):
        state, metrics = step(state, old, batch, jax.random.key(1))
        history.append({k: float(v) for k, v in metrics.items()})
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    for h in history:  # The total is exactly Eq. 9's combination of the reported terms.
        np.testing.assert_allclose(h["loss"], h["cls"] + h["intra"] + 1.5 * h["dis"], rtol=1e-5)
    assert history[0]["intra"] > 0 and history[0]["dis"] > 0


def test_phase2_terms_match_the_losses_module():
    """One phase-II step's reported terms and its update equal the losses computed separately on
    its forward pass, with a frozen model that is not the trained one and non-default loss settings
    (a step that ignored old_variables or loss_config would report other values)."""
    num_head, num_classes, weight = 3, 6, 2.0
    tx, schedule, model, batch = _setup(num_classes)
    batch["is_memory"] = (batch["labels"] < num_head).astype(jnp.float32)
    state = steps.init_train_state(model, tx, jax.random.key(0), (32, 32, 3))
    backbone = make_backbone("resnet8")
    frozen = make_model("resnet8", "cosine", num_head).init(jax.random.key(5), jnp.zeros((1, 32, 32, 3)),
                                                            train=False)
    old = {"params": frozen["params"]["backbone"], "batch_stats": frozen["batch_stats"]["backbone"]}
    config = ml_collections.ConfigDict(dict(retention_temperature=0.3, retention_normalize=False,
                                            retention_reduction="sum", intra_margin=0.9, intra_top_k=1))
    step = steps.make_phase2_step(model, backbone, tx, schedule, augment.cifar_eval, num_head=num_head,
                                  retention_weight=weight, loss_config=config)
    new_state, metrics = jax.jit(step)(state, old, batch, jax.random.key(1))
    images = augment.cifar_eval(batch["images"])
    old_features = backbone.apply(old, images, train=False)

    def total(params):
        out, _ = model.apply({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                             mutable=["batch_stats"])
        terms = (losses.cross_entropy(out["logits"], batch["labels"]),
                 losses.intra_margin_loss(out["cosine"], batch["labels"], batch["is_memory"], num_head,
                                          margin=0.9, top_k=1),
                 losses.memory_retentive_loss(old_features, out["features"], temperature=0.3, normalize=False,
                                              reduction="sum"))
        return terms[0] + terms[1] + weight * terms[2], terms

    (_, (cls, intra, dis)), grads = jax.value_and_grad(total, has_aux=True)(state.params)
    np.testing.assert_allclose(metrics["cls"], cls, rtol=1e-4)
    np.testing.assert_allclose(metrics["intra"], intra, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["dis"], dis, rtol=1e-4)
    # The defaults (tau 1, normalised, mean) give another L_dis: the settings reached the loss.
    default_dis = losses.memory_retentive_loss(old_features, model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False)["features"])
    assert abs(float(metrics["dis"]) - float(default_dis)) > 0.1 * abs(float(metrics["dis"]))
    # The update is the one of this total's gradient (first SGD step: p - lr * (g + wd * p)).
    lr = float(schedule(0))
    expected = jax.tree.map(lambda p, g: p - lr * (g + 5e-4 * p), state.params["backbone"], grads["backbone"])
    for got, want in zip(jax.tree.leaves(new_state.params["backbone"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_extend_classifier_keeps_phase1_rows():
    phase1 = make_model("resnet8", "cosine", 4).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    params1 = jax.tree.map(lambda x: x + 0.5 if x.ndim == 0 else x, phase1["params"])  # sigma moved off init.
    fresh = make_model("resnet8", "cosine", 10).init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)),
                                                    train=False)["params"]["head"]
    merged = steps.extend_classifier(params1, fresh)
    np.testing.assert_array_equal(merged["head"]["kernel"][:, :4], params1["head"]["kernel"])
    np.testing.assert_array_equal(merged["head"]["kernel"][:, 4:], fresh["kernel"][:, 4:])
    assert merged["head"]["kernel"].shape == (64, 10)
    assert float(merged["head"]["scale"]) == float(params1["head"]["scale"]) == 16.5
    assert merged["backbone"] is params1["backbone"]
    linear1 = make_model("resnet8", "linear", 4).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    linear_fresh = make_model("resnet8", "linear", 7).init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)),
                                                          train=False)["params"]["head"]
    merged = steps.extend_classifier(linear1["params"], linear_fresh)
    np.testing.assert_array_equal(merged["head"]["fc"]["bias"][:4], linear1["params"]["head"]["fc"]["bias"])
    assert merged["head"]["fc"]["kernel"].shape == (64, 7)


def test_learning_rate_schedules():
    recipe = config_utils.phase_recipe(epochs=10, batch_size=128, base_lr=0.1, base_batch_size=64,
                                       schedule="step", warmup_epochs=2, decay_fractions=(0.5, 0.8))
    schedule = optim.learning_rate_schedule(recipe, steps_per_epoch=10)
    lr = 0.2  # Scaled linearly with the batch.
    assert abs(float(schedule(0)) - lr / 20) < 1e-7
    assert abs(float(schedule(20)) - lr) < 1e-7
    assert abs(float(schedule(49)) - lr) < 1e-7
    assert abs(float(schedule(50)) - lr * 0.1) < 1e-7
    assert abs(float(schedule(80)) - lr * 0.01) < 1e-8
    recipe.schedule = "cosine"
    schedule = optim.learning_rate_schedule(recipe, steps_per_epoch=10)
    assert abs(float(schedule(20 + 40)) - lr / 2) < 1e-6 and float(schedule(100)) < 1e-6


def test_bfloat16_compute_keeps_float32_parameters_and_optimizer_state():
    tx, schedule, _, batch = _setup(5)
    model = make_model("resnet8", "cosine", 5, dtype=jnp.bfloat16)
    state = steps.init_train_state(model, tx, jax.random.key(0), (32, 32, 3))
    step = jax.jit(steps.make_classification_step(model, tx, schedule, augment.cifar_eval))
    first = None
    for _ in range(8):
        state, metrics = step(state, batch, jax.random.key(1))
        first = float(metrics["loss"]) if first is None else first
    dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                      augment.cifar_eval(batch["images"]), train=False)
    assert out["features"].dtype == jnp.float32  # Pooled in bf16, handed to the head in f32.
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) < first


def test_gradient_distortion_matches_separate_gradients():
    tx, schedule, model, batch = _setup(6, batch=12)
    state = steps.init_train_state(model, tx, jax.random.key(0), (32, 32, 3))
    num_head = 4
    images = augment.cifar_eval(batch["images"])
    labels = batch["labels"]

    def masked_loss(params, mask):
        out, _ = model.apply({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                             mutable=["batch_stats"])
        per = optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels)
        return jnp.sum(per * mask) / len(labels)

    head_mask = (labels < num_head).astype(jnp.float32)
    g_head = jax.grad(masked_loss)(state.params, head_mask)
    g_tail = jax.grad(masked_loss)(state.params, 1 - head_mask)
    g_all = jax.grad(lambda p: masked_loss(p, jnp.ones_like(head_mask)))(state.params)
    flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]).astype(np.float64)
    h, t, a = flat(g_head), flat(g_tail), flat(g_all)

    plain = jax.jit(steps.make_classification_step(model, tx, schedule, augment.cifar_eval))
    diag = jax.jit(steps.make_classification_step(model, tx, schedule, augment.cifar_eval,
                                                  distortion_num_head=num_head))
    plain_state, plain_metrics = plain(state, batch, jax.random.key(1))
    diag_state, metrics = diag(state, batch, jax.random.key(1))
    np.testing.assert_allclose(metrics["loss"], plain_metrics["loss"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(diag_state.params), jax.tree.leaves(plain_state.params)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)  # Same update as the plain step.
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(a), rtol=1e-3)
    np.testing.assert_allclose(metrics["grad_norm_head"], np.linalg.norm(h), rtol=1e-3)
    np.testing.assert_allclose(metrics["grad_norm_tail"], np.linalg.norm(t), rtol=1e-3)
    np.testing.assert_allclose(metrics["grad_cos_head"], h @ a / np.linalg.norm(h) / np.linalg.norm(a), atol=1e-3)
    np.testing.assert_allclose(metrics["grad_cos_tail"], t @ a / np.linalg.norm(t) / np.linalg.norm(a), atol=1e-3)


def test_phase2_with_frozen_batch_norm_keeps_phase1_statistics():
    num_head, num_classes = 3, 6
    tx, schedule, model, batch = _setup(num_classes)
    batch["is_memory"] = (batch["labels"] < num_head).astype(jnp.float32)
    state = steps.init_train_state(model, tx, jax.random.key(0), (32, 32, 3))
    # Running statistics as phase I would leave them (not the init's zeros and ones).
    state = state.replace(batch_stats=jax.tree.map(lambda x: x + 0.3, state.batch_stats))
    old = {"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]}
    results = {}
    for freeze in (False, True):
        step = jax.jit(steps.make_phase2_step(model, make_backbone("resnet8"), tx, schedule, augment.cifar_eval,
                                              num_head=num_head, retention_weight=1.0, loss_config=LOSS_CONFIG,
                                              freeze_batch_norm=freeze))
        results[freeze] = step(state, old, batch, jax.random.key(1))
    frozen_state, frozen_metrics = results[True]
    for got, want in zip(jax.tree.leaves(frozen_state.batch_stats), jax.tree.leaves(state.batch_stats)):
        np.testing.assert_array_equal(got, want)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(results[False][0].batch_stats),
                                                      jax.tree.leaves(state.batch_stats))]
    assert all(moved)  # "update" re-estimates them on the batch.
    # Frozen: the forward pass is the inference-mode one, so the new features equal the old model's
    # at the first step (same weights, same statistics): L_dis's self-distances are zero.
    assert float(frozen_metrics["self_distance"]) < 1e-5 < float(results[False][1]["self_distance"])


@pytest.mark.parametrize("head", ["cosine", "linear"])
def test_a_head_padded_for_the_model_axis_is_the_unpadded_head(head):
    """num_padded widens the kernel with zero columns: the same initial real columns, the same
    outputs and gradients on them, and no gradient on the padding."""
    x = jax.random.normal(jax.random.key(5), (6, 32, 32, 3))
    labels = jnp.array([0, 1, 2, 3, 4, 1])
    plain = make_model("resnet8", head, 5)
    padded = make_model("resnet8", head, 5, num_padded=8)
    v_plain = plain.init(jax.random.key(0), x[:1], train=False)
    v_padded = padded.init(jax.random.key(0), x[:1], train=False)
    kernel = (lambda v: v["params"]["head"]["kernel"]) if head == "cosine" else (
        lambda v: v["params"]["head"]["fc"]["kernel"])
    assert kernel(v_padded).shape == (64, 8)
    np.testing.assert_array_equal(kernel(v_padded)[:, :5], kernel(v_plain))
    np.testing.assert_array_equal(kernel(v_padded)[:, 5:], 0.0)

    def loss(params, model, variables):
        out = model.apply({**variables, "params": params}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean(), out
    (l_plain, out_plain), g_plain = jax.value_and_grad(loss, has_aux=True)(v_plain["params"], plain, v_plain)
    (l_padded, out_padded), g_padded = jax.value_and_grad(loss, has_aux=True)(v_padded["params"], padded, v_padded)
    assert out_padded["logits"].shape == (6, 5)
    # Same float operations on the real columns (the padding only adds zero columns): tight.
    np.testing.assert_allclose(out_padded["logits"], out_plain["logits"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(kernel({"params": g_padded})[:, :5], kernel({"params": g_plain}), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(kernel({"params": g_padded})[:, 5:], 0.0)


def test_extend_classifier_from_a_padded_phase1_head():
    """Phase I's kernel padded to 4 columns for 3 classes; phase II's to 8 for 7: the 3 real
    columns, then the new head's columns 3..7 (its 4 new classes and its zero padding)."""
    phase1 = make_model("resnet8", "cosine", 3, num_padded=4).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                                  train=False)["params"]
    fresh = make_model("resnet8", "cosine", 7, num_padded=8).init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)),
                                                                 train=False)["params"]["head"]
    merged = steps.extend_classifier(phase1, fresh, 3)
    assert merged["head"]["kernel"].shape == (64, 8)
    np.testing.assert_array_equal(merged["head"]["kernel"][:, :3], phase1["head"]["kernel"][:, :3])
    np.testing.assert_array_equal(merged["head"]["kernel"][:, 3:], fresh["kernel"][:, 3:])
    np.testing.assert_array_equal(merged["head"]["kernel"][:, 7:], 0.0)
