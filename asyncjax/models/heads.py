"""Classifier heads W_c. Their kernel is [d, C]: the class axis is the last one,
and phase II concatenates the new classes' rows W_c2 along it.

`num_padded` (>= C) widens the kernel with zero columns so that the class axis divides the mesh's
`model` axis (iNaturalist's 8,142 classes over 8 chips): the outputs are the first C columns
only, the padding never receives a gradient, and the real columns start as an unpadded head's."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

_EPS = 1e-12
CLASS_AXIS = -1


def padded_init(init, num_classes: int):
    """`init` for the first `num_classes` columns (as an unpadded head draws them), zeros after."""
    def padded(key, shape, dtype=jnp.float32):
        real = init(key, (*shape[:-1], num_classes), dtype)
        return jnp.pad(real, [(0, 0)] * (len(shape) - 1) + [(0, shape[-1] - num_classes)])
    return padded


class LinearClassifier(nn.Module):
    """Plain dense classifier (baselines): logits = z W + b.

    `class_scale=True` adds LWS's learnable per-class scales f (Kang et al., 2020):
    logits_j = f_j (z w_j + b_j), f initialised to 1."""
    num_classes: int
    dtype: jnp.dtype = jnp.float32
    class_scale: bool = False
    num_padded: int | None = None

    @nn.compact
    def __call__(self, features):
        init = padded_init(nn.initializers.variance_scaling(1.0, "fan_in", "normal"), self.num_classes)
        logits = nn.Dense(self.num_padded or self.num_classes, dtype=self.dtype, name="fc",
                          kernel_init=init)(features)[..., :self.num_classes]
        if self.class_scale:
            logits = logits * self.param("class_scale", nn.initializers.ones, (self.num_classes,), jnp.float32)
        return {"logits": logits}


class CosineClassifier(nn.Module):
    """Cosine classifier: logits = sigma * <w̄_c, z̄> (METHOD.md "Classifiers").

    Returns the logits and the cosine scores <w̄_c, z̄> that L_intra uses.
    sigma is a learnable scalar (choice: initialised to 16).
    """
    num_classes: int
    scale_init: float = 16.0
    dtype: jnp.dtype = jnp.float32
    num_padded: int | None = None

    @nn.compact
    def __call__(self, features):
        kernel = self.param("kernel", padded_init(nn.initializers.normal(stddev=0.01), self.num_classes),
                            (features.shape[-1], self.num_padded or self.num_classes), jnp.float32)
        scale = self.param("scale", nn.initializers.constant(self.scale_init), (), jnp.float32)
        # Normalising in float32 keeps cosines accurate under bfloat16 compute.
        z = features.astype(jnp.float32)
        z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), _EPS)
        # The real columns only: a zero padding column's norm would send NaN into its gradient.
        kernel = kernel[:, :self.num_classes]
        w = kernel / jnp.maximum(jnp.linalg.norm(kernel, axis=0, keepdims=True), _EPS)
        cosine = z @ w
        return {"logits": scale * cosine, "cosine": cosine}
