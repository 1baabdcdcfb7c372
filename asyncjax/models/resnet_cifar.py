"""ResNet-32 for 32x32 CIFAR images, as used by LDAM-DRW and the paper.

3 stages x 5 basic blocks with 16 / 32 / 64 channels; shortcuts of option A
(stride-2 subsampling and zero-padded channels, no parameters); about 0.46 M
parameters with a 100-class linear head. Kaiming-normal convolutions, as LDAM.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class CifarBasicBlock(nn.Module):
    channels: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    conv: Any = None  # lax.conv_general_dilated's stand-in for nn.Conv (models/conv.py); None: lax's.

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                         dtype=self.dtype, name=name)
        y = nn.Conv(self.channels, (3, 3), (self.stride, self.stride), padding=1, use_bias=False, conv_general_dilated=self.conv,
                    kernel_init=conv_init, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(norm("bn1")(y))
        y = nn.Conv(self.channels, (3, 3), padding=1, use_bias=False, conv_general_dilated=self.conv,
                    kernel_init=conv_init, dtype=self.dtype, name="conv2")(y)
        y = norm("bn2")(y)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.channels:
            # Option A: subsample, then pad the new channels with zeros on both sides.
            shortcut = x[:, ::self.stride, ::self.stride, :]
            extra = self.channels - x.shape[-1]
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return nn.relu(y + shortcut)


class CifarResNet(nn.Module):
    """Backbone g(x; W_r): returns the pooled feature z (d = 64 for ResNet-32)."""
    blocks_per_stage: int = 5
    widths: Sequence[int] = (16, 32, 64)
    dtype: jnp.dtype = jnp.float32
    conv: Any = None  # lax.conv_general_dilated's stand-in for every nn.Conv (models/conv.py).

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.astype(self.dtype)
        x = nn.Conv(self.widths[0], (3, 3), padding=1, use_bias=False, conv_general_dilated=self.conv, kernel_init=conv_init,
                    dtype=self.dtype, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, name="bn1")(x)
        x = nn.relu(x)
        for stage, width in enumerate(self.widths):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                x = CifarBasicBlock(width, stride, self.dtype, self.conv, name=f"stage{stage + 1}_block{block + 1}")(x, train)
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


