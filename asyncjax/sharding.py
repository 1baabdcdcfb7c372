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
    that is not here (asyncjax.compile_check compiles for it without running). checks.check_devices
    has refused a model axis that does not divide them."""
    count = jax.device_count() if devices is None else len(devices)
    return jax.make_mesh((count // model_axis_size, model_axis_size), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


def platform(mesh) -> str:
    """'cpu', 'gpu' or 'tpu': where the mesh's programs run (not necessarily this host's backend)."""
    return mesh.devices.flat[0].platform


def process_count(mesh) -> int:
    """Processes (hosts) the mesh spans: jax.process_count() for this job's own mesh."""
    return len({d.process_index for d in mesh.devices.flat})


def padded_classes(num_classes: int, mesh) -> int | None:
    """The classifier's kernel width when `num_classes` does not divide the `model` axis (the next
    multiple of it; heads.py pads with zero columns), else None: iNaturalist's 8,142 classes over
    8 chips become 8,144 columns, so that the class axis can be sharded at all."""
    model = mesh.shape["model"]
    return -(-num_classes // model) * model if num_classes % model else None


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


def abstract(tree, shardings):
    """ShapeDtypeStructs with shardings: what a program is compiled for, or a checkpoint restored to."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def global_batch(local_batch: dict, mesh, batch_size: int) -> dict:
    """Assembles the global batch of `batch_size` rows from this process's rows of it
    (`process_slice`: all of them on a single host); `jax.make_array_from_process_local_data`
    places them on the process's devices along the `data` axis.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (batch_size, *np.shape(v)[1:]))
            for k, v in local_batch.items()}


def process_rows(batch_size: int, mesh) -> slice:
    """The rows of a global batch that a process loads: the blocks of the `data` positions its
    devices hold. Every host computes the same global batch from (seed, epoch, step) and keeps
    these rows. Processes whose devices differ only along `model` (a model axis spanning hosts:
    iNaturalist's head over 8 chips of 4-chip hosts) hold, and so load, the same rows."""
    data = data_size(mesh)
    if batch_size % data:
        raise ValueError(f"global batch {batch_size} is not divisible by the {data} data-parallel devices")
    me = jax.process_index()
    held = sorted({i for i in range(data) for d in np.asarray(mesh.devices)[i].flat if d.process_index == me})
    if not held or held != list(range(held[0], held[-1] + 1)):
        raise ValueError(f"process {me} holds data positions {held} of the mesh: not one contiguous block")
    per = batch_size // data
    return slice(held[0] * per, (held[-1] + 1) * per)


def process_slice(global_positions: np.ndarray, mesh) -> np.ndarray:
    """This process's rows (`process_rows`) of a global batch given as dataset positions."""
    return np.asarray(global_positions)[process_rows(len(global_positions), mesh)]
