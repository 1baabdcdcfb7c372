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
GROUP_BYTES = 4 << 20  # Classes vectorised together: about what stays in a core's share of cache.


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
    prototype = (valid.astype(jnp.float32) @ features) / jnp.maximum(num_valid, 1)
    # s(x, F_j[i]) = (F_j[i] . x / ||x||) / ||F_j[i]||: dividing by the row norms afterwards
    # saves writing a normalised copy of the class's features (each pass over them counts).
    inverse_norms = 1.0 / jnp.maximum(jnp.linalg.norm(features, axis=-1), _EPS)
    similarity = lambda x: (features @ _normalize(x)) * inverse_norms
    # s(c_j, F_j[i]) for every row; the softmax of Eq. 3 reads it at the selected rows.
    sim_to_prototype = similarity(prototype)

    def body(k, carry):
        selected, chosen = carry
        # Eq. 3-4: z_{k+1} = sum_i p_i m_i over the rows chosen so far, read from the
        # K selected rows only (a K x d gather, not a pass over the class's n rows).
        picked = selected >= 0
        rows = jnp.maximum(selected, 0)
        logits = jnp.where(picked, sim_to_prototype[rows], -jnp.inf)
        weights = jnp.where(picked, jax.nn.softmax(jnp.where(picked.any(), logits, 0.0)), 0.0)
        state = weights @ features[rows]
        # Eq. 5 uses c_j + Delta = 2 c_j - z_{k+1}; Eq. 2 (k = 0) uses c_j itself.
        target = jnp.where(k == 0, prototype, 2.0 * prototype - state)
        scores = similarity(target)
        candidates = valid & ~chosen
        best = jnp.argmax(jnp.where(candidates, scores, -jnp.inf))
        found = candidates.any()
        selected = selected.at[k].set(jnp.where(found, best, -1).astype(jnp.int32))
        chosen = chosen.at[best].set(chosen[best] | found)
        return selected, chosen

    init = (jnp.full((num,), -1, jnp.int32), jnp.zeros((n,), bool))
    selected, _ = jax.lax.fori_loop(0, num, body, init)
    return selected


@functools.partial(jax.jit, static_argnames=("num", "group"))
def select_chunk(features, valid, num, group):
    """K exemplars for each of a chunk's classes: features [chunk, length, d], valid [chunk, length]
    -> int32 [chunk, num] row indices into each class's block (see select_class_exemplars)."""
    # Groups of `group` classes one after another (lax.map), each group vectorised
    # (vmap): a group's block is sized to stay in cache through its K passes, instead
    # of the whole chunk streaming from memory K times (all-vmap), while small classes
    # still share each loop step (all-map pays a dispatch per class and step).
    chunk, length, dim = features.shape
    select = jax.vmap(select_class_exemplars, in_axes=(0, 0, None))
    picked = jax.lax.map(lambda block: select(block[0], block[1], num),
                         (features.reshape(chunk // group, group, length, dim),
                          valid.reshape(chunk // group, group, length)))
    return picked.reshape(chunk, num)


def _aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + size].view(dtype).reshape(shape)


def _next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def _padded_length(x: int) -> int:
    """The rows a class of x rows is padded to: a power of two or three quarters of one
    (..., 48, 64, 96, 128, ...): about half the padding of powers of two alone, for up
    to twice as many compiled shapes (iNaturalist scale: 7 instead of 5)."""
    power = _next_pow2(x)
    return 3 * power // 4 if power >= 8 and x <= 3 * power // 4 else power


def chunk_shape(largest: int, classes_left: int, feature_dim: int, max_chunk_bytes: int,
                itemsize: int = 4) -> tuple[int, int, int]:
    """(classes, padded rows per class, classes per group) of the chunk of build_memory_bank that
    starts with a class of `largest` rows, `classes_left` classes still to do: select_chunk's shapes."""
    length = _padded_length(largest)
    block = length * feature_dim * itemsize
    # A power of two that fits the budget, but no larger than the classes left need.
    chunk = min(1 << int(math.log2(max(1, max_chunk_bytes // block))), _next_pow2(classes_left))
    group = min(chunk, _next_pow2(max(1, GROUP_BYTES // block)))
    return chunk, length, group


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
    padded to `_padded_length` of its largest class, and the number of classes in a chunk is a power
    of two sized to stay under `max_chunk_bytes`, so that a handful of shapes is
    compiled and memory stays bounded at iNaturalist scale (8,142 classes, up to
    1,000 images each, d = 2048).
    """
    if per_class < 1:
        raise ValueError(f"memory.per_class must be >= 1, got {per_class}")
    labels = np.asarray(labels)
    classes = np.asarray(classes)
    feature_dim = features.shape[1]
    # Rows of each class from one sort (a comparison per class would cost C x N).
    by_label = np.argsort(labels, kind="stable")
    sorted_labels = labels[by_label]
    lows, highs = np.searchsorted(sorted_labels, classes, "left"), np.searchsorted(sorted_labels, classes, "right")
    rows_of = [by_label[low:high] for low, high in zip(lows, highs)]
    order = np.argsort([-len(r) for r in rows_of], kind="stable")
    bank = np.full((len(classes), per_class), -1, np.int64)
    start, buffer = 0, None
    while start < len(order):
        chunk, length, group = chunk_shape(len(rows_of[order[start]]), len(order) - start, feature_dim,
                                           max_chunk_bytes)
        members = order[start:start + chunk]
        index = np.zeros((chunk, length), np.int64)
        valid = np.zeros((chunk, length), bool)
        for slot, m in enumerate(members):
            index[slot, :len(rows_of[m])] = rows_of[m]
            valid[slot, :len(rows_of[m])] = True
        if isinstance(features, np.ndarray):
            # Gather on the host into a 64-byte-aligned buffer, which the CPU backend takes
            # without a copy (may_alias); an unaligned one costs a second copy of the block.
            # (device_put leaves it uncommitted, so it also runs inside a multi-process mesh.)
            # One buffer for all chunks: fresh pages would each fault on first touch.
            size = chunk * length * feature_dim
            if buffer is None or buffer.size < size:
                buffer = _aligned_empty((size,), features.dtype)
            block = buffer[:size].reshape(chunk, length, feature_dim)
            # mode="clip": the default "raise" writes through a temporary buffer (numpy's
            # documented behaviour with out=), which made this gather 3-6x slower.
            np.take(features, index, axis=0, out=block, mode="clip")
            block = jax.device_put(block, may_alias=True) if jax.default_backend() == "cpu" else block
        else:
            block = jnp.take(features, jnp.asarray(index), axis=0)
        local = np.asarray(select_chunk(block, jnp.asarray(valid), per_class, group))
        for slot, m in enumerate(members):
            picked = local[slot]
            bank[m] = np.where(picked >= 0, index[slot, np.maximum(picked, 0)], -1)
        start += chunk
    return bank


def flatten_bank(bank: np.ndarray) -> np.ndarray:
    """The bank's dataset indices as one sorted 1-D array, without the -1 padding."""
    return np.sort(bank[bank >= 0])
