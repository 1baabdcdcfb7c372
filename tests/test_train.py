"""The trainer through its real command line: configs, smoke runs, resume, devices, export."""
import json
import subprocess
import sys

import numpy as np
import pytest

from asyncjax import config_utils
from tests import helpers


def test_config_files_load_and_override():
    config = config_utils.load_config_file(str(helpers.REPO / "configs/cifar100_lt.py") + ":imbalance=200,smoke=True")
    assert config.data.imbalance == 200 and config.model.backbone == "resnet8"
    # smoke shrinks every phase, the classifier re-training of cRT / LWS too.
    assert all(config[p].epochs * config[p].max_steps_per_epoch <= 24 for p in ("phase1", "phase2", "classifier"))
    assert config.phase1.base_lr * config.phase1.batch_size / config.phase1.base_batch_size == 0.1
    full = config_utils.load_config_file(str(helpers.REPO / "configs/cifar100_lt.py"))
    assert full.phase1.epochs == 200 and full.model.backbone == "resnet32" and full.method == "async"
    for name in ("imagenet_lt", "places_lt", "inat"):
        other = config_utils.load_config_file(str(helpers.REPO / f"configs/{name}.py"))
        assert other.phase1.schedule in ("step", "cosine") and other.phase1.batch_size > 0
    with pytest.raises(ValueError, match="imbalance must be"):
        config_utils.load_config_file(str(helpers.REPO / "configs/cifar100_lt.py") + ":imbalance=30")


@pytest.mark.parametrize("override,message", [
    ("--config.phase1.epochz=3", "unknown config key 'phase1.epochz'; valid keys at phase1: .*'epochs'"),
    ("--config.nonsense=1", "unknown config key 'nonsense'"),
])
def test_unknown_override_is_rejected_with_valid_keys(tmp_path, override, message):
    result = helpers.run_main(tmp_path / "wd", "/nonexistent", override, timeout=120)
    assert result.returncode != 0
    import re
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert not (tmp_path / "wd").exists()


