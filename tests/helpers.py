"""Helpers shared by the trainer tests: a tiny CIFAR-100 directory and the CLI."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

# Overrides that shrink a run to a few steps per phase on a ResNet-8 (all on the real code path).
TINY = ["--config.model.backbone=resnet8", "--config.data.max_count=20", "--config.data.imbalance=10",
        "--config.split.num_head_classes=60", "--config.memory.per_class=3",
        "--config.phase1.batch_size=16", "--config.phase2.batch_size=16",
        "--config.phase1.epochs=2", "--config.phase2.epochs=2",
        "--config.phase1.max_steps_per_epoch=3", "--config.phase2.max_steps_per_epoch=3",
        "--config.phase1.warmup_epochs=1", "--config.phase2.warmup_epochs=1",
        "--config.log_every_steps=1", "--config.eval_every_epochs=1", "--config.checkpoint_every_steps=2",
        # Validation: up to 2 images per class (196 here), not 20 (1,263): each look at it is then about a
        # sixth of the work, and a TINY run looks at it five times.
        "--config.data.val_per_class=2",
        # XLA's own weight gradient, not `auto`: each new shape would pay a timed trial of both forms
        # (about 10-25 s) in a fresh CI; the trial is tested on its own (test_speed_choice.py).
        "--config.model.conv_weight_grad=xla"]


def tiny_config(tiny_cifar, *overrides):
    """The smoke config shrunk by TINY over a tiny CIFAR directory, as a ConfigDict (in-process runs)."""
    from asyncjax import config_utils
    config = config_utils.load_config_file(str(REPO / "configs/cifar100_lt.py") + ":smoke=True")
    config_utils.apply_overrides(config, [f"--config.data.cifar100_dir={tiny_cifar}", *TINY, *overrides])
    return config


def write_tiny_cifar(directory, train_per_class=20, test_per_class=2, seed=0):
    """CIFAR-100 in the official binary layout with random images whose colour depends on the class."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(100, 3))
    for name, per_class in (("train.bin", train_per_class), ("test.bin", test_per_class)):
        labels = np.repeat(np.arange(100), per_class)
        rng.shuffle(labels)
        noise = rng.integers(-40, 40, size=(len(labels), 3, 32, 32))
        pixels = np.clip(colours[labels][:, :, None, None] + noise, 0, 255).astype(np.uint8)
        records = np.concatenate([(labels // 5)[:, None].astype(np.uint8), labels[:, None].astype(np.uint8),
                                  pixels.reshape(len(labels), -1)], axis=1)
        records.tofile(os.path.join(directory, name))
    return str(directory)


def cli_env(devices=1):
    env = dict(os.environ)
    # The device count replaces any count already in XLA_FLAGS; other flags (conftest's) are kept.
    kept = [flag for flag in env.get("XLA_FLAGS", "").split() if not flag.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def main_command(workdir, cifar_dir, *extra, config="configs/cifar100_lt.py:smoke=True"):
    return [sys.executable, "-m", "asyncjax.main", f"--config={config}", f"--workdir={workdir}",
            f"--config.data.cifar100_dir={cifar_dir}", *extra]


def run_main(workdir, cifar_dir, *extra, devices=1, timeout=600, **kwargs):
    return subprocess.run(main_command(workdir, cifar_dir, *extra, **kwargs), cwd=REPO, env=cli_env(devices),
                          capture_output=True, text=True, timeout=timeout)


def run_in_process(workdir, cifar_dir, *extra, config="configs/cifar100_lt.py:smoke=True"):
    """What `run_main` runs, in this process: the same config file and overrides, the trainer
    (`train.run`), the command line's exit codes (0; 2 and one `error:` line for bad input; 3 when
    interrupted), stdout and stderr captured; returned like subprocess.run's result. A subprocess
    pays JAX's start-up for each run (a TINY run took 6-9 s as a CLI, 2.5-4 s in-process here); tests of the command line
    itself (its parsing, signals, device counts, several processes) keep `run_main`."""
    import contextlib
    import io

    from asyncjax import cli, config_utils, train
    file, _, args = config.partition(":")

    def run():
        settings = config_utils.load_config_file(str(REPO / file) + (f":{args}" if args else ""))
        data = [f"--config.data.cifar100_dir={cifar_dir}"] if cifar_dir else []  # None: another dataset.
        config_utils.apply_overrides(settings, [*data, *extra])
        train.run(settings, str(workdir))

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.guarded(run)  # The command line's own exit-code scheme.
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess([str(workdir), *extra], code, out.getvalue(), err.getvalue())


def export(workdir, output, *extra, cli=False):
    """The workdir's export (asyncjax.export), read back. In-process by default: the export only
    reads a checkpoint, and a subprocess would pay JAX's start-up for it (about 8 s each, some 20
    times in the suite); `cli=True` runs the command line (a test of it)."""
    if cli:
        result = subprocess.run([sys.executable, "-m", "asyncjax.export", f"--workdir={workdir}",
                                 f"--output={output}", *extra], cwd=REPO, env=cli_env(), capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        from asyncjax import export as exporting
        phases = [e.split("=", 1)[1] for e in extra if e.startswith("--phase=")]
        assert len(phases) == len(extra) <= 1, extra  # --phase is the one flag besides the paths.
        exporting.export(str(workdir), str(output), phases[0] if phases else None)
    arrays = dict(np.load(output, allow_pickle=False))
    config = json.loads(str(arrays.pop("config")))  # The run's config travels as JSON text,
    assert config["dataset"]
    shape = arrays.pop("image_shape")                # and the training images' shape with it.
    assert len(shape) == 3 and shape[-1] == 3 and (config["dataset"] != "cifar100_lt" or shape.tolist() == [32, 32, 3])
    return arrays  # The numeric arrays: weights, statistics, class_ids, step (class_names for custom data).


def write_jpeg_folder(root, list_dir, list_name, num_images=12, num_classes=5, seed=0, sizes=((40, 56), (64, 48))):
    """A folder of small random JPEGs (class-coloured) and a `path label` split list over it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(list_dir, exist_ok=True)
    lines = []
    for i in range(num_images):
        label = i % num_classes
        height, width = sizes[i % len(sizes)]
        pixels = np.clip(rng.normal(40 * label, 30, size=(height, width, 3)), 0, 255).astype(np.uint8)
        relative = f"class_{label}/img_{i}.jpg"
        os.makedirs(os.path.join(root, f"class_{label}"), exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(root, relative), quality=90)
        lines.append(f"{relative} {label}")
    path = os.path.join(list_dir, list_name)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
