"""ImageNet-LT, Places-LT and iNaturalist 2018 configs: smoke runs through `python -m asyncjax.main`.

TFDS-backed ones run under tfds.testing.mock_data (tests/mock_main.py); Places-LT,
which has no TFDS builder, reads a generated split list over a folder of JPEGs and
starts from a backbone archive (--config.init_from). Images are cropped to 32 px
to keep the runs short; the code path is the 224-px one.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from asyncjax.archive import flatten
from asyncjax.models import make_backbone
from tests.helpers import REPO, cli_env, write_jpeg_folder

SMALL = ["--config.data.image_size=32", "--config.data.resize_size=36", "--config.memory.per_class=2",
         # XLA's weight gradient: `auto` would time both forms for this new shape (tested on its own
         # in test_speed_choice.py, and on the default path by the real-CIFAR smoke runs).
         "--config.model.conv_weight_grad=xla"]


def _run(args, timeout=600):
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def _check_results(workdir, num_classes):
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results["num_classes"] == num_classes and 0 <= results["overall"] <= 100
    assert len(results["per_class_accuracy"]) == num_classes
    return results


def test_imagenet_lt_and_inat_smoke_on_mock_tfds(tmp_path):
    output = _run(["-m", "tests.mock_main", "40", "--config=configs/imagenet_lt.py:smoke=True",
                   f"--workdir={tmp_path / 'imagenet'}", "--config.split.num_head_classes=12", *SMALL])
    assert "val (monitoring only)" in output and "test (monitoring only)" not in output
    _check_results(tmp_path / "imagenet", 1000)
    # iNat in-process, under the same mock (what tests.mock_main runs): no second JAX start-up.
    import tensorflow_datasets as tfds

    from tests.helpers import run_in_process
    with tfds.testing.mock_data(num_examples=40):
        result = run_in_process(tmp_path / "inat", None, "--config.method=plain",
                                "--config.split.num_head_classes=12", *SMALL, config="configs/inat.py:smoke=True")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    _check_results(tmp_path / "inat", 8142)


def test_places_lt_smoke_from_lists_and_pretrained_backbone(tmp_path):
    images, lists = tmp_path / "places365", tmp_path / "lists"
    for split, count in (("train", 48), ("val", 10), ("test", 10)):
        write_jpeg_folder(images, lists, f"Places_LT_{split}.txt", num_images=count, num_classes=8,
                          seed=len(split))
    variables = make_backbone("resnet10").init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)), train=False)
    arrays = flatten({"params": {"backbone": variables["params"]},
                      "batch_stats": {"backbone": variables["batch_stats"]}})
    np.savez(tmp_path / "init.npz", **arrays)
    workdir = tmp_path / "places"
    output = _run(["-m", "asyncjax.main", "--config=configs/places_lt.py:smoke=True", f"--workdir={workdir}",
                   "--config.data.source=list", f"--config.data.list_dir={lists}", f"--config.data.root={images}",
                   f"--config.init_from={tmp_path / 'init.npz'}", "--config.data.workers=1", "--config.split.num_head_classes=4",
                   # No monitoring look mid-phase (each pass over a split starts a grain worker, ~3 s
                   # here); the ImageNet-LT run above checks monitoring on the 224-px path.
                   "--config.eval_every_epochs=2", *SMALL])
    assert "backbone initialised from" in output
    _check_results(workdir, 365)
    # The run's phase-I checkpoint started from the archive: its first layer moved only by training.
    from tests.helpers import export
    trained = export(workdir, tmp_path / "phase1.npz", "--phase=phase1")
    fresh = flatten({"params": {"backbone": make_backbone("resnet10").init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]}})
    with np.load(tmp_path / "init.npz") as archive:
        kernels = [k for k in archive.files if k.startswith("params/backbone/") and k.endswith("kernel")]
        assert kernels
        moved = sum(np.linalg.norm(trained[k] - archive[k]) for k in kernels)
        other = sum(np.linalg.norm(trained[k] - fresh[k]) for k in kernels)
    # Eight smoke steps at the backbone's lr of 5e-4 move it by a tiny fraction of the distance
    # between two random initialisations; a run that ignored init_from would sit at that distance.
    assert moved < 0.05 * other, (moved, other)