def test_override_changes_the_run(tmp_path, tiny_cifar):
    result = helpers.run_in_process(tmp_path / "wd", tiny_cifar, *helpers.TINY, "--config.method=plain",
                                    "--config.phase1.epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "wd" / "config.json").read_text())
    assert saved["phase1"]["epochs"] == 1 and saved["method"] == "plain"
    assert "joint epoch 1/1 step 3/3" in result.stdout


@pytest.mark.parametrize("method", ["async", "plain"])
def test_smoke_run_on_real_cifar100_lt(tmp_path, cifar100_dir, method):
    workdir = tmp_path / method
    # async: the README's smoke command as it is, a real process (the weight-gradient form timed,
    # `auto`); plain runs in-process (the same config and trainer, no second JAX start-up) and takes
    # XLA's form, so that a fresh machine pays the timed trial once, not in both.
    fixed = [] if method == "async" else ["--config.model.conv_weight_grad=xla"]
    run = helpers.run_main if method == "async" else helpers.run_in_process
    result = run(workdir, cifar100_dir, f"--config.method={method}", *fixed,
                 config="configs/cifar100_lt.py:imbalance=100,smoke=True")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    for key in ("overall", "many", "medium", "few"):
        assert 0.0 <= results[key] <= 100.0
    assert "re-split" in results["data_note"]
    # The validation split (99 classes: the largest keeps all its images) for the final model.
    assert results["val"]["classes"] == 99 and 0 <= results["val"]["overall"] <= 100
    assert "val (monitoring only)" in result.stdout and "test (monitoring only)" not in result.stdout
    if method == "async":
        assert results["phase1"]["val_head"]["classes"] == 69
        assert results["num_head_classes"] == 70 and results["memory_bank_size"] == 700
        assert set(results["phase1"]) == {"head", "all", "val_head"}
        assert set(results["wall_time_s"]) == {"phase1", "memory_bank", "phase2"}
        assert "phase2" in result.stdout and "memory bank: 700 exemplars" in result.stdout
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(np.isfinite(line["loss"]) for line in lines if "loss" in line)
    assert list((workdir / "tensorboard").iterdir())
    # Export: flat names, BatchNorm statistics, output rows -> original class ids.
    arrays = helpers.export(workdir, tmp_path / "model.npz", cli=method == "async")  # Its command line once.
    assert arrays["params/head/kernel"].shape == (64, 100)
    assert "batch_stats/backbone/bn1/mean" in arrays
    np.testing.assert_array_equal(arrays["class_ids"], results["rank_to_class"])
    if method == "async":
        phase1 = helpers.export(workdir, tmp_path / "phase1.npz", "--phase=phase1")
        assert phase1["params/head/kernel"].shape == (64, 70)
        # The hand-off kept phase I's rows; phase II then trained them further.
        assert phase1["class_ids"].tolist() == results["rank_to_class"][:70]
    # Re-running a finished workdir only reports.
    again = helpers.run_in_process(workdir, cifar100_dir, f"--config.method={method}", *fixed,
                                   config="configs/cifar100_lt.py:imbalance=100,smoke=True")
    assert again.returncode == 0 and "is complete" in again.stdout


def test_device_resident_scan_matches_step_by_step(tmp_path, tiny_cifar):
    """steps_per_dispatch > 1 (images on the devices, lax.scan) runs the trainer's same batches:
    the wiring (positions from the sampler, batch extras, checkpoints at dispatch boundaries).

    What is compared, and why not the final parameters: both runs start phase I from the same
    state, so the first logged block (steps 1-3, the mean over the block) differs only by the
    rounding of two float32 programs over two updates, about 1e-6 relative; a wrong batch moves it
    by percents. rtol 1e-4 holds on any CPU. After 12 steps, a memory bank chosen by argmax and
    training's amplification of rounding (1.1% in a few BatchNorm biases on an Intel Xeon), the
    parameters are no longer a wiring check; tests/test_resident_steps.py checks the numerics of
    many resident steps against float64 instead."""
    blocks = []
    for per_dispatch in (1, 3):
        workdir = tmp_path / f"dispatch{per_dispatch}"
        result = helpers.run_main(workdir, tiny_cifar, *helpers.TINY, "--config.log_every_steps=3",
                                  "--config.checkpoint_every_steps=3", f"--config.steps_per_dispatch={per_dispatch}",
                                  devices=2)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "phase2 epoch 2/2 step 6/6" in result.stdout
        assert ("resident on the devices" in result.stdout) == (per_dispatch > 1)
        lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        blocks.append({(line["phase"], line["step"]): line for line in lines if "loss" in line})
        assert (workdir / "results.json").exists()
    assert set(blocks[0]) == set(blocks[1])  # The same steps were logged: 3, 6 of each phase.
    # The loss only: accuracy is an argmax count, which one rounding can flip.
    np.testing.assert_allclose(blocks[1][("phase1", 3)]["loss"], blocks[0][("phase1", 3)]["loss"], rtol=1e-4)


def test_scanned_steps_unrolled_has_no_loop_and_matches_the_loop():
    """On CPU the trainer unrolls its scan (XLA:CPU convolutions in loops are slow, jax#12868):
    the unrolled program has no while loop and computes what the loop computes."""
    import jax
    import jax.numpy as jnp

    from asyncjax import sharding, steps

    def step(state, batch, rng):  # A toy step that depends on the order of the batches.
        w = 0.5 * state["w"] + jnp.mean(batch["images"].astype(jnp.float32)) + batch["labels"].sum()
        return {"w": w}, {"loss": w}

    mesh = sharding.make_mesh()
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (20, 4, 4, 3), dtype=np.uint8))
    labels = jnp.arange(20, dtype=jnp.int32)
    positions = jnp.asarray(np.random.default_rng(1).integers(0, 20, (5, 4)))
    args = ({"w": jnp.zeros(())}, images, labels, positions, jax.random.key(0))
    outputs, programs = [], []
    for unroll in (False, True):
        multi = jax.jit(steps.scanned_steps(step, None, sharding.batch_sharding(mesh), unroll=unroll))
        programs.append(multi.lower(*args).as_text())
        outputs.append(multi(*args))
    assert "while" in programs[0] and "while" not in programs[1]
    np.testing.assert_allclose(outputs[1][0]["w"], outputs[0][0]["w"], rtol=1e-6)
    np.testing.assert_allclose(outputs[1][1]["loss"], outputs[0][1]["loss"], rtol=1e-6)
    expected = 0.0
    for p in np.asarray(positions):  # The plain reference: five steps one after another.
        expected = 0.5 * expected + np.asarray(images)[p].astype(np.float32).mean() + p.sum()
    assert outputs[1][1]["loss"] > 0
    np.testing.assert_allclose(outputs[1][0]["w"], expected, rtol=1e-5)


