"""Device mesh and shardings.

Mesh axes: `data` (the batch is split over it; parameters are replicated) and
`model` (size 1 by default; > 1 shards the classifier's class axis, for very
large heads such as iNaturalist's 8,142 classes).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def make_mesh(model_axis_size: int = 1, devices=None) -> jax.sharding.Mesh:
    """The (data, model) mesh over `devices`: this job's (default), or those of a TPU topology
    that is not here (asyncjax.compile_check compiles for it without running)."""
    count = jax.device_count() if devices is None else len(devices)
    if model_axis_size < 1 or count % model_axis_size:
        raise ValueError(f"mesh.model={model_axis_size} does not divide the {count} devices")
    return jax.make_mesh((count // model_axis_size, model_axis_size), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


def platform(mesh) -> str:
    """'cpu', 'gpu' or 'tpu': where the mesh's programs run (not necessarily this host's backend)."""
    return mesh.devices.flat[0].platform


def process_count(mesh) -> int:
    """Processes (hosts) the mesh spans: jax.process_count() for this job's own mesh."""
    return len({d.process_index for d in mesh.devices.flat})


def data_size(mesh) -> int:
    return mesh.shape["data"]


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _leaf_spec(path, leaf, mesh) -> P:
    names = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    model = mesh.shape["model"]
    shape = getattr(leaf, "shape", ())
    # Classifier leaves (and their optimiser moments) keep classes on the last axis.
    if model > 1 and "head" in names and names[-1] in ("kernel", "bias") and shape and shape[-1] % model == 0:
        return P(*([None] * (len(shape) - 1)), "model")
    return P()


def state_shardings(abstract_tree, mesh):
    """NamedShardings for a pytree of parameters / train state (see module docstring)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, _leaf_spec(path, leaf, mesh)), abstract_tree)


def global_batch(local_batch: dict, mesh) -> dict:
    """Assembles the global batch from this process's slice of it.

    Each process passes the rows of the global batch that it loaded (all of
    them on a single host); `jax.make_array_from_process_local_data` places
    them on the process's devices along the `data` axis.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def process_slice(global_positions: np.ndarray) -> np.ndarray:
    """This process's contiguous share of a global batch (every host computes the
    same global batch from (seed, epoch, step), then keeps its own rows)."""
    n, count, index = len(global_positions), jax.process_count(), jax.process_index()
    if n % count:
        raise ValueError(f"global batch {n} is not divisible by the {count} processes")
    per = n // count
    return global_positions[index * per:(index + 1) * per]
