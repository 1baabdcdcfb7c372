"""The optimiser against hand-computed updates: PyTorch-style SGD (coupled weight decay, momentum),
the weight-decay mask on a real parameter tree, the head's lr multiplier, and the CIFAR schedule."""
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asyncjax import config_utils, optim
from asyncjax.models import make_model


def _flat(tree):
    return {"/".join(k): np.asarray(v, np.float64) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def test_weight_decay_mask_exempts_only_the_cosine_scale():
    params = make_model("resnet8", "cosine", 10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                      train=False)["params"]
    mask = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(optim.decay_mask(params)).items()}
    assert mask["head/scale"] is False
    exempt = [name for name, decayed in mask.items() if not decayed]
    assert exempt == ["head/scale"]
    # BatchNorm's gamma and beta are decayed, as PyTorch's SGD decays every parameter it is given.
    assert mask["backbone/bn1/scale"] and mask["backbone/bn1/bias"] and mask["head/kernel"]


def _pytorch_sgd(params, grads_per_step, lrs, weight_decay, momentum, exempt=()):
    """torch.optim.SGD(momentum, weight_decay) written out: g += wd * p (coupled), buf = m * buf + g
    (buf = g at the first step), p -= lr * buf."""
    params = {k: v.copy() for k, v in params.items()}
    buffers = {}
    for grads, lr in zip(grads_per_step, lrs):
        for name, p in params.items():
            g = grads[name] + (0.0 if name in exempt else weight_decay) * p
            buffers[name] = g if name not in buffers else momentum * buffers[name] + g
            params[name] = p - lr[name] * buffers[name]
    return params


@pytest.mark.parametrize("head_multiplier,backbone_multiplier", [(10.0, 1.0), (1.0, 0.1), (100.0, 0.5)])
def test_update_matches_pytorch_sgd_with_coupled_decay_momentum_and_multipliers(head_multiplier,
                                                                               backbone_multiplier):
    recipe = config_utils.phase_recipe(epochs=1, batch_size=4, base_lr=0.1, base_batch_size=4, schedule="step",
                                       weight_decay=5e-3, momentum=0.9, head_lr_multiplier=head_multiplier,
                                       backbone_lr_multiplier=backbone_multiplier)
    tx, schedule = optim.make_optimizer(recipe, steps_per_epoch=100)
    rng = np.random.default_rng(0)
    params = {"backbone": {"bn": {"scale": rng.normal(size=3)}, "conv": {"kernel": rng.normal(size=(2, 3))}},
              "head": {"kernel": rng.normal(size=(3, 2)), "scale": np.array(16.0)}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in range(3)]
    state, current = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, current)
        current = jax.tree.map(lambda p, u: p + u, current, updates)
    lrs = [{name: float(schedule(t)) * (head_multiplier if name.startswith("head") else backbone_multiplier)
            for name in _flat(params)}
           for t in range(3)]
    want = _pytorch_sgd(_flat(params), [_flat(g) for g in grads], lrs, 5e-3, 0.9, exempt=("head/scale",))
    got = _flat(current)
    for name in want:  # float32 against float64 over three small updates: a few ulps of the values.
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_cifar_recipe_decays_by_a_hundredth_at_160_and_again_at_180():
    config = config_utils.load_config_file("configs/cifar100_lt.py")
    steps_per_epoch = 10
    schedule = optim.learning_rate_schedule(config.phase1, steps_per_epoch)
    lr = 0.1
    # LDAM-DRW's code: linear warm-up over 5 epochs, then lr; x0.01 after epoch 160, x0.0001 after 180.
    expected = {0: lr / 50, 51: lr, 1599: lr, 1600: lr * 1e-2, 1799: lr * 1e-2, 1800: lr * 1e-4, 1999: lr * 1e-4}
    for step, want in expected.items():  # float32 arithmetic inside optax: within 1e-5 of the value.
        np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-5, err_msg=f"step {step}")
    assert config.phase2.decay_factor == 0.01
    places = config_utils.load_config_file("configs/places_lt.py")
    assert places.phase1.decay_factor == 0.01  # The paper: "by 0.01" on Places-LT too.


def test_frozen_head_columns_do_not_move_while_the_rest_trains():
    """phase2_old_rows=freeze: the first classes' columns of the head (kernel and bias) stay
    exactly as they were through weight decay and momentum; the other columns and the backbone
    train as without the freeze."""
    recipe = config_utils.phase_recipe(epochs=2, batch_size=8, base_lr=0.1, base_batch_size=8, schedule="step")
    params = {"backbone": {"conv": {"kernel": jnp.ones((3, 4))}},
              "head": {"fc": {"kernel": jnp.ones((4, 6)), "bias": jnp.ones((6,))}}}
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
    frozen_tx, _ = optim.make_optimizer(recipe, steps_per_epoch=5, frozen_head_columns=4)
    plain_tx, _ = optim.make_optimizer(recipe, steps_per_epoch=5)
    frozen, plain = params, params
    frozen_state, plain_state = frozen_tx.init(params), plain_tx.init(params)
    for _ in range(3):
        updates, frozen_state = frozen_tx.update(grads, frozen_state, frozen)
        frozen = optax.apply_updates(frozen, updates)
        updates, plain_state = plain_tx.update(grads, plain_state, plain)
        plain = optax.apply_updates(plain, updates)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(frozen["head"]["fc"][name][..., :4], params["head"]["fc"][name][..., :4])
        np.testing.assert_array_equal(frozen["head"]["fc"][name][..., 4:], plain["head"]["fc"][name][..., 4:])
        assert not np.allclose(plain["head"]["fc"][name][..., :4], 1.0)
    np.testing.assert_array_equal(frozen["backbone"]["conv"]["kernel"], plain["backbone"]["conv"]["kernel"])