# Every 8-device layout of the test below in one process (one JAX start-up, not three).
EIGHT_DEVICE_LAYOUTS = ("1:8", "2:8", "2:7")


@pytest.fixture(scope="module")
def eight_device_parity():
    result = subprocess.run([sys.executable, "-m", "tests.parity_step", *EIGHT_DEVICE_LAYOUTS], cwd=helpers.REPO,
                            env=helpers.cli_env(8), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(zip(EIGHT_DEVICE_LAYOUTS, json.loads(result.stdout.strip().splitlines()[-1])))


@pytest.mark.xdist_group("eight_devices")  # One worker, so that the module fixture runs once.
@pytest.mark.parametrize("num_classes", [8, 7])
def test_one_device_and_eight_devices_agree(num_classes, eight_device_parity):
    """Same phase-II steps on 1 device, 8 devices (data), and 4 x 2 devices (data x model). With 7
    classes the model axis of 2 takes a head padded to 8 columns: the same steps, padding left at zero."""
    import jax

    from tests import parity_step
    assert jax.device_count() == 1  # The one-device layout runs in this process, the tests' own.
    # With 7 classes only the padded 4 x 2 layout is new: 8 data devices alone are the 8-class case's.
    layouts = ((1, 1), (8, 1), (8, 2)) if num_classes == 8 else ((1, 1), (8, 2))
    outputs = [parity_step.parity(1, num_classes)]
    outputs += [eight_device_parity[f"{model_axis}:{num_classes}"] for _, model_axis in layouts[1:]]
    assert [o["devices"] for o in outputs] == [d for d, _ in layouts]
    assert "model" in outputs[-1]["kernel_spec"] and "model" not in outputs[-2 if num_classes == 8 else 0]["kernel_spec"]
    assert outputs[-1]["kernel_width"] == 8 and outputs[0]["kernel_width"] == num_classes
    assert outputs[-1]["padding_abs_sum"] == 0.0  # No gradient, no weight decay, no momentum reaches it.
    for other in outputs[1:]:
        for one, many in zip(outputs[0]["metrics"], other["metrics"]):
            for key in one:
                np.testing.assert_allclose(many[key], one[key], rtol=2e-4, atol=1e-5, err_msg=key)
        np.testing.assert_allclose(other["kernel_sum"], outputs[0]["kernel_sum"], rtol=1e-4)


@pytest.mark.parametrize("method", ["ldam_drw", "focal", "balanced_softmax", "logit_adjustment"])
def test_joint_baselines_run(tmp_path, tiny_cifar, method):
    result = helpers.run_in_process(tmp_path / "wd", tiny_cifar, *helpers.TINY, f"--config.method={method}",
                                    "--config.phase1.epochs=3")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "wd" / "results.json").read_text())
    assert results["method"] == method and 0 <= results["overall"] <= 100
    assert "joint epoch 3/3 step 9/9" in result.stdout
    exported = helpers.export(tmp_path / "wd", tmp_path / "model.npz")
    if method == "logit_adjustment":  # Its -tau log(prior) travels with the model, for predict.
        prior = np.asarray(results["train_counts"]) / np.sum(results["train_counts"])
        np.testing.assert_allclose(exported["logit_offset"], -1.0 * np.log(prior), rtol=1e-5)
    else:
        assert "logit_offset" not in exported


@pytest.mark.parametrize("method", ["crt", "lws", "tau_norm", "ncm"])
def test_decoupling_baselines_run(tmp_path, tiny_cifar, method):
    result = helpers.run_in_process(tmp_path / "wd", tiny_cifar, *helpers.TINY, f"--config.method={method}",
                                    "--config.model.head=linear", "--config.classifier.epochs=2",
                                    "--config.classifier.batch_size=16", "--config.classifier.max_steps_per_epoch=3")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "wd" / "results.json").read_text())
    assert results["method"] == method and 0 <= results["overall"] <= 100 and "joint" in results
    if method in ("crt", "lws"):
        assert "classifier epoch 2/2 step 6/6" in result.stdout
        joint = helpers.export(tmp_path / "wd", tmp_path / "joint.npz", "--phase=joint")
        final = helpers.export(tmp_path / "wd", tmp_path / "final.npz")
        frozen = ("params/backbone", "batch_stats") if method == "crt" else ("params/backbone", "batch_stats",
                                                                             "params/head/fc")
        for name in joint:  # Frozen parts stay bitwise; the trained part moved.
            if name.startswith(frozen):
                np.testing.assert_array_equal(final[name], joint[name], err_msg=name)
        if method == "crt":
            assert not np.allclose(final["params/head/fc/kernel"], joint["params/head/fc/kernel"])
        else:
            assert final["params/head/class_scale"].shape == (100,)
            assert not np.allclose(final["params/head/class_scale"], 1.0)


