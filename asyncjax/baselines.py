"""Losses and post-hoc rules of the long-tailed baselines the paper compares against.

- LDAM with deferred re-weighting (Cao et al., 2019): `ldam_loss`, `drw_class_weights`.
- Balanced softmax (Ren et al., 2020) and the logit-adjusted loss (Menon et al., 2021):
  `logit_adjusted_loss`; post-hoc logit adjustment: `posthoc_logit_adjustment`.
- Decoupling (Kang et al., 2020): tau-normalisation `tau_normalize` and nearest class
  mean `ncm_predict` (cRT and LWS retrain the classifier; they reuse the cross-entropy).

All take class counts n_j in the model's output-row order.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from asyncjax import losses

_EPS = 1e-12


def ldam_margins(counts, max_margin: float = 0.5) -> np.ndarray:
    """Delta_j = C / n_j^(1/4), with C chosen so that the largest margin is `max_margin`."""
    margins = 1.0 / np.power(np.asarray(counts, np.float64), 0.25)
    return (margins * (max_margin / margins.max())).astype(np.float32)


def drw_class_weights(counts, beta: float = 0.9999) -> np.ndarray:
    """Deferred re-weighting by the effective number of samples (Cui et al., 2019):
    w_j = (1 - beta) / (1 - beta^n_j), normalised so that sum_j w_j = C."""
    counts = np.asarray(counts, np.float64)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return (weights / weights.sum() * len(counts)).astype(np.float32)


def weighted_cross_entropy(logits, labels, class_weights=None):
    """Cross-entropy; with class weights w, sum_i w_{y_i} l_i / sum_i w_{y_i} (PyTorch's rule)."""
    weights = None if class_weights is None else jnp.asarray(class_weights)[labels]
    return losses.cross_entropy(logits, labels, weights)


def ldam_loss(cosine, labels, margins, *, scale: float = 30.0, class_weights=None):
    """LDAM: cross-entropy of s * (cos - Delta_y at the true class), on a normalised classifier."""
    margin = jnp.asarray(margins)[labels]
    adjusted = cosine - margin[:, None] * jax.nn.one_hot(labels, cosine.shape[-1])
    return weighted_cross_entropy(scale * adjusted, labels, class_weights)


def logit_adjusted_loss(logits, labels, counts, *, tau: float = 1.0):
    """Cross-entropy of logits + tau * log(pi_j), pi_j = n_j / sum n.

    tau = 1 is balanced softmax (Ren et al., 2020), the logit-adjusted loss of Menon et al. (2021).
    """
    counts = jnp.asarray(counts, jnp.float32)
    log_prior = jnp.log(counts / counts.sum())
    return weighted_cross_entropy(logits + tau * log_prior, labels)


def focal_loss(logits, labels, *, gamma: float = 1.0):
    """Focal loss (Lin et al., 2017) as LDAM-DRW's code computes it (Table 3's focal row): the mean
    over the batch of (1 - p_y)^gamma * CE, p_y = exp(-CE) the softmax probability of the label."""
    cross_entropy = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), labels[:, None], axis=1)[:, 0]
    return jnp.mean((1.0 - jnp.exp(-cross_entropy)) ** gamma * cross_entropy)


def posthoc_logit_adjustment(logits, counts, *, tau: float = 1.0):
    """Post-hoc adjustment (Menon et al., 2021): predict argmax_j logits_j - tau * log(pi_j)."""
    counts = jnp.asarray(counts, jnp.float32)
    return jnp.argmax(logits - tau * jnp.log(counts / counts.sum()), axis=-1)


def tau_normalize(kernel, tau: float = 1.0):
    """tau-normalised classifier (Kang et al., 2020): w_j / ||w_j||^tau, kernel [d, C] (no bias)."""
    norms = jnp.linalg.norm(kernel, axis=0, keepdims=True)
    return kernel / jnp.maximum(norms, _EPS) ** tau


def class_means(features, labels, num_classes: int):
    """Mean feature of each class, [C, d] (NCM's prototypes)."""
    sums = jax.ops.segment_sum(features, labels, num_segments=num_classes)
    counts = jax.ops.segment_sum(jnp.ones(len(labels)), labels, num_segments=num_classes)
    return sums / jnp.maximum(counts, 1.0)[:, None]


def ncm_predict(features, means, *, metric: str = "cosine"):
    """Nearest class mean: the class whose mean is most similar (cosine) or nearest (euclidean)."""
    if metric == "cosine":
        unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)
        return jnp.argmax(unit(features) @ unit(means).T, axis=-1)
    if metric == "euclidean":
        distances = (jnp.sum(features ** 2, -1)[:, None] + jnp.sum(means ** 2, -1)[None]
                     - 2.0 * features @ means.T)
        return jnp.argmin(distances, axis=-1)
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
