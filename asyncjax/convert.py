"""Converts torchvision ResNet weights to the export format, for `--config.init_from`.

    python -m asyncjax.convert --from=torchvision --input=resnet152.pth --output=resnet152.npz

torchvision's names map one to one onto `asyncjax.models.resnet` (which keeps
them): `layer3.1.conv2.weight` -> `params/backbone/layer3_1/conv2/kernel`
(OIHW -> HWIO), BatchNorm weight/bias -> scale/bias, running mean/var ->
`batch_stats/.../mean|var`, `downsample.0|1` -> `downsample_conv|downsample_bn`.
The ImageNet classifier (`fc.*`) is dropped. Reading a `.pth` needs PyTorch
(`pip install torch`); it is read with `torch.load(weights_only=True)`, which
refuses anything but tensors.
"""
from __future__ import annotations

import re

import numpy as np
from absl import flags

from asyncjax import files


def define_flags():
    """The command line's flags; defined only when run as a program, so that importing the
    conversion functions (tests, notebooks) never clashes with another tool's flags."""
    flags.DEFINE_enum("from", "torchvision", ["torchvision"], "Source of the weights.")
    flags.DEFINE_string("input", None, "torchvision state dict (.pth/.pt).")
    flags.DEFINE_string("output", None, "Output .npz (export format).")
    flags.mark_flags_as_required(["input", "output"])

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def _module_path(name: str) -> str:
    """'layer3.1.downsample.0' -> 'layer3_1/downsample_conv'; 'bn1' -> 'bn1'."""
    name = re.sub(r"^layer(\d+)\.(\d+)\.", r"layer\1_\2/", name)
    return name.replace("downsample.0", "downsample_conv").replace("downsample.1", "downsample_bn")


def torchvision_to_flat(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A torchvision ResNet state dict (numpy values) -> {'params/backbone/...': array}."""
    flat = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if module == "fc" or leaf == "num_batches_tracked":
            continue
        value = np.asarray(value, np.float32)
        path = _module_path(module)
        if value.ndim == 4:  # Convolution: OIHW -> HWIO.
            if leaf != "weight":
                raise ValueError(f"unexpected convolution tensor {key}")
            flat[f"params/backbone/{path}/kernel"] = value.transpose(2, 3, 1, 0)
        elif leaf in _BN:
            collection, name = _BN[leaf]
            flat[f"{collection}/backbone/{path}/{name}"] = value
        else:
            raise ValueError(f"unexpected tensor {key} with shape {value.shape}: not a torchvision ResNet?")
    if "params/backbone/conv1/kernel" not in flat:
        raise ValueError("no 'conv1.weight' in the state dict: not a torchvision ResNet")
    return flat


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise SystemExit("reading a .pth needs PyTorch: pip install torch") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)  # Some checkpoints nest it.
    return {k.removeprefix("module."): v.numpy() for k, v in state.items()}


def main(argv):
    del argv
    output = flags.FLAGS.output
    flat = torchvision_to_flat(load_torch_state_dict(flags.FLAGS.input))
    files.save_npz(output, **flat)
    print(f"wrote {len(flat)} arrays to {output}")


if __name__ == "__main__":
    from asyncjax import cli
    define_flags()
    cli.run(main, __doc__)
