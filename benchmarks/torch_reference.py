"""PyTorch versions of the models and train steps that benchmarks/train_step.py times
against asyncjax's: ResNet-32 (CIFAR, option-A shortcuts) or ResNet-50 (224 px), a
cosine classifier with a learnable scale, SGD momentum 0.9 with weight decay 5e-4,
pad-4 crop + flip on the batch; phase II adds the frozen old backbone, L_intra and
L_dis exactly as asyncjax.losses computes them. Benchmark-only: `pip install torch==2.13.0`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CifarBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x
        if self.stride != 1 or self.extra:  # Option A: subsample and zero-pad channels.
            shortcut = F.pad(x[:, :, ::self.stride, ::self.stride],
                             (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(y + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, blocks=5, widths=(16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks):
                layers.append(CifarBlock(cin, width, 2 if stage > 0 and b == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.dim = widths[-1]

    def forward(self, x):
        return self.layers(F.relu(self.bn1(self.conv1(x)))).mean(dim=(2, 3))


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width * 4, 1, bias=False), nn.BatchNorm2d(width * 4)
        self.down = None
        if stride != 1 or cin != width * 4:
            self.down = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for stage, blocks in enumerate((3, 4, 6, 3)):
            for b in range(blocks):
                layers.append(Bottleneck(cin, 64 * 2 ** stage, 2 if stage > 0 and b == 0 else 1))
                cin = 64 * 2 ** stage * 4
        self.layers = nn.Sequential(*layers)
        self.dim = 2048

    def forward(self, x):
        return self.layers(self.stem(x)).mean(dim=(2, 3))


class CosineClassifier(nn.Module):
    def __init__(self, dim, num_classes, scale=16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, z):
        cosine = F.normalize(z, dim=1) @ F.normalize(self.weight, dim=1).T
        return self.scale * cosine, cosine


def make_backbone(model: str) -> nn.Module:
    return CifarResNet() if model == "resnet32" else ResNet50()


def augment(images: torch.Tensor) -> torch.Tensor:
    """Pad-4 random crop and horizontal flip of a float batch (CIFAR), as asyncjax.augment."""
    n, _, h, w = images.shape
    padded = F.pad(images, (4, 4, 4, 4))
    i = torch.randint(0, 9, (n,)).tolist()
    j = torch.randint(0, 9, (n,)).tolist()
    crops = torch.stack([padded[k, :, i[k]:i[k] + h, j[k]:j[k] + w] for k in range(n)])
    flip = torch.rand(n, device=images.device) < 0.5
    crops[flip] = crops[flip].flip(-1)
    return crops


def memory_retentive_loss(old, new, temperature=1.0):
    """L_dis (asyncjax.losses.memory_retentive_loss with its defaults), in torch."""
    old, new = F.normalize(old, dim=1), F.normalize(new, dim=1)
    attention = torch.softmax(old @ new.T / temperature, dim=1)
    sq = (old * old).sum(1)[:, None] + (new * new).sum(1)[None] - 2 * old @ new.T
    return (attention * sq.clamp_min(1e-12).sqrt()).sum(1).mean()


def intra_margin_loss(cosine, labels, is_memory, num_old, margin=0.5, top_k=2):
    positive = cosine.gather(1, labels[:, None])
    hardest = cosine[:, num_old:].topk(top_k, dim=1).values
    return (F.relu(margin - positive + hardest).sum(1) * is_memory).sum() / cosine.shape[0]


class TrainStep:
    """One SGD step of phase I (cross-entropy) or phase II (L_cls + L_intra + lambda L_dis)."""

    def __init__(self, model: str, num_classes: int, phase: int, mode: str, num_old: int = 0,
                 device: str = "cpu", amp: bool = False):
        self.device, self.amp = torch.device(device), amp
        self.backbone = make_backbone(model).to(self.device)
        self.head = CosineClassifier(self.backbone.dim, num_classes).to(self.device)
        self.phase, self.num_old, self.augment = phase, num_old, model == "resnet32"
        self.old = make_backbone(model).to(self.device).eval() if phase == 2 else None
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        self.channels_last = mode in ("channels_last", "compile")
        if self.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
            if self.old is not None:
                self.old = self.old.to(memory_format=torch.channels_last)
        self._step = torch.compile(self._train) if mode == "compile" else self._train

    def _train(self, images, labels, is_memory):
        # AMP: bfloat16 autocast for the network, the losses in float32.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            features = self.backbone(images)
            old_features = None
            if self.phase == 2:
                with torch.no_grad():
                    old_features = self.old(images)
        features = features.float()
        logits, cosine = self.head(features)
        loss = F.cross_entropy(logits, labels)
        if self.phase == 2:
            loss = loss + intra_margin_loss(cosine, labels, is_memory, self.num_old) \
                + 1.5 * memory_retentive_loss(old_features.float(), features)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def __call__(self, images_uint8: torch.Tensor, labels: torch.Tensor, is_memory: torch.Tensor):
        images_uint8, labels, is_memory = (t.to(self.device, non_blocking=True)
                                           for t in (images_uint8, labels, is_memory))
        images = images_uint8.float().div_(255)
        if self.augment:
            images = augment(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._step(images, labels, is_memory)
