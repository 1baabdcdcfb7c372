"""Models f(x) = W_c^T g(x; W_r): a backbone g and a classifier head W_c.

`Classifier.__call__` returns a dict with the pooled `features` z (before the
head), the `logits`, and, for the cosine head, the `cosine` scores.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from asyncjax.models.heads import CLASS_AXIS, CosineClassifier, LinearClassifier
from asyncjax.models.resnet import STAGES, ResNet
from asyncjax.models.resnet_cifar import CifarResNet

BACKBONES = ("resnet8", "resnet32", *STAGES)
HEADS = ("cosine", "linear")

__all__ = ["BACKBONES", "CLASS_AXIS", "Classifier", "CosineClassifier", "HEADS", "LinearClassifier",
           "make_backbone", "make_model"]


def make_backbone(name: str, dtype=jnp.float32, conv=None) -> nn.Module:
    """`conv`: a stand-in for lax.conv_general_dilated in every convolution (conv.conv_for)."""
    if name == "resnet32":
        return CifarResNet(blocks_per_stage=5, dtype=dtype, conv=conv)
    if name == "resnet8":  # Tiny CIFAR variant for smoke runs and tests.
        return CifarResNet(blocks_per_stage=1, dtype=dtype, conv=conv)
    if name in STAGES:
        stages, block = STAGES[name]
        return ResNet(stage_sizes=stages, block=block, dtype=dtype, conv=conv)
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


class Classifier(nn.Module):
    """f(x; [W_r; W_c]) with the backbone under `backbone` and the head under `head`."""
    backbone: nn.Module
    head: nn.Module

    def __call__(self, images, train: bool):
        features = self.backbone(images, train)
        return {"features": features, **self.head(features)}


def make_model(backbone: str, head: str, num_classes: int, *, dtype=jnp.float32,
               cosine_scale_init: float = 16.0, class_scale: bool = False, conv=None,
               num_padded: int | None = None) -> Classifier:
    """A Classifier with `num_classes` outputs (C1 in phase I, C in phase II).
    `class_scale`: LWS's per-class logit scales on a linear head. `num_padded`: the head's
    kernel width when it must divide the mesh's model axis (heads.py)."""
    if head == "cosine":
        head_module = CosineClassifier(num_classes, scale_init=cosine_scale_init, dtype=dtype, num_padded=num_padded)
    elif head == "linear":
        head_module = LinearClassifier(num_classes, dtype=dtype, class_scale=class_scale, num_padded=num_padded)
    else:
        raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")
    return Classifier(backbone=make_backbone(backbone, dtype, conv), head=head_module)
