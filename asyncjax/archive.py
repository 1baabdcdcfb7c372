"""The numpy archive format of exported weights: one array per leaf, names '/'-joined
(`params/backbone/conv1/kernel`, `batch_stats/backbone/bn1/mean`). Written by
`asyncjax.export` and `asyncjax.convert`, read by `asyncjax.pretrained`."""
from __future__ import annotations

import numpy as np


def unflatten(arrays: dict, prefixes=("params/", "batch_stats/")) -> dict:
    """The nested {'params': ..., 'batch_stats': ...} variables of a flat archive (other entries
    such as `class_ids` and `config` are left out)."""
    tree: dict = {}
    for name, value in arrays.items():
        if name.startswith(tuple(prefixes)):
            node = tree
            *parents, leaf = name.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return tree


def flatten(tree, prefix="") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = np.asarray(value)
    return flat