def test_gradient_distortion_is_logged(tmp_path, tiny_cifar):
    result = helpers.run_in_process(tmp_path / "wd", tiny_cifar, *helpers.TINY, "--config.method=plain",
                                    "--config.diagnostics.gradient_distortion=True", "--config.phase1.epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "grad_cos_head" in line]
    assert len(logged) == 3  # log_every_steps=1, 3 steps.
    for line in logged:
        assert -1 <= line["grad_cos_head"] <= 1 and -1 <= line["grad_cos_tail"] <= 1
        assert line["grad_norm"] <= line["grad_norm_head"] + line["grad_norm_tail"] + 1e-6
    refused = helpers.run_in_process(tmp_path / "wd2", tiny_cifar, *helpers.TINY,
                                     "--config.diagnostics.gradient_distortion=True")
    assert refused.returncode == 2 and "needs method=plain" in refused.stderr


def test_plots_from_runs(tmp_path, tiny_cifar):
    from asyncjax import plot
    plain = tmp_path / "plain"
    result = helpers.run_in_process(plain, tiny_cifar, *helpers.TINY, "--config.method=plain",
                                    "--config.diagnostics.gradient_distortion=True", "--config.phase1.epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    ours = tmp_path / "async"
    result = helpers.run_in_process(ours, tiny_cifar, *helpers.TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((ours / "results.json").read_text())
    assert len(results["per_class_accuracy"]) == 100 and len(results["train_counts"]) == 100
    paths = plot.make_plots(str(ours), baseline=str(plain))
    assert sorted(p.split("/")[-1] for p in paths) == ["curves.png", "per_class.png", "shots.png"]
    paths += plot.make_plots(str(plain), output=str(tmp_path / "plain_plots"))
    assert any(p.endswith("gradient_distortion.png") for p in paths)
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot.make_plots(str(tmp_path / "nothing"))


def test_compilation_cache_dir(tmp_path):
    """config.compilation_cache_dir turns on JAX's persistent cache (compiled steps land there);
    JAX_COMPILATION_CACHE_DIR in the environment wins; "" leaves it off."""
    script = (
        "import sys, jax, jax.numpy as jnp\n"
        "from asyncjax import train\n"
        "print(train.use_compilation_cache(sys.argv[1]))\n"
        "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n")
    env = helpers.cli_env()
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    cache = tmp_path / "cache"
    for argument, expected in ((str(cache), str(cache)), ("", "None")):
        result = subprocess.run([sys.executable, "-c", script, argument], cwd=helpers.REPO, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip().splitlines()[-1] == expected
    assert any(cache.iterdir())  # The executable was written.
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "from_env")
    result = subprocess.run([sys.executable, "-c", script, str(cache)], cwd=helpers.REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == str(tmp_path / "from_env")


def test_classifier_sharded_over_a_model_axis_that_the_classes_do_not_divide(tmp_path, tiny_cifar):
    """mesh.model=2 with C1 = 61 head classes and C = 100: phase I's head is padded to 62 columns
    and sharded, phase II extends the 61 real ones; the export holds the real columns only."""
    workdir = tmp_path / "wd"
    result = helpers.run_main(workdir, tiny_cifar, *[a for a in helpers.TINY if "num_head_classes" not in a],
                              "--config.split.num_head_classes=61", "--config.mesh.model=2", devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["num_head_classes"] == 61 and 0 <= results["overall"] <= 100
    phase1 = helpers.export(workdir, tmp_path / "phase1.npz", "--phase=phase1")
    final = helpers.export(workdir, tmp_path / "final.npz")
    assert phase1["params/head/kernel"].shape == (64, 61) and len(phase1["class_ids"]) == 61
    assert final["params/head/kernel"].shape == (64, 100) and len(final["class_ids"]) == 100
    # No NaN from the zero padding columns reached the trained head.
    assert np.all(np.isfinite(final["params/head/kernel"]))
