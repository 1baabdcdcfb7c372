"""Classifier heads W_c. Their kernel is [d, C]: the class axis is the last one,
and phase II concatenates the new classes' rows W_c2 along it."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

_EPS = 1e-12
CLASS_AXIS = -1


class LinearClassifier(nn.Module):
    """Plain dense classifier (baselines): logits = z W + b.

    `class_scale=True` adds LWS's learnable per-class scales f (Kang et al., 2020):
    logits_j = f_j (z w_j + b_j), f initialised to 1."""
    num_classes: int
    dtype: jnp.dtype = jnp.float32
    class_scale: bool = False

    @nn.compact
    def __call__(self, features):
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc",
                          kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "normal"))(features)
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

    @nn.compact
    def __call__(self, features):
        kernel = self.param("kernel", nn.initializers.normal(stddev=0.01),
                            (features.shape[-1], self.num_classes), jnp.float32)
        scale = self.param("scale", nn.initializers.constant(self.scale_init), (), jnp.float32)
        # Normalising in float32 keeps cosines accurate under bfloat16 compute.
        z = features.astype(jnp.float32)
        z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), _EPS)
        w = kernel / jnp.maximum(jnp.linalg.norm(kernel, axis=0, keepdims=True), _EPS)
        cosine = z @ w
        return {"logits": scale * cosine, "cosine": cosine}
