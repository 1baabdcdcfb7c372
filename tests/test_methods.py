"""The methods' registry and runners (asyncjax/methods), and the phase loop's pieces."""
import numpy as np
import pytest

from asyncjax import config_utils
from tests import helpers


def test_each_method_names_its_phases_and_their_recipes():
    from asyncjax import methods
    assert methods.phases_of("async") == ("phase1", "phase2")
    assert methods.phases_of("crt") == methods.phases_of("lws") == ("joint", "classifier")
    for method in ("plain", "ldam_drw", "focal", "balanced_softmax", "logit_adjustment", "tau_norm", "ncm"):
        assert methods.phases_of(method) == ("joint",), method
    # The joint phase trains with phase I's recipe; every phase has its own seed stream.
    assert methods.recipes_of("plain") == ("phase1",) and methods.recipes_of("crt") == ("phase1", "classifier")
    assert sorted(methods.PHASE_IDS.values()) == [1, 2, 3, 4]
    assert set(methods.FINAL_FIRST) == set(methods.PHASE_IDS)


def test_due_fires_on_multiples_and_the_last_step():
    from asyncjax.loop import due
    assert [s for s in range(1, 12) if due(s, 4, 11)] == [4, 8, 11]
    assert [s for s in range(1, 9) if due(s, 4, 8)] == [4, 8]


def test_atomic_writes_leave_the_file_whole_and_nothing_beside_it(tmp_path):
    from asyncjax import files
    files.write_json(str(tmp_path / "a.json"), {"b": 1, "a": [1, 2]})
    files.write_text(str(tmp_path / "t.md"), "text\n")
    files.save_npz(str(tmp_path / "x.npz"), bank=np.arange(6).reshape(2, 3))
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'
    assert (tmp_path / "t.md").read_text() == "text\n"
    with np.load(tmp_path / "x.npz", allow_pickle=False) as saved:
        np.testing.assert_array_equal(saved["bank"], np.arange(6).reshape(2, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.md", "x.npz"]
    # A write that fails half way leaves the previous version in place, and no temporary file.
    def half(f):
        f.write("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        files.write_atomically(str(tmp_path / "t.md"), half)
    assert (tmp_path / "t.md").read_text() == "text\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.md", "x.npz"]


def test_a_log_torn_by_a_killed_run_reads_on(tmp_path):
    """metrics.jsonl cut mid-line (a SIGKILL during a write): the resumed run starts on a line of its
    own and the plot reads past the torn line."""
    from asyncjax import files, plot
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"phase": "phase1", "step": 2, "loss": 4.0}\n{"phase": "phase1", "st')
    with files.append_lines(str(path)) as handle:
        handle.write('{"phase": "phase1", "step": 4, "loss": 3.0}\n')
    assert path.read_text().splitlines()[1:] == ['{"phase": "phase1", "st', '{"phase": "phase1", "step": 4, "loss": 3.0}']
    assert plot.read_metrics(str(tmp_path))["phase1"]["loss"] == ([2, 4], [4.0, 3.0])
    with files.append_lines(str(path)) as handle:  # A whole last line is left as it is.
        handle.write("x\n")
    assert path.read_text().endswith('3.0}\nx\n')


@pytest.mark.parametrize("overrides,devices,message", [
    ({"mesh.model": 3}, 4, "mesh.model=3 does not divide the 4 devices"),
    ({"phase1.batch_size": 6}, 4, "phase1.batch_size=6 is not divisible by the 4 data-parallel devices"),
    ({"phase2.batch_size": 6, "mesh.model": 2}, 8, "phase2.batch_size=6 is not divisible by the 4 data-parallel"),
    ({"method": "crt", "classifier.batch_size": 6}, 4, "classifier.batch_size=6"),
])
def test_check_devices_names_the_key_that_does_not_fit(overrides, devices, message):
    from asyncjax import checks
    config = config_utils.load_config_file(str(helpers.REPO / "configs/cifar100_lt.py") + ":smoke=True")
    config_utils.apply_overrides(config, [f"--config.{k}={v}" for k, v in overrides.items()])
    with pytest.raises(ValueError, match=message):
        checks.check_devices(config, devices)
    checks.check_devices(config, config.mesh.model)  # A data axis of 1 takes every batch.


def test_ldam_drw_switches_to_reweighting_at_the_set_epoch(tmp_path, tiny_cifar):
    from asyncjax import baselines, setup
    from asyncjax.methods import joint
    config = config_utils.load_config_file(str(helpers.REPO / "configs/cifar100_lt.py") + ":smoke=True")
    config.data.cifar100_dir = tiny_cifar
    config.data.max_count, config.data.imbalance = 20, 10
    config.method, config.phase1.epochs = "ldam_drw", 10
    ctx = setup.build(config, str(tmp_path / "wd"))
    loss = joint.joint_loss(ctx, steps_per_epoch=3)  # DRW from epoch 8 = step 24.
    rng = np.random.default_rng(0)
    out = {"cosine": rng.uniform(-1, 1, (6, 100)).astype(np.float32)}
    labels = rng.integers(0, 100, 6)
    margins = baselines.ldam_margins(ctx.counts)
    plain = baselines.ldam_loss(out["cosine"], labels, margins)
    weighted = baselines.ldam_loss(out["cosine"], labels, margins,
                                   class_weights=baselines.drw_class_weights(ctx.counts))
    assert float(loss(out, labels, 23)) == pytest.approx(float(plain), rel=1e-6)
    assert float(loss(out, labels, 24)) == pytest.approx(float(weighted), rel=1e-6)
    assert float(plain) != pytest.approx(float(weighted), rel=1e-3)
