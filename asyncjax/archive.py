"""The numpy archive format of exported weights: one array per leaf, names '/'-joined
(`params/backbone/conv1/kernel`, `batch_stats/backbone/bn1/mean`). Written by
`asyncjax.export` and `asyncjax.convert`, read by `asyncjax.pretrained`."""
from __future__ import annotations

import numpy as np


def flatten(tree, prefix="") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = np.asarray(value)
    return flat
