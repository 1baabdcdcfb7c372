"""models/conv.py: the tap weight gradient against jax.grad of lax's convolution and a numpy loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from asyncjax.models import make_model
from asyncjax.models.conv import conv_for, conv_general_dilated, tap_conv

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("kernel,strides,padding", [
    ((3, 3), (1, 1), ((1, 1), (1, 1))),
    ((3, 3), (2, 2), ((1, 1), (1, 1))),
    ((1, 1), (2, 2), ((0, 0), (0, 0))),
    ((7, 7), (2, 2), ((3, 3), (3, 3))),
    ((3, 2), (1, 2), ((0, 1), (1, 0))),
])
def test_tap_conv_value_and_gradients_match_lax(kernel, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 11, 9, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*kernel, 5, 4)), jnp.float32)
    probe = jnp.asarray(rng.standard_normal(lax.conv_general_dilated(x, w, strides, padding,
                                                                     dimension_numbers=NHWC).shape), jnp.float32)
    reference = lambda x, w: jnp.sum(probe * lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC))
    ours = lambda x, w: jnp.sum(probe * tap_conv(x, w, strides, padding))
    np.testing.assert_allclose(ours(x, w), reference(x, w), rtol=1e-5)
    for got, want in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(reference, (0, 1))(x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_tap_weight_gradient_against_a_numpy_loop():
    """dL/dW[ky, kx, c, o] = sum_{b,h,w} x_pad[b, s h + ky, s w + kx, c] g[b, h, w, o], directly."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 5, 3))
    w = rng.standard_normal((3, 3, 3, 2))
    s, pad = 2, ((1, 1), (1, 1))
    out = lax.conv_general_dilated(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), (s, s), pad,
                                   dimension_numbers=NHWC)
    g = rng.standard_normal(out.shape)
    dw = jax.grad(lambda w_: jnp.sum(jnp.asarray(g, jnp.float32) * tap_conv(jnp.asarray(x, jnp.float32), w_,
                                                                            (s, s), pad)))(jnp.asarray(w, jnp.float32))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros_like(w)
    for ky in range(3):
        for kx in range(3):
            for h in range(out.shape[1]):
                for v in range(out.shape[2]):
                    expected[ky, kx] += padded[:, s * h + ky, s * v + kx, :].T @ g[:, h, v, :]
    np.testing.assert_allclose(dw, expected, rtol=1e-4, atol=1e-4)


def test_bfloat16_and_fallbacks():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((3, 3, 4, 4)), jnp.bfloat16)
    pad = ((1, 1), (1, 1))
    dw = jax.grad(lambda w_: jnp.sum(tap_conv(x, w_, (1, 1), pad).astype(jnp.float32)))(w)
    want = jax.grad(lambda w_: jnp.sum(lax.conv_general_dilated(x, w_, (1, 1), pad, dimension_numbers=NHWC)
                                       .astype(jnp.float32)))(w)
    assert dw.dtype == jnp.bfloat16
    np.testing.assert_allclose(dw.astype(np.float32), want.astype(np.float32), rtol=0.05, atol=0.5)
    # What the tap form does not cover goes to lax unchanged: dilation, groups, "SAME" padding.
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    for kwargs in (dict(rhs_dilation=(2, 2)), dict(feature_group_count=2)):
        kernel = w32[:, :, :2] if "feature_group_count" in kwargs else w32
        np.testing.assert_array_equal(
            conv_general_dilated(x32, kernel, (1, 1), pad, dimension_numbers=NHWC, **kwargs),
            lax.conv_general_dilated(x32, kernel, (1, 1), pad, dimension_numbers=NHWC, **kwargs))
    np.testing.assert_array_equal(conv_general_dilated(x32, w32, (1, 1), "SAME", dimension_numbers=NHWC),
                                  lax.conv_general_dilated(x32, w32, (1, 1), "SAME", dimension_numbers=NHWC))


def test_conv_for_choices():
    assert conv_for("taps") is conv_general_dilated and conv_for("xla") is None
    for unresolved in ("auto", "im2col"):
        with pytest.raises(ValueError, match="conv weight gradient"):
            conv_for(unresolved)


def test_models_train_the_same_with_either_weight_gradient():
    """A whole network's loss gradient (BatchNorm in training mode) with taps equals XLA's.
    (The 1x1 and 7x7 strided kernels of the ImageNet ResNets are covered one by one above.)"""
    backbone = "resnet8"
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    labels = jnp.arange(4) % 3
    grads = []
    for conv in (None, conv_general_dilated):
        model = make_model(backbone, "linear", 3, conv=conv)
        variables = make_model(backbone, "linear", 3).init(jax.random.key(1), images, train=False)

        def loss(params):
            out, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
            return jnp.mean(jax.nn.log_softmax(out["logits"])[jnp.arange(4), labels])

        grads.append(jax.grad(loss)(variables["params"]))
        # The tap form is really in use (flax's dimension numbers are recognised as NHWC).
        program = str(jax.make_jaxpr(loss)(variables["params"]))
        assert ("custom_vjp_call" in program) == (conv is not None)
    for got, want in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[0])):
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-5)
