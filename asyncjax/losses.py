"""Losses of phase I and phase II (paper Eqs. 1, 6-9; METHOD.md "Phase II").

    L = (1/|B|) sum_{x in B} (L_cls(x) + L_intra(x)) + lambda * L_dis(B)     (Eq. 9)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_EPS = 1e-12


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy L_cls (Eq. 1), computed in float32.

    `weights` ([B], optional): sum_i w_i l_i / sum_i w_i, for masks of padding rows and
    for per-example weights such as DRW's class weights (0 when every weight is 0).
    """
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    if weights is None:
        return per_example.mean()
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), _EPS)


def _normalize(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def _safe_sqrt(x):
    # sqrt has an infinite derivative at 0, reached when an old and a new node
    # coincide (old == new at the start of phase II). The double `where` gives
    # distance 0 and gradient 0 there instead of NaN.
    positive = x > _EPS
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def memory_retentive_loss(old_features: jax.Array, new_features: jax.Array, *,
                          temperature: float = 1.0, normalize: bool = True,
                          reduction: str = "mean") -> jax.Array:
    """Graph-matching memory-retentive loss L_dis (Eqs. 6-8).

    Nodes are the batch samples; z_i = old_features[i] (frozen phase-I model),
    ẑ_j = new_features[j] (model in training):

        a_ji = exp(s(z_i, ẑ_j)/tau) / sum_j' exp(s(z_i, ẑ_j')/tau)     (Eq. 6)
        mu_i = sum_j a_ji ||z_i - ẑ_j||_2                               (Eq. 7)
        L_dis = mean_i mu_i   (or sum_i; Eq. 8)

    Written as `jax.vmap` over old nodes in O(B^2 + B d) memory (no B x B x d tensor). The
    distances to other nodes use ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b (clamped at 0); the
    self-pair distance ||z_i - ẑ_i|| is computed from the difference itself, because the
    expansion cancels catastrophically when ẑ_i is close to z_i (as at the start of phase II),
    and that is the pair a small tau puts its attention on: through the expansion the gradient
    was off by 5-90% there, against float64 (tests/test_losses.py).

    Args:
      old_features, new_features: [B, d].
      temperature: tau (choice: 1; the paper has none).
      normalize: L2-normalise both before the distance (choice: True).
      reduction: "mean" (choice: lambda then does not depend on B) or "sum" (paper).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    old = old_features.astype(jnp.float32)
    new = new_features.astype(jnp.float32)
    unit_old, unit_new = _normalize(old), _normalize(new)
    if normalize:
        old, new = unit_old, unit_new
    new_sq_norms = jnp.sum(new * new, axis=-1)

    def per_old_node(i, z_i, unit_z_i, new_i):
        cosine = unit_new @ unit_z_i                       # s(z_i, ẑ_j) for all j
        attention = jax.nn.softmax(cosine / temperature)   # a_ji, Eq. 6
        sq_dist = jnp.sum(z_i * z_i) + new_sq_norms - 2.0 * (new @ z_i)
        sq_dist = sq_dist.at[i].set(jnp.sum(jnp.square(z_i - new_i)))  # Exact where it cancels.
        distance = _safe_sqrt(jnp.maximum(sq_dist, 0.0))
        return jnp.sum(attention * distance)               # mu_i, Eq. 7

    mu = jax.vmap(per_old_node)(jnp.arange(old.shape[0]), old, unit_old, new)
    return mu.mean() if reduction == "mean" else mu.sum()


def retention_diagnostics(old_features: jax.Array, new_features: jax.Array, *,
                          temperature: float = 1.0) -> dict:
    """What L_dis's graph matching does (metrics only, no gradient):

      attention_neighbours: exp(entropy of a_i.), averaged over old nodes i: how many new nodes
        each old node attends to (1: one; B: uniform over the batch, as tau = 1 gives).
      self_match_rate: share of old nodes whose largest a_ji is j = i (their own new feature).
      self_distance: mean ||z̄_i - ẑ̄_i|| of the L2-normalised features (0: unchanged features).
    """
    old = _normalize(jax.lax.stop_gradient(old_features).astype(jnp.float32))
    new = _normalize(jax.lax.stop_gradient(new_features).astype(jnp.float32))
    attention = jax.nn.softmax(old @ new.T / temperature, axis=-1)        # [i, j] = a_ji
    entropy = -jnp.sum(attention * jnp.log(jnp.maximum(attention, 1e-30)), axis=-1)
    return {"attention_neighbours": jnp.mean(jnp.exp(entropy)),
            "self_match_rate": jnp.mean(jnp.argmax(attention, axis=-1) == jnp.arange(old.shape[0])),
            "self_distance": jnp.mean(jnp.linalg.norm(old - new, axis=-1))}


def intra_margin_loss(cos_scores: jax.Array, labels: jax.Array, is_memory: jax.Array,
                      num_old_classes: int, *, margin: float = 0.5, top_k: int = 2) -> jax.Array:
    """Intra-classification margin loss L_intra (Eq. 9; LUCIR's margin ranking).

    For a memory sample x (from a head class), with <w̄, z̄> the cosine score of
    its true class and <w̄_k, z̄> the top_k highest cosine scores among the new
    (phase-II) classes, rows num_old_classes..C-1:

        L_intra(x) = sum_{k=1..K_m} max(0, m - <w̄, z̄> + <w̄_k, z̄>)

    and 0 for samples of X2. Averaged over the whole batch B (Eq. 9's 1/|B|).

    Args:
      cos_scores: [B, C] cosine scores (logits before the scale sigma).
      labels: [B] output rows.
      is_memory: [B] bool/float, 1 for memory-bank samples.
      num_old_classes: C1.
      margin: m (choice: 0.5). top_k: K_m (choice: 2).
    """
    num_new = cos_scores.shape[-1] - num_old_classes
    if num_new < 1:
        raise ValueError(f"no new classes: C = {cos_scores.shape[-1]}, C1 = {num_old_classes}")
    k = min(top_k, num_new)
    cos_scores = cos_scores.astype(jnp.float32)
    positive = jnp.take_along_axis(cos_scores, labels[:, None], axis=-1)       # [B, 1]
    hardest_new, _ = jax.lax.top_k(cos_scores[:, num_old_classes:], k)         # [B, k]
    per_example = jnp.sum(jax.nn.relu(margin - positive + hardest_new), axis=-1)
    return jnp.sum(per_example * is_memory.astype(jnp.float32)) / cos_scores.shape[0]


def retention_weight(num_head: int, num_tail: int, base: float = 1.0) -> float:
    """lambda = lambda_base * sqrt(C1 / C2) (Appendix A)."""
    return float(base * (num_head / num_tail) ** 0.5)
