"""A convolution whose weight gradient is a sum of per-tap matrix products.

XLA:CPU computes a convolution's weight gradient as another convolution with the batch
and feature roles swapped, and its layout assignment moves every activation and
cotangent into a transposed layout for it: about half of a ResNet-32 training step's
time on the CPU (../shared/PERF_NOTES.md). Here the forward pass and the input gradient
stay XLA's own; only the weight gradient is rewritten, for a kernel of kh x kw taps:

    dL/dW[ky, kx] = sum over (b, h, w) of x_pad[b, s*h + ky, s*w + kx, :]^T  dL/dy[b, h, w, :]

one (C_in x B*H*W) @ (B*H*W x C_out) product per tap on a strided slice of the padded
input, in the NHWC layout the activations already have. Same gradient (to float32
rounding; tested against jax.grad of lax.conv_general_dilated); faster on the CPU
(benchmarks/README.md). `conv_general_dilated` has lax's signature, for flax's
`nn.Conv(conv_general_dilated=...)`; anything but NHWC / HWIO, explicit padding, no
dilation and no feature groups falls back to lax.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
_NHWC_NUMBERS = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _forward(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def tap_conv(x: jax.Array, w: jax.Array, strides: tuple, padding: tuple) -> jax.Array:
    """y = conv(x, w): x [B, H, W, C_in], w [kh, kw, C_in, C_out], `padding` ((lo, hi), (lo, hi))."""
    return _forward(x, w, strides, padding)


def _tap_conv_fwd(x, w, strides, padding):
    return _forward(x, w, strides, padding), (x, w)


def _tap_conv_bwd(strides, padding, residuals, cotangent):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda x_: _forward(x_, w, strides, padding), x)
    (dx,) = input_vjp(cotangent)
    kh, kw, channels, _ = w.shape
    batch, out_h, out_w, _ = cotangent.shape
    (sh, sw) = strides
    padded = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    taps = [jnp.einsum("bhwc,bhwo->co",
                       lax.slice(padded, (0, ky, kx, 0),
                                 (batch, ky + (out_h - 1) * sh + 1, kx + (out_w - 1) * sw + 1, channels),
                                 (1, sh, sw, 1)),
                       cotangent, preferred_element_type=jnp.float32)
            for ky in range(kh) for kx in range(kw)]
    dw = jnp.stack(taps).reshape(w.shape).astype(w.dtype)
    return dx, dw


tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
    """lax.conv_general_dilated's signature; the tap weight gradient where it applies."""
    plain = (lhs_dilation is None or all(d == 1 for d in lhs_dilation)) and (
        rhs_dilation is None or all(d == 1 for d in rhs_dilation))
    if (plain and not isinstance(padding, str) and feature_group_count == 1 and batch_group_count == 1
            and precision is None and preferred_element_type is None and lhs.ndim == 4
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC_NUMBERS):
        return tap_conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)


CONV_WEIGHT_GRADS = ("auto", "taps", "xla")


def conv_for(weight_grad: str):
    """The conv function for flax's nn.Conv: `taps` (above) or `xla` (None: lax's own).
    `auto` is decided per machine by speed_choice.resolve_conv_weight_grad before this call."""
    if weight_grad not in ("taps", "xla"):
        raise ValueError(f"conv weight gradient form must be 'taps' or 'xla' (model.conv_weight_grad=auto is "
                         f"resolved by asyncjax.speed_choice first), got {weight_grad!r}")
    return conv_general_dilated if weight_grad == "taps" else None
