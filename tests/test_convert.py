"""torchvision -> Flax conversion: the converted weights give PyTorch's pooled features."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from asyncjax import convert, pretrained
from asyncjax.archive import flatten
from asyncjax.models import make_backbone


# A ResNet with torchvision's module names and layout (v1.5: stride in the 3x3 conv).
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, blocks in enumerate(layers):
            planes = 64 * 2 ** stage
            modules = []
            for b in range(blocks):
                modules.append(block(inplanes, planes, 2 if stage > 0 and b == 0 else 1))
                inplanes = planes * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*modules))
        self.fc = nn.Linear(inplanes, num_classes)

    def features(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for stage in range(4):
            x = getattr(self, f"layer{stage + 1}")(x)
        return x.mean(dim=(2, 3))


def _randomise(model, seed):
    """Random weights and BatchNorm statistics, so that a swapped mean/var or a wrong transpose shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
                tensor.copy_(0.5 + 0.5 * torch.rand(tensor.shape, generator=generator))
            else:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("name,block,layers", [("resnet10", BasicBlock, (1, 1, 1, 1)),
                                               ("resnet50", Bottleneck, (3, 4, 6, 3))])
def test_converted_weights_match_pytorch_features(tmp_path, name, block, layers):
    torch_model = _randomise(TorchResNet(block, layers), seed=0)
    path = tmp_path / "weights.pth"
    torch.save(torch_model.state_dict(), path)
    flat = convert.torchvision_to_flat(convert.load_torch_state_dict(str(path)))
    assert not any("fc" in k for k in flat)
    np.savez(tmp_path / "weights.npz", **flat)

    backbone = make_backbone(name)
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    variables = backbone.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    params, batch_stats = pretrained.load_backbone({"backbone": variables["params"]},
                                                   {"backbone": variables["batch_stats"]},
                                                   str(tmp_path / "weights.npz"))
    ours = backbone.apply({"params": params["backbone"], "batch_stats": batch_stats["backbone"]},
                          images, train=False)
    with torch.no_grad():
        theirs = torch_model.features(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=2e-4, atol=2e-4 * np.abs(theirs).max())


def test_archive_of_another_depth_is_refused(tmp_path):
    variables = make_backbone("resnet10").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    np.savez(tmp_path / "r10.npz", **flatten({"params": {"backbone": variables["params"]},
                                              "batch_stats": {"backbone": variables["batch_stats"]}}))
    other = make_backbone("resnet18").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    with pytest.raises(ValueError, match=r"does not fit this backbone; missing \[.*layer1_1"):
        pretrained.load_backbone({"backbone": other["params"]}, {"backbone": other["batch_stats"]},
                                 str(tmp_path / "r10.npz"))
    with pytest.raises(ValueError, match="no 'params/backbone/...' arrays"):
        np.savez(tmp_path / "empty.npz", x=np.zeros(1))
        pretrained.load_backbone({"backbone": other["params"]}, {"backbone": other["batch_stats"]},
                                 str(tmp_path / "empty.npz"))


def test_not_a_resnet_is_refused():
    with pytest.raises(ValueError, match="unexpected tensor"):
        convert.torchvision_to_flat({"conv1.weight": np.zeros((4, 3, 3, 3)), "head.proj": np.zeros((3, 3))})


def test_command_line_writes_the_archive(tmp_path):
    """`python -m asyncjax.convert` end to end (a tiny torchvision-named ResNet-10)."""
    import subprocess
    import sys

    from tests import helpers

    torch.save(_randomise(TorchResNet(BasicBlock, (1, 1, 1, 1)), seed=1).state_dict(), tmp_path / "r10.pth")
    result = subprocess.run([sys.executable, "-m", "asyncjax.convert", "--from=torchvision",
                             f"--input={tmp_path / 'r10.pth'}", f"--output={tmp_path / 'r10.npz'}"],
                            cwd=helpers.REPO, env=helpers.cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(tmp_path / "r10.npz", allow_pickle=False) as archive:
        assert archive["params/backbone/layer2_0/downsample_conv/kernel"].shape == (1, 1, 64, 128)
        assert "batch_stats/backbone/bn1/var" in archive.files
