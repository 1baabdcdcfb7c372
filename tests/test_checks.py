"""checks.py through setup.build: what refuses a run does so before anything is written."""
import json
import re

import numpy as np
import pytest

from tests import helpers


@pytest.mark.parametrize("overrides,named", [
    (["--config.model.backbone=resnet33"], "model.backbone"),
    (["--config.phase2.schedule=cos"], "phase2.schedule"),
    (["--config.loss.retention_reduction=avg"], "loss.retention_reduction"),
    (["--config.phase1.sampler=balanced"], "phase1.sampler"),
    (["--config.phase2.warmup_epochs=3"], "phase2.warmup_epochs"),
    (["--config.method=crt", "--config.classifier.sampler=cb"], "classifier.sampler"),
    (["--config.model.head=cosinus"], "model.head"),
])
def test_a_typo_in_any_phase_fails_before_anything_is_written(tmp_path, tiny_cifar, overrides, named):
    from asyncjax import setup
    with pytest.raises(ValueError, match=re.escape(named)):
        setup.build(helpers.tiny_config(tiny_cifar, *overrides), str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_init_from_that_does_not_fit_is_refused_before_the_disk(tmp_path, tiny_cifar):
    import jax
    import jax.numpy as jnp

    from asyncjax import setup
    from asyncjax.archive import flatten
    from asyncjax.models import make_backbone
    wrong = make_backbone("resnet32").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    np.savez(tmp_path / "r32.npz", **flatten({"params": {"backbone": wrong["params"]},
                                              "batch_stats": {"backbone": wrong["batch_stats"]}}))
    with pytest.raises(ValueError, match="does not fit this backbone"):
        setup.build(helpers.tiny_config(tiny_cifar, f"--config.init_from={tmp_path / 'r32.npz'}"), str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_a_workdir_with_a_config_but_nothing_saved_is_taken_over(tmp_path, tiny_cifar, capsys):
    from asyncjax import setup
    workdir = tmp_path / "wd"
    workdir.mkdir()
    stale = json.loads(helpers.tiny_config(tiny_cifar, "--config.memory.per_class=7").to_json())
    (workdir / "config.json").write_text(json.dumps(stale))
    setup.build(helpers.tiny_config(tiny_cifar), str(workdir))
    assert json.loads((workdir / "config.json").read_text())["memory"]["per_class"] == 3
    assert "taken over" in capsys.readouterr().out


def test_one_run_per_workdir_and_a_killed_run_leaves_no_stale_lock(tmp_path, tiny_cifar):
    """A second run on a workdir in use is refused before it writes anything, naming the first;
    once the first is killed (SIGKILL: no clean-up of its own) the workdir is free again."""
    import os
    import subprocess
    import sys

    from asyncjax import checks, setup
    workdir = tmp_path / "wd"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom asyncjax import checks\nlock = checks.lock_workdir(sys.argv[1])\n"
         "print('locked', flush=True)\ntime.sleep(600)", str(workdir)],
        cwd=helpers.REPO, env=helpers.cli_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # WorkdirBusy is a ValueError (the CLI's exit 2) that reproduce --skip_running can tell apart.
        with pytest.raises(checks.WorkdirBusy, match=rf"workdir {re.escape(str(workdir))} is in use by pid {holder.pid} on "
                                             r"host \S+ since .*: one run per workdir"):
            setup.build(helpers.tiny_config(tiny_cifar), str(workdir))
        assert sorted(p.name for p in workdir.iterdir()) == ["run.lock"]  # No config.json, no logs.
    finally:
        holder.kill()
        holder.wait()
    ctx = setup.build(helpers.tiny_config(tiny_cifar), str(workdir))  # The killed holder left no lock.
    assert (workdir / "run.lock").read_text().startswith(f"pid {os.getpid()} on host ")
    assert (workdir / "config.json").exists()
    with pytest.raises(ValueError, match=f"is in use by pid {os.getpid()} "):  # Also within one process.
        setup.build(helpers.tiny_config(tiny_cifar), str(workdir))
    ctx.close()
    setup.build(helpers.tiny_config(tiny_cifar), str(workdir)).close()  # Released by close().


@pytest.mark.parametrize("name", ["config.json", "results.json"])
def test_a_damaged_config_or_results_file_is_named(tmp_path, tiny_cifar, name):
    """A hand-edited or cut-short config.json / results.json is refused in one line naming it,
    not a traceback from the JSON parser."""
    from asyncjax import checks, train
    workdir = tmp_path / "wd"
    workdir.mkdir()
    config = helpers.tiny_config(tiny_cifar)
    (workdir / "config.json").write_text(checks.resolve(config).to_json())  # As a run writes it.
    (workdir / name).write_text('{"overall": 44.1')  # Cut short.
    with pytest.raises(ValueError, match=re.escape(f"{workdir / name} is not valid JSON")):
        train.run(config, str(workdir))


def test_joint_from_names_a_cross_entropy_joint_phase_of_the_same_settings(tmp_path):
    """joint_from: only the decoupling family and logit_adjustment take it, only from a run whose
    joint phase is plain cross-entropy, trained with the same settings (the key named)."""
    from asyncjax import checks

    source = tmp_path / "cross_entropy"
    source.mkdir()
    ce = helpers.tiny_config(str(tmp_path / "data"), "--config.method=plain", "--config.model.head=linear")
    (source / "config.json").write_text(ce.to_json())

    def config(*overrides):
        return helpers.tiny_config(str(tmp_path / "data"), "--config.model.head=linear",
                                   f"--config.joint_from={source}", *overrides)
    checks.check_phase1_from(config("--config.method=crt"), str(tmp_path / "crt"))  # Accepted.
    checks.check_phase1_from(config("--config.method=logit_adjustment"), str(tmp_path / "la"))
    for overrides, words in ((["--config.method=plain"], "joint_from needs method in"),
                             (["--config.method=crt", "--config.seed=3"], "seed (0 there, 3 here)"),
                             (["--config.method=tau_norm", "--config.phase1.base_lr=0.5"], "phase1.base_lr")):
        with pytest.raises(ValueError, match=re.escape(words)):
            checks.check_phase1_from(config(*overrides), str(tmp_path / "other"))
    with pytest.raises(ValueError, match="own workdir"):
        checks.check_phase1_from(config("--config.method=crt"), str(source))
    (source / "config.json").write_text(json.dumps({**json.loads(ce.to_json()), "method": "ldam_drw"}))
    with pytest.raises(ValueError, match="method='ldam_drw' run"):
        checks.check_phase1_from(config("--config.method=crt"), str(tmp_path / "crt"))
