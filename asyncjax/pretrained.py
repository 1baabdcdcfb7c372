"""Backbone weights from a numpy archive (`--config.init_from=PATH.npz`).

The archive uses the export format ('/'-joined names, `asyncjax.export`): one
written by `python -m asyncjax.export`, or one converted from torchvision by
`python -m asyncjax.convert`. Only `params/backbone/...` and
`batch_stats/backbone/...` are read: the classifier is the phase's own (C1 or C
outputs), so an ImageNet head never leaks into a long-tailed one.
"""
from __future__ import annotations

import numpy as np

from asyncjax.archive import flatten

PREFIXES = ("params/backbone/", "batch_stats/backbone/")


def backbone_arrays(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files if k.startswith(PREFIXES)}
    except FileNotFoundError as e:
        raise FileNotFoundError(f"init_from: {path} does not exist") from e
    if not arrays:
        raise ValueError(f"init_from: {path} holds no 'params/backbone/...' arrays; expected an archive "
                         "from `python -m asyncjax.export` or `python -m asyncjax.convert`")
    return arrays


def check_fits(path: str, backbone, image_shape: tuple) -> None:
    """Refuses an archive that does not fit `backbone` (flax module), from shapes alone: no
    weights are initialised, so the trainer can check before it writes anything."""
    import jax
    import jax.numpy as jnp
    from flax.traverse_util import flatten_dict
    shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False))
    _check(backbone_arrays(path), {f"{kind}/backbone/" + "/".join(k): v for kind in ("params", "batch_stats")
                                   for k, v in flatten_dict(shapes[kind]).items()}, path)


def _check(arrays: dict, current: dict, path: str) -> None:
    missing = sorted(set(current) - set(arrays))
    unexpected = sorted(set(arrays) - set(current))
    wrong = sorted(f"{k}: {arrays[k].shape} vs model {tuple(current[k].shape)}" for k in set(current) & set(arrays)
                   if tuple(arrays[k].shape) != tuple(current[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"init_from: {path} does not fit this backbone; missing {missing[:5]} "
                         f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
                         f"shape mismatches {wrong[:5]} ({len(wrong)})")


def load_backbone(params: dict, batch_stats: dict, path: str) -> tuple[dict, dict]:
    """(params, batch_stats) with the backbone replaced by the archive's; names and shapes
    must match exactly (a different depth or width is refused with the differences)."""
    arrays = backbone_arrays(path)
    current = {k: v for k, v in flatten({"params": params, "batch_stats": batch_stats}).items()
               if k.startswith(PREFIXES)}
    _check(arrays, current, path)

    def replace(tree, prefix):
        return {key: replace(value, f"{prefix}/{key}") if isinstance(value, dict)
                else np.asarray(arrays[f"{prefix}/{key}"], np.float32) if f"{prefix}/{key}" in arrays else value
                for key, value in tree.items()}

    return replace(params, "params"), replace(batch_stats, "batch_stats")
