import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asyncjax.models import make_model


def count(params):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def test_resnet32_matches_ldam():
    model = make_model("resnet32", "linear", 100)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    # 464,154 parameters for 10 classes (He et al.; LDAM-DRW), + 90 x 65 for 100 classes.
    assert count(variables["params"]) == 470_004
    assert count(variables["params"]["backbone"]) == 470_004 - 64 * 100 - 100
    assert len([k for k in variables["params"]["backbone"] if "block" in k]) == 15


@pytest.mark.parametrize("name,expected", [("resnet50", 25_557_032), ("resnet152", 60_192_808)])
def test_imagenet_resnets_match_torchvision_counts(name, expected):
    model = make_model(name, "linear", 1000)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
    assert count(variables["params"]) == expected  # torchvision's parameter counts.


def test_resnet10_forward_shapes():
    model = make_model("resnet10", "cosine", 7)
    x = jnp.zeros((2, 64, 64, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    out = model.apply(variables, x, train=False)
    assert out["features"].shape == (2, 512) and out["logits"].shape == (2, 7)


def test_cosine_head_and_feature_separation():
    model = make_model("resnet8", "cosine", 5, cosine_scale_init=16.0)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    out = model.apply(variables, x, train=False)
    kernel = np.asarray(variables["params"]["head"]["kernel"], np.float64)
    assert kernel.shape == (64, 5)  # [d, C]: classes on the last axis.
    z = np.asarray(out["features"], np.float64)
    cosine = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (kernel / np.linalg.norm(kernel, axis=0))
    np.testing.assert_allclose(out["cosine"], cosine, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["logits"], 16.0 * cosine, rtol=1e-4, atol=1e-4)


def test_train_mode_updates_batch_stats():
    model = make_model("resnet8", "linear", 3)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown backbone"):
        make_model("vgg16", "linear", 3)
    with pytest.raises(ValueError, match="unknown head"):
        make_model("resnet8", "softmax", 3)
