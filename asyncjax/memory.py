"""Exemplar memory bank (paper Sec. 3.2.2, Eqs. 2-5; METHOD.md "Exemplar memory bank").

After phase I, each head class j keeps K representative training images. With
F_j the phase-I features of class j and s the cosine similarity:

    c_j     = mean_i F_j[i]                                  (class prototype)
    m_1     = argmax_i s(c_j, F_j[i])                         (Eq. 2)
    p_i     = softmax_i s(c_j, m_i) over the k selected rows  (Eq. 3)
    z_{k+1} = sum_i p_i m_i,   Delta = c_j - z_{k+1}          (Eq. 4)
    m_{k+1} = argmax over unselected i of s(c_j + Delta, F_j[i])  (Eq. 5)

(choice) rows already selected cannot be selected again.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-12


def _normalize(x, axis=-1):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), _EPS)


@functools.partial(jax.jit, static_argnames=("num",))
def select_class_exemplars(features: jax.Array, valid: jax.Array, num: int) -> jax.Array:
    """Selects `num` exemplars of ONE class by the centre-residual argmax (Eqs. 2-5).

    Args:
      features: [n, d] phase-I features of the class's rows (padding rows allowed).
      valid: [n] bool, False on padding rows, which are never selected and do not
        count towards the prototype c_j.
      num: K, the number of exemplars wanted.

    Returns:
      int32 [num]: row indices into `features`, in selection order. When fewer
      than `num` rows are valid, all valid rows come first, then -1.
    """
    features = features.astype(jnp.float32)
    valid = valid.astype(bool)
    n = features.shape[0]
    num_valid = jnp.sum(valid)
    prototype = jnp.sum(jnp.where(valid[:, None], features, 0.0), axis=0) / jnp.maximum(num_valid, 1)
    unit_features = _normalize(features)
    # s(c_j, F_j[i]) for every row; the softmax of Eq. 3 reads it at the selected rows.
    sim_to_prototype = unit_features @ _normalize(prototype)

    def body(k, carry):
        selected, chosen = carry
        # Eq. 3-4: z_{k+1} = sum_i p_i m_i over the rows chosen so far.
        logits = jnp.where(chosen, sim_to_prototype, -jnp.inf)
        weights = jax.nn.softmax(jnp.where(chosen.any(), logits, 0.0))
        weights = jnp.where(chosen, weights, 0.0)
        state = weights @ features
        # Eq. 5 uses c_j + Delta = 2 c_j - z_{k+1}; Eq. 2 (k = 0) uses c_j itself.
        target = jnp.where(k == 0, prototype, 2.0 * prototype - state)
        scores = unit_features @ _normalize(target)
        candidates = valid & ~chosen
        best = jnp.argmax(jnp.where(candidates, scores, -jnp.inf))
        found = candidates.any()
        selected = selected.at[k].set(jnp.where(found, best, -1).astype(jnp.int32))
        chosen = chosen.at[best].set(chosen[best] | found)
        return selected, chosen

    init = (jnp.full((num,), -1, jnp.int32), jnp.zeros((n,), bool))
    selected, _ = jax.lax.fori_loop(0, num, body, init)
    return selected


@functools.partial(jax.jit, static_argnames=("num",))
def _select_chunk(features, valid, num):
    return jax.vmap(select_class_exemplars, in_axes=(0, 0, None))(features, valid, num)


def _next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def build_memory_bank(features, labels: np.ndarray, classes: np.ndarray, per_class: int, *,
                      max_chunk_bytes: int = 256 << 20) -> np.ndarray:
    """Builds the whole exemplar bank M: `per_class` dataset rows for each class.

    Args:
      features: [N, d] phase-I features (numpy or a jax array, possibly sharded).
      labels: [N] class label of each row, in the same id space as `classes`.
      classes: [C1] the classes to build the bank for.
      per_class: K.
      max_chunk_bytes: bound on the padded feature block processed at once.

    Returns:
      int64 [len(classes), per_class]: row indices into `features` (dataset
      indices), -1 where a class has fewer than K rows.

    Classes are sorted by size and processed in chunks; each chunk's rows are
    padded to a power of two, and the number of classes in a chunk is a power
    of two sized to stay under `max_chunk_bytes`, so that a handful of shapes is
    compiled and memory stays bounded at iNaturalist scale (8,142 classes, up to
    1,000 images each, d = 2048).
    """
    if per_class < 1:
        raise ValueError(f"memory.per_class must be >= 1, got {per_class}")
    labels = np.asarray(labels)
    classes = np.asarray(classes)
    feature_dim = features.shape[1]
    itemsize = 4
    rows_of = [np.flatnonzero(labels == c) for c in classes]
    order = np.argsort([-len(r) for r in rows_of], kind="stable")
    bank = np.full((len(classes), per_class), -1, np.int64)
    start = 0
    while start < len(order):
        length = _next_pow2(len(rows_of[order[start]]))
        fit = max(1, max_chunk_bytes // (length * feature_dim * itemsize))
        # A power of two that fits the budget, but no larger than the classes left need.
        chunk = min(1 << int(math.log2(fit)), _next_pow2(len(order) - start))
        members = order[start:start + chunk]
        index = np.zeros((chunk, length), np.int64)
        valid = np.zeros((chunk, length), bool)
        for slot, m in enumerate(members):
            index[slot, :len(rows_of[m])] = rows_of[m]
            valid[slot, :len(rows_of[m])] = True
        if isinstance(features, np.ndarray):  # Gather on the host, send one block.
            block = features[index]
        else:
            block = jnp.take(features, jnp.asarray(index), axis=0)
        local = np.asarray(_select_chunk(block, jnp.asarray(valid), per_class))
        for slot, m in enumerate(members):
            picked = local[slot]
            bank[m] = np.where(picked >= 0, index[slot, np.maximum(picked, 0)], -1)
        start += chunk
    return bank


def flatten_bank(bank: np.ndarray) -> np.ndarray:
    """The bank's dataset indices as one sorted 1-D array, without the -1 padding."""
    return np.sort(bank[bank >= 0])
