"""ResNet-10/18/50/101/152 for 224x224 images (ImageNet-LT, Places-LT, iNaturalist).

Torchvision's v1.5 layout (stride in the 3x3 convolution of a bottleneck) and
its module names (`layer3_1/conv2` is torchvision's `layer3.1.conv2`), so that
converted torchvision weights load by name.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _norm(train, dtype, name, zero_init=False):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
                        name=name)


class BasicBlock(nn.Module):
    channels: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    conv: Any = None  # lax.conv_general_dilated's stand-in for nn.Conv (models/conv.py); None: lax's.
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.Conv(self.channels, (3, 3), (self.stride,) * 2, padding=1, use_bias=False, conv_general_dilated=self.conv,
                    kernel_init=conv_init, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(_norm(train, self.dtype, "bn1")(y))
        y = nn.Conv(self.channels, (3, 3), padding=1, use_bias=False, conv_general_dilated=self.conv, kernel_init=conv_init,
                    dtype=self.dtype, name="conv2")(y)
        y = _norm(train, self.dtype, "bn2")(y)
        return nn.relu(y + _shortcut(self, x, self.channels, train))


class Bottleneck(nn.Module):
    channels: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    conv: Any = None
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.Conv(self.channels, (1, 1), use_bias=False, conv_general_dilated=self.conv, kernel_init=conv_init, dtype=self.dtype,
                    name="conv1")(x)
        y = nn.relu(_norm(train, self.dtype, "bn1")(y))
        y = nn.Conv(self.channels, (3, 3), (self.stride,) * 2, padding=1, use_bias=False, conv_general_dilated=self.conv,
                    kernel_init=conv_init, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(_norm(train, self.dtype, "bn2")(y))
        y = nn.Conv(self.channels * 4, (1, 1), use_bias=False, conv_general_dilated=self.conv, kernel_init=conv_init,
                    dtype=self.dtype, name="conv3")(y)
        y = _norm(train, self.dtype, "bn3")(y)
        return nn.relu(y + _shortcut(self, x, self.channels * 4, train))


def _shortcut(block: nn.Module, x, out_channels: int, train: bool):
    if block.stride == 1 and x.shape[-1] == out_channels:
        return x
    # Projection shortcut (torchvision's `downsample.0` conv and `downsample.1` BN).
    x = nn.Conv(out_channels, (1, 1), (block.stride,) * 2, use_bias=False, kernel_init=conv_init,
                conv_general_dilated=block.conv, dtype=block.dtype, name="downsample_conv")(x)
    return _norm(train, block.dtype, "downsample_bn")(x)


class ResNet(nn.Module):
    """Backbone g(x; W_r): returns the pooled feature z (512 or 2048 wide)."""
    stage_sizes: Sequence[int]
    block: type = Bottleneck
    dtype: jnp.dtype = jnp.float32
    conv: Any = None  # lax.conv_general_dilated's stand-in for every nn.Conv (models/conv.py).

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.astype(self.dtype)
        x = nn.Conv(64, (7, 7), (2, 2), padding=3, use_bias=False, conv_general_dilated=self.conv, kernel_init=conv_init,
                    dtype=self.dtype, name="conv1")(x)
        x = nn.relu(_norm(train, self.dtype, "bn1")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for b in range(num_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                x = self.block(64 * 2 ** stage, stride, self.dtype, self.conv, name=f"layer{stage + 1}_{b}")(x, train)
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


STAGES = {
    "resnet10": ((1, 1, 1, 1), BasicBlock),
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
    "resnet101": ((3, 4, 23, 3), Bottleneck),
    "resnet152": ((3, 8, 36, 3), Bottleneck),
}
