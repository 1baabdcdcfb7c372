"""asyncjax.compile_check: the trainer's programs compiled for a TPU topology that is not here.

libtpu compiles for any TPU topology on a CPU host. .ci/run installs it (the `tpu` extra); a
machine without it skips these tests, except in CI (CI=true), where that is a failure.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def libtpu():
    if importlib.util.find_spec("libtpu") is None:
        message = "libtpu is not installed (pip install -e \".[tpu]\")"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _check(*args, timeout=600, level="O0"):
    """compile_check in a subprocess. At JAX_OPTIMIZATION_LEVEL=O0 libtpu compiles the smoke config's
    programs in about a fifth of the time (30 s against 150 s on a 2-core Zen 4): what these tests
    check (every program compiles; FLOPs, aliasing and the report's arithmetic) is the same."""
    env = {**os.environ, "JAX_OPTIMIZATION_LEVEL": level}
    return subprocess.run([sys.executable, "-m", "asyncjax.compile_check", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


SMOKE = "--config=configs/cifar100_lt.py:smoke=True"


def test_smoke_config_compiles_every_program_for_a_v5e_2x2(libtpu):
    result = _check(SMOKE, "--topology=v5e:2x2")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["topology"], report["chips"], report["hosts"], report["chip"]) == ("v5e:2x2", 4, 1, "v5e")
    assert report["mesh"] == {"data": 4, "model": 1}
    assert (report["num_classes"], report["num_head"]) == (100, 70)  # CIFAR-100-LT IF100: n_j >= 20.
    assert report["hbm_bytes"] == 16 << 30
    assert report["optimization_level"] == "O0" and "JAX_OPTIMIZATION_LEVEL=O0" in result.stdout
    # A TPU program takes XLA's own convolution form, whatever the CPU it was compiled on prefers.
    assert report["conv_weight_grad"] == "xla"
    programs = report["programs"]
    assert list(programs) == ["phase1_step", "feature_pass", "exemplar_selection", "phase2_init", "phase2_step",
                              "evaluation", "validation_logits"]
    for name, p in programs.items():
        assert p["compile_s"] > 0 and p["argument_bytes"] > 0 and p["code_bytes"] > 0, name
        assert p["flops_per_chip"] > 0, name
        assert p["peak_bytes"] == (p["argument_bytes"] + p["output_bytes"] - p["alias_bytes"] + p["temp_bytes"]
                                   + p["code_bytes"]), name
        assert p["fits"] is (p["peak_bytes"] <= report["hbm_bytes"])
    # The train steps donate their state: XLA writes it in place (output aliased to input).
    assert programs["phase1_step"]["alias_bytes"] > 0 and programs["phase2_step"]["alias_bytes"] > 0
    # FLOPs are per chip: a train step's per image (forward + backward, about 3 forward passes) against
    # the evaluation's per image (one forward pass), each over its own per-chip batch (64 / 4 and 500 / 4).
    forward = programs["evaluation"]["flops_per_chip"] / (500 / 4)
    assert 2.0 < programs["phase1_step"]["flops_per_chip"] / (64 / 4) / forward < 4.0
    # Phase II also runs the frozen phase-I backbone forward on the same images: about one more.
    extra = (programs["phase2_step"]["flops_per_chip"] - programs["phase1_step"]["flops_per_chip"]) / (64 / 4)
    assert 0.7 < extra / forward < 1.5
    # The cosine classifier's kernel [d = 64, C] and its one SGD-momentum moment, float32, replicated.
    assert report["head_state_bytes_per_chip"] == {"phase1": 2 * 64 * 70 * 4, "phase2": 2 * 64 * 100 * 4}
    assert "| phase2_step |" in result.stdout


def test_classifier_sharded_over_the_model_axis_holds_less_head_per_chip(libtpu):
    from asyncjax import compile_check, config_utils
    sizes = {}
    for model_axis in (1, 2):
        config = config_utils.load_config_file(str(REPO / "configs" / "cifar100_lt.py") + ":smoke=True")
        config.mesh.model = model_axis
        _, devices = compile_check.topology_devices("v5e:2x2")
        _, programs, facts = compile_check.build_programs(config, devices)
        sizes[model_axis] = facts["head_state_bytes_per_chip"]
        assert facts["mesh"] == {"data": 4 // model_axis, "model": model_axis}
    # 70 and 100 classes split over 2 chips: each holds half of the kernel and its moment.
    assert sizes[2] == {k: v // 2 for k, v in sizes[1].items()}


@pytest.mark.parametrize("override,named", [
    ("--config.phase1.batch_size=6", ["phase1.batch_size=6", "4 data-parallel devices"]),
    ("--config.mesh.model=3", ["mesh.model=3", "4 devices"]),
])
def test_refuses_a_topology_that_does_not_divide_the_batch_or_the_model_axis(libtpu, override, named):
    result = _check(SMOKE, "--topology=v5e:2x2", override, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and all(n in result.stderr for n in named), result.stderr


@pytest.mark.parametrize("topology,named", [("v9x:2x2", "GENERATION"), ("v5e", "GENERATION:SHAPE")])
def test_refuses_an_unknown_topology(libtpu, topology, named):
    result = _check(SMOKE, f"--topology={topology}", timeout=120)
    assert result.returncode == 2 and named in result.stderr, result.stderr


def test_synthetic_counts_give_the_benchmarks_head_split():
    from asyncjax import compile_check
    from asyncjax.data import longtail
    for name, (classes, head, largest, smallest) in compile_check.KNOWN_SHAPES.items():
        counts = compile_check.synthetic_counts(classes, head, largest, smallest)
        assert len(counts) == classes and counts.max() == largest and counts.min() == smallest, name
        assert np.all(np.diff(counts) <= 0), name
        assert longtail.make_class_split(counts, None).num_head == head, name


def test_programs_selects_a_subset_and_names_the_unknown(libtpu):
    from asyncjax import compile_check, config_utils
    _, devices = compile_check.topology_devices("v5e:2x2")
    load = lambda: config_utils.load_config_file(str(REPO / "configs" / "cifar100_lt.py") + ":smoke=True")
    _, programs, _ = compile_check.build_programs(load(), devices, ["phase2_step", "evaluation"])
    assert list(programs) == ["phase2_step", "evaluation"]
    with pytest.raises(ValueError, match=r"--programs: unknown \['phase3_step'\]; this method runs \['phase1_step'"):
        compile_check.build_programs(load(), devices, ["phase3_step"])
    plain = load()
    plain.method = "plain"  # One joint phase: no memory bank, no phase II.
    _, programs, _ = compile_check.build_programs(plain, devices)
    assert list(programs) == ["joint_step", "evaluation"]
    adjusted = load()
    adjusted.method, adjusted.loss.logit_adjustment_grid = "logit_adjustment", (0.0, 1.0)  # tau chosen on validation.
    _, programs, _ = compile_check.build_programs(adjusted, devices)
    assert list(programs) == ["joint_step", "evaluation", "validation_logits"]


@pytest.mark.parametrize("method,expected", [
    ("crt", ["joint_step", "classifier_init", "classifier_step", "evaluation"]),
    ("lws", ["joint_step", "classifier_init", "classifier_step", "evaluation"]),
    ("tau_norm", ["joint_step", "evaluation"]),
])
def test_every_method_builds_the_programs_of_its_phases(libtpu, method, expected):
    """The programs come from the method's own phases (asyncjax/methods): cRT / LWS re-train the
    classifier from the joint phase's state, and that state is a program input, not a constant."""
    import jax

    from asyncjax import compile_check, config_utils, methods
    _, devices = compile_check.topology_devices("v5e:2x2")
    config = config_utils.load_config_file(str(REPO / "configs" / "cifar100_lt.py") + f":smoke=True,method={method}")
    _, programs, facts = compile_check.build_programs(config, devices)
    assert list(programs) == expected
    assert list(facts["head_state_bytes_per_chip"]) == list(methods.phases_of(method))
    if "classifier_init" in programs:
        fn, args, _ = programs["classifier_init"]
        assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(args))
        state = jax.eval_shape(fn, *args)
        # LWS adds per-class scales to the joint classifier; cRT's classifier is a fresh one.
        assert ("class_scale" in state.params["head"]) is (method == "lws")
