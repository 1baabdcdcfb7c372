"""Preemption, crashes, divergence and bad input: signals, exit codes and several processes
through the real command line; the runs that need no process of their own (references, resumes
after the signal, refusals of a setting) in this one (helpers.run_in_process).

A run interrupted many ways (SIGTERM in phase I, in the memory-bank step and in
phase II; SIGKILL while a checkpoint is written) and resumed each time ends
with the same parameters and results.json figures as an uninterrupted run.
"""
import contextlib
import json
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest

from tests import helpers

PACKAGE = pathlib.Path(helpers.REPO) / "asyncjax"


# Session scope: a module fixture is torn down whenever an xdist worker moves on to another
# module's test, and then built again (an uninterrupted CLI run each time).
@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, tiny_cifar):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = helpers.run_main(workdir, tiny_cifar, *helpers.TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _run_until(workdir, tiny_cifar, marker, sig, *extra):
    """Starts the CLI and sends `sig` as soon as `marker` is printed; returns (code, output)."""
    process = subprocess.Popen(helpers.main_command(workdir, tiny_cifar, *helpers.TINY, *extra), cwd=helpers.REPO,
                               env=helpers.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in process.stdout:
        output.append(line)
        if marker in line:
            process.send_signal(sig)
            break
    rest, _ = process.communicate(timeout=300)
    return process.returncode, "".join(output) + rest


def _assert_same_run(workdir, reference, tmp_path):
    want = helpers.export(reference, tmp_path / "want.npz")
    got = helpers.export(workdir, tmp_path / "got.npz")
    assert sorted(want) == sorted(got)
    for name in want:  # Bitwise on CPU.
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    a = json.loads((reference / "results.json").read_text())
    b = json.loads((workdir / "results.json").read_text())
    for key in ("overall", "many", "medium", "few", "phase1", "memory_bank_size"):
        assert a[key] == b[key], key


@pytest.mark.xdist_group("uninterrupted")
def test_xdist_groups_are_honoured(request):
    """Tests of one xdist_group share one worker, so that the session fixture they share (a CLI
    run) is built once. pytest 9.2 with pytest-xdist 3.8 ignored every group without a word (node
    ids kept where xdist cannot add the group; the uninterrupted run was built on both workers):
    setup.cfg keeps pytest below 9.2, and this fails on a combination that breaks it again."""
    if getattr(request.config.option, "loadgroup", False):  # Under pytest -n N with --dist loadgroup.
        assert request.node.nodeid.endswith("@uninterrupted"), request.node.nodeid


@pytest.mark.xdist_group("uninterrupted")
def test_interrupted_everywhere_then_resumed_matches_uninterrupted(tmp_path, tiny_cifar, uninterrupted):
    workdir = tmp_path / "wd"
    stops = [("phase1 epoch 1/2 step 2/6", signal.SIGTERM, "stopped phase1 after step 2/6"),
             ("phase1 final test accuracy", signal.SIGTERM, "stopped after the memory bank"),
             ("phase2 epoch 1/2 step 2/6", signal.SIGTERM, "stopped phase2 after step 2/6"),
             # The log line of step 4 comes right before its checkpoint is written.
             ("phase2 epoch 2/2 step 4/6", signal.SIGKILL, None)]
    for marker, sig, message in stops:
        code, output = _run_until(workdir, tiny_cifar, marker, sig)
        if sig == signal.SIGTERM:
            assert code == 3, output[-3000:]
            assert message in output and "run the same command again to resume" in output
        else:
            assert code == -signal.SIGKILL, output[-3000:]
        assert not (workdir / "results.json").exists()
    assert (workdir / "memory_bank.npz").exists()
    # A half-written checkpoint, as a kill during a write leaves it, is never restored.
    partial = workdir / "checkpoints" / "phase2" / "5.orbax-checkpoint-tmp-0"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 10)
    archive = tmp_path / "carry" / "carried.tar.gz"  # A folder that does not exist yet: save makes it.
    saved = subprocess.run(["launch/carry.sh", "save", str(workdir), str(archive)], cwd=helpers.REPO,
                           capture_output=True, text=True, timeout=60)
    assert saved.returncode == 0, saved.stderr
    resumed = helpers.run_in_process(workdir, tiny_cifar, *helpers.TINY)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"phase2: resuming from step [24]/6", resumed.stdout), resumed.stdout
    _assert_same_run(workdir, uninterrupted, tmp_path)
    # The machine that trained is recorded with the seconds of every start, the killed one's up to
    # its last checkpoint, as the phases' wall time counts them (the bank is not a training phase).
    from asyncjax import hardware
    results = json.loads((workdir / "results.json").read_text())
    assert list(results["trained_on_s"]) == [hardware.device_name()]
    trained = results["wall_time_s"]["phase1"] + results["wall_time_s"]["phase2"]
    assert abs(results["trained_on_s"][hardware.device_name()] - trained) < 0.2, results
    # launch/carry.sh: the archive holds the latest finished checkpoint of each phase alone, and
    # the run resumed from it elsewhere ends as the uninterrupted run does.
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    kept = {tuple(name.split("/")[1:3]) for name in names if name.startswith("checkpoints/") and name.count("/") >= 2}
    assert [phase for phase, _ in sorted(kept)] == ["phase1", "phase2"], kept  # One step each.
    assert all(step.isdigit() for _, step in kept) and not any(n.startswith("tensorboard") for n in names), kept
    carried = tmp_path / "elsewhere" / "wd"
    restore = ["launch/carry.sh", "restore", str(archive), str(carried)]
    assert subprocess.run(restore, cwd=helpers.REPO, capture_output=True, timeout=60).returncode == 0
    assert subprocess.run(restore, cwd=helpers.REPO, capture_output=True, timeout=60).returncode == 2  # Exists.
    again = helpers.run_in_process(carried, tiny_cifar, *helpers.TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"phase2: resuming from step [24]/6", again.stdout), again.stdout
    _assert_same_run(carried, uninterrupted, tmp_path)


def test_checkpoints_from_before_machines_were_recorded_say_not_recorded():
    """A run resumed from a checkpoint written before `machine_s` existed (the queue's rows 1-2)
    keeps that time as 'not recorded' rather than giving it to the machine that resumes."""
    from asyncjax import hardware, loop
    assert loop.machine_seconds({"elapsed_s": 12.5}) == {"not recorded": 12.5}
    assert loop.machine_seconds({}) == {}
    assert loop.machine_seconds({"elapsed_s": 5.0, "machine_s": {"NVIDIA H200": 5}}) == {"NVIDIA H200": 5.0}
    assert loop.add_seconds({"not recorded": 12.5}, "x", 2.0) == {"not recorded": 12.5, "x": 2.0}
    assert hardware.short_name("AMD EPYC 9R14 (family 25 model 17, avx512)") == "AMD EPYC 9R14 (family 25 model 17)"
    assert hardware.short_name("NVIDIA H200") == "NVIDIA H200"


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_cifar):
    workdir = tmp_path / "wd"
    # In-process: the trainer's stop and cli.guarded's exit code (2) and `error:` line, as the command line.
    result = helpers.run_in_process(workdir, tiny_cifar, *helpers.TINY, "--config.phase2.base_lr=1e30")
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.search(r"non-finite (loss|parameters) in phase2 at step \d+: \w+ = (nan|inf)", result.stderr), \
        result.stderr
    assert not (workdir / "results.json").exists()
    phase1 = helpers.export(workdir, tmp_path / "phase1.npz", "--phase=phase1")
    assert all(np.all(np.isfinite(v)) for v in phase1.values())
    phase2_dir = workdir / "checkpoints" / "phase2"
    if any(p.name.isdigit() for p in phase2_dir.iterdir()):  # Any phase-II checkpoint is a finite one.
        phase2 = helpers.export(workdir, tmp_path / "phase2.npz", "--phase=phase2")
        assert all(np.all(np.isfinite(v)) for v in phase2.values())


def _snapshot(path: pathlib.Path):
    if not path.exists():
        return None
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


# The command line's parser refuses the first two; the trainer's checks the rest (in-process: the
# same checks and exit-code scheme, cli.guarded, without a JAX start-up each).
@pytest.mark.parametrize("extra,message,command_line", [
    (["--config.phase1.epochs=abc"], r"--config.phase1.epochs='abc': expected int", True),
    (["--config.phase1.epochz=3"], r"unknown config key 'phase1.epochz'; valid keys at phase1", True),
    (["--config.split.num_head_classes=100"], r"no tail classes \(C1 = 100 of 100\)", False),
    (["--config.split.num_head_classes=0", "--config.data.max_count=19"], r"no head classes \(C1 = 0 of 100\)", False),
    (["--config.memory.per_class=0"], r"memory.per_class must be >= 1, got 0", False),
    (["--config.steps_per_dispatch=0"], r"steps_per_dispatch must be >= 1, got 0", False),
    (["--config.data.cifar100_dir=/nonexistent/cifar"], r"CIFAR-100 directory '/nonexistent/cifar' does not exist", False),
])
@pytest.mark.xdist_group("uninterrupted")
def test_bad_input_is_refused_and_changes_nothing(tmp_path, tiny_cifar, uninterrupted, extra, message, command_line):
    """Against a workdir that holds a finished run: nothing in it may change."""
    workdir = uninterrupted
    before = _snapshot(workdir)
    run = helpers.run_main if command_line else helpers.run_in_process
    result = run(workdir, tiny_cifar, *helpers.TINY, *extra)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert _snapshot(workdir) == before


def test_bad_input_creates_no_workdir(tmp_path, tiny_cifar):
    result = helpers.run_main(tmp_path / "new", tiny_cifar, *helpers.TINY, "--config.model.backbone=resnet33")
    assert result.returncode == 2 and "model.backbone must be one of" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # One line, no traceback.
    assert not (tmp_path / "new").exists()


def test_truncated_cifar_file_is_refused(tmp_path, tiny_cifar):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train.bin", "test.bin"):
        data = (pathlib.Path(tiny_cifar) / name).read_bytes()
        (broken / name).write_bytes(data[:-100] if name == "train.bin" else data)
    result = helpers.run_in_process(tmp_path / "wd", broken, *helpers.TINY)
    assert result.returncode == 2
    assert f"{broken / 'train.bin'}" in result.stderr and "not a whole number" in result.stderr
    assert not (tmp_path / "wd").exists()
    # Cut at a record boundary (the last 500 records, which hold whole classes' images): said so.
    data = (pathlib.Path(tiny_cifar) / "train.bin").read_bytes()
    (broken / "train.bin").write_bytes(data[:-500 * 3074])
    result = helpers.run_in_process(tmp_path / "wd", broken, *helpers.TINY, "--config.data.imbalance=1")
    assert result.returncode == 2 and "is train.bin truncated?" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "wd").exists()


@pytest.mark.xdist_group("uninterrupted")
def test_workdir_of_another_configuration_is_refused(tiny_cifar, uninterrupted):
    before = _snapshot(uninterrupted)
    result = helpers.run_in_process(uninterrupted, tiny_cifar, *helpers.TINY, "--config.model.head=linear",
                                    "--config.method=plain")
    assert result.returncode == 2
    assert "different configuration" in result.stderr
    assert "model.head: workdir has 'cosine', this run 'linear'" in result.stderr
    assert "method: workdir has 'async', this run 'plain'" in result.stderr
    assert _snapshot(uninterrupted) == before


@pytest.mark.xdist_group("uninterrupted")
def test_the_identity_lives_with_the_checkpoints(tmp_path, uninterrupted):
    """config.json deleted or edited by hand no longer turns the identity guard off: the config and
    the classes stored in each checkpoint are checked too."""
    import ml_collections

    from asyncjax import checks
    workdir = tmp_path / "copy"
    shutil.copytree(uninterrupted, workdir)
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    other = ml_collections.ConfigDict(config.to_dict())
    other.seed = 1
    # config.json deleted: the checkpoints still say seed 0.
    (workdir / "config.json").unlink()
    with pytest.raises(ValueError, match=r"holds phase1 checkpoints \(step 6\) of a different configuration "
                                         r"\(seed: workdir has 0, this run 1\)"):
        checks.check_workdir(other, str(workdir))
    note, fresh = checks.check_workdir(config, str(workdir))  # The same run: resumed, config.json rewritten.
    assert fresh and "config.json was missing" in note
    # config.json edited by hand to say seed 1: the checkpoints refuse the run of seed 1.
    (workdir / "config.json").write_text(other.to_json())
    with pytest.raises(ValueError, match="of a different configuration"):
        checks.check_workdir(other, str(workdir))
    # The same configuration on other data (here: the classes in another order) is refused too.
    (workdir / "config.json").write_text(config.to_json())
    _, _, meta = checks.checkpoint_metas(str(workdir))[-1]
    assert checks.check_workdir(config, str(workdir), data_identity={k: meta[k] for k in ("rank_to_class", "class_names")}) == (None, False)
    shuffled = {"rank_to_class": meta["rank_to_class"][::-1]}
    with pytest.raises(ValueError, match=r"trained on other data \(its classes ordered by training count"):
        checks.check_workdir(config, str(workdir), data_identity=shuffled)


def test_export_without_checkpoints_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "asyncjax.export", f"--workdir={tmp_path / 'empty'}",
                             f"--output={tmp_path / 'model.npz'}"], cwd=helpers.REPO, env=helpers.cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no checkpoint to export" in result.stderr
    assert not (tmp_path / "model.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"] and not list((tmp_path / "empty").iterdir())


def test_nothing_is_unpickled():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, path
        for call in re.findall(r"np\.load\([^)]*\)", text):
            assert "allow_pickle=False" in call, (path, call)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# Two-process runs and their one-process references: no monitoring look mid-phase (each pass over
# the validation split gathers every batch across the processes; the final evaluation still runs).
TWO_PROCESS = [*helpers.TINY, "--config.eval_every_epochs=2"]


@contextlib.contextmanager
def _two_process_job(workdir, tiny_cifar, *extra):
    """The CLI as two processes of one jax.distributed job (one CPU device each); on the way out a
    process still running (left waiting in a collective by a failure) is killed."""
    port = _free_port()
    processes = [subprocess.Popen(
        helpers.main_command(workdir, tiny_cifar, *TWO_PROCESS, *extra, f"--coordinator_address=localhost:{port}",
                             "--num_processes=2", f"--process_id={i}"),
        cwd=helpers.REPO, env=helpers.cli_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _two_processes(workdir, tiny_cifar, *extra):
    with _two_process_job(workdir, tiny_cifar, *extra) as processes:
        outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    return outputs


@pytest.fixture(scope="session")
def two_processes_uninterrupted(tmp_path_factory, tiny_cifar):
    """A finished two-process run (data axis across the processes), shared by the tests below."""
    workdir = tmp_path_factory.mktemp("two_processes")
    _two_processes(workdir, tiny_cifar, "--config.mesh.model=1")
    return workdir


@pytest.mark.parametrize("model_axis", [1, 2])
@pytest.mark.xdist_group("two_processes")
def test_two_processes_match_one_process_with_two_devices(tmp_path, tiny_cifar, model_axis, request):
    """model_axis=2: the classifier is sharded across the two processes and the data axis has one
    position, which both hold: each loads the whole batch (sharding.process_rows)."""
    mesh = [f"--config.mesh.model={model_axis}"]
    if model_axis == 1:
        workdir = request.getfixturevalue("two_processes_uninterrupted")
    else:
        workdir = tmp_path / "two_processes"
        _two_processes(workdir, tiny_cifar, *mesh)
    reference = tmp_path / "one_process"
    result = helpers.run_main(reference, tiny_cifar, *TWO_PROCESS, *mesh, devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    want = helpers.export(reference, tmp_path / "want.npz")
    got = helpers.export(workdir, tmp_path / "got.npz")
    for name in want:  # Same programs and data order; cross-process sums may round differently.
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    a = json.loads((reference / "results.json").read_text())
    b = json.loads((workdir / "results.json").read_text())
    assert a["overall"] == pytest.approx(b["overall"], abs=1.0)


@pytest.mark.xdist_group("two_processes")
def test_sigterm_to_one_process_stops_every_process_after_the_same_step(tmp_path, tiny_cifar,
                                                                        two_processes_uninterrupted):
    """A pod's hosts get SIGTERM at different steps; here only process 1 gets it. Both must agree
    on the step (JAX's preemption sync point), checkpoint it, exit 3 instead of waiting in a
    collective, and the resumed run must end bitwise as the uninterrupted one."""
    workdir = tmp_path / "wd"
    with _two_process_job(workdir, tiny_cifar, "--config.mesh.model=1") as processes:
        # Process 0 writes the log; process 1 gets the signal. Its output is read as it comes, so
        # that a full pipe never blocks it.
        drained = []
        drain = threading.Thread(target=lambda: drained.append(processes[1].stdout.read()), daemon=True)
        drain.start()
        seen = []
        for line in processes[0].stdout:
            seen.append(line)
            if re.search(r"phase1 epoch \d+/\d+ step 1/", line):
                processes[1].send_signal(signal.SIGTERM)
                break
        seen.append(processes[0].communicate(timeout=300)[0])  # Bounded: one stuck in a collective fails here.
        processes[1].wait(timeout=300)
        drain.join(timeout=60)
        outputs = ["".join(seen), "".join(drained)]
    assert [p.returncode for p in processes] == [3, 3], outputs[0][-2000:] + outputs[1][-2000:]
    stops = [re.findall(r"received: stopped (\w+) after step (\d+)/", out) for out in outputs]
    assert len(stops[0]) == 1 and stops[0] == stops[1], stops
    phase, step = stops[0][0]
    assert (workdir / "checkpoints" / phase / step).is_dir()
    _two_processes(workdir, tiny_cifar, "--config.mesh.model=1")
    _assert_same_run(workdir, two_processes_uninterrupted, tmp_path)


@pytest.mark.xdist_group("uninterrupted")
def test_memory_bank_and_phase2_wiring(tmp_path, tiny_cifar, uninterrupted):
    """The bank holds K rows of each head class, chosen by build_memory_bank on the phase-I model's
    eval-mode features of un-augmented images; phase II trains on exactly the tail rows plus the bank,
    with lambda = lambda_base * sqrt(C1 / C2) in its loss."""
    import ml_collections

    from asyncjax import memory, setup

    workdir = tmp_path / "copy"
    shutil.copytree(uninterrupted, workdir)  # The set-up below opens logs; the fixture stays as it is.
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    ctx = setup.build(config, str(workdir))
    c1, c, k = ctx.split.num_head, ctx.split.num_classes, config.memory.per_class
    with np.load(workdir / "memory_bank.npz", allow_pickle=False) as saved:
        bank = saved["bank"]
    assert bank.shape == (c1, k)
    labels = ctx.train_labels
    for row, exemplars in enumerate(bank):
        valid = exemplars[exemplars >= 0]
        assert len(valid) == min(k, int(np.sum(labels == row))) and len(set(valid)) == len(valid)
        assert np.all(labels[valid] == row), row
    # The same bank from the exported phase-I model, in inference mode, on the images as stored.
    head_rows = np.flatnonzero(labels < c1)
    features = _phase1_features(workdir, tmp_path, ctx, head_rows)
    local = memory.build_memory_bank(np.asarray(features), labels[head_rows], np.arange(c1), k)
    expected = np.where(local >= 0, head_rows[np.maximum(local, 0)], -1)
    same = [set(a) == set(b) for a, b in zip(bank, expected)]
    # Two programs compute the features (the trainer's sharded inference and this one), so a
    # float32 near-tie may flip one pick; any wiring error (augmented or train-mode features,
    # other rows) changes nearly every class.
    assert np.mean(same) >= 0.9, np.mean(same)
    # Phase II: the tail rows plus the bank, and Eq. 9 with lambda at the call site.
    log = (workdir / "metrics.jsonl").read_text().splitlines()
    results = json.loads((workdir / "results.json").read_text())
    weight = config.loss.retention_weight_base * np.sqrt(c1 / (c - c1))
    assert results["retention_weight"] == pytest.approx(weight, rel=1e-6)
    assert results["memory_bank_size"] == int((bank >= 0).sum())
    blocks = [json.loads(line) for line in log if '"phase2"' in line and '"dis"' in line]
    assert blocks
    for block in blocks:  # Block means of the terms combine as the step's total does.
        assert block["loss"] == pytest.approx(block["cls"] + block["intra"] + weight * block["dis"], rel=1e-4)
    tail = int(np.sum(labels >= c1))
    assert results["phase2_rows"] == tail + results["memory_bank_size"]
    output = (workdir / "log.txt").read_text()
    assert f"phase II data: {tail} tail + bank" in output
    assert f"phase2: {tail + results['memory_bank_size']} training images" in output


def _phase2_first_step(workdir):
    """Phase II's first logged step (metrics.jsonl): its cross-entropy depends on W_c2's init and
    the batch alone, phase II's randomness."""
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return next(line for line in lines if line["phase"] == "phase2" and line["step"] == 1 and "cls" in line)


@pytest.mark.xdist_group("uninterrupted")
def test_phase2_remedies_validation_only_from_another_workdirs_phase1(tmp_path, tiny_cifar, uninterrupted):
    """Phase II with its own seed, W_c1 frozen and a tail bias chosen on validation, from another
    workdir's phase I, reading no test batch: results.json holds no test figure; the chosen offset
    is the grid's best on validation, saved, exported and applied by predict."""
    from asyncjax import calibration, evaluate, predict, setup, train

    config = helpers.tiny_config(tiny_cifar, f"--config.phase1_from={uninterrupted}", "--config.phase2_seed=1",
                                 "--config.phase2_old_rows=freeze", "--config.calibration.kind=tail_bias",
                                 "--config.read_test=False")
    workdir = tmp_path / "remedies"
    ctx = setup.build(config, str(workdir))
    assert ctx.test is None

    def no_test(*args, **kwargs):
        raise AssertionError("a test batch was read")
    ctx.data.test_images.batches = no_test
    seen = {}
    logits_of = evaluate.Evaluator.logits

    def logits_kept(self, *args, **kwargs):  # The validation logits the choice is made on.
        seen["logits"] = logits_of(self, *args, **kwargs)
        return seen["logits"]
    evaluate.Evaluator.logits = logits_kept
    try:
        results = train.execute(ctx)
    finally:
        evaluate.Evaluator.logits = logits_of
    assert not {"overall", "many", "medium", "few", "per_class_accuracy"} & set(results)
    assert results["test_read"] is False and results["evaluated_on"] == "val"
    assert set(results["phase1"]) == {"val_head"}
    assert "the test split was not read" in (workdir / "log.txt").read_text()
    # The tail bias: the grid's best on the validation logits, and the figures with it applied.
    ctx = setup.build(config, str(tmp_path / "probe"), dry_run=True)
    c1, labels = ctx.split.num_head, ctx.val.labels
    record = results["calibration"]
    assert record["applied"] == "tail_bias" and set(record["options"]) == set(calibration.KINDS)
    want = calibration.choose(seen["logits"], labels, "tail_bias", (), ctx.counts, c1)
    assert record["value"] == want["value"] and record["options"]["tail_bias"]["val_overall"] == want["val_overall"]
    offset = calibration.offset("tail_bias", want["value"], ctx.counts, c1)
    corrected = evaluate.percent(evaluate.shot_accuracy(np.argmax(seen["logits"] + offset, -1), labels, ctx.counts))
    assert results["val"]["overall"] == pytest.approx(corrected["overall"]) == pytest.approx(max(want["val_overall"]))
    groups = record["options"]["tail_bias"]["val_groups"]  # Each grid value's shot groups.
    assert [g["overall"] for g in groups] == pytest.approx(want["val_overall"])
    assert groups[want["grid"].index(want["value"])] == pytest.approx(corrected)
    saved = json.loads((workdir / calibration.OFFSET_FILE).read_text())
    np.testing.assert_array_equal(saved["offset"], offset)
    # W_c1 as phase I left it; W_c2 trained; phase II's own seed drew another first batch / init.
    final = helpers.export(workdir, tmp_path / "final.npz")
    phase1 = helpers.export(uninterrupted, tmp_path / "phase1.npz", "--phase=phase1")
    np.testing.assert_array_equal(final["params/head/kernel"][:, :c1], phase1["params/head/kernel"][:, :c1])
    assert not np.allclose(final["params/backbone/conv1/kernel"], phase1["params/backbone/conv1/kernel"])
    assert _phase2_first_step(workdir)["cls"] != _phase2_first_step(uninterrupted)["cls"]
    # The export carries the offset, and predict's probabilities are softmax(logits + offset).
    np.testing.assert_array_equal(final["logit_offset"], offset)
    from PIL import Image
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"image{i}.png"))
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[i])
    arrays = dict(np.load(tmp_path / "final.npz", allow_pickle=False))
    with_offset = predict.predict(arrays, paths, top_k=ctx.split.num_classes)
    arrays.pop("logit_offset")
    without = predict.predict(arrays, paths, top_k=ctx.split.num_classes)
    rows = {int(c): r for r, c in enumerate(arrays["class_ids"])}
    for a, b in zip(with_offset, without):
        p = np.zeros(len(rows)), np.zeros(len(rows))
        for target, result in zip(p, (a, b)):
            for entry in result["top_k"]:
                target[rows[entry["class_id"]]] = entry["probability"]
        expected = p[1] * np.exp(offset)
        np.testing.assert_allclose(p[0], expected / expected.sum(), rtol=1e-4, atol=1e-7)


@pytest.mark.xdist_group("uninterrupted")
def test_phase2_from_another_workdirs_phase1(tmp_path, tiny_cifar, uninterrupted):
    """--config.phase1_from=A: phase II (here with another tau) from A's finished phase I and bank;
    A is never written; a phase I of another configuration is refused with the key named."""
    before = _snapshot(uninterrupted)
    workdir = tmp_path / "variant"
    result = helpers.run_in_process(workdir, tiny_cifar, *helpers.TINY, f"--config.phase1_from={uninterrupted}",
                                    "--config.loss.retention_temperature=0.1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"phase1: from {uninterrupted}" in result.stdout and "phase1 epoch" not in result.stdout
    assert _snapshot(uninterrupted) == before
    a = json.loads((uninterrupted / "results.json").read_text())
    b = json.loads((workdir / "results.json").read_text())
    assert b["phase1_from"] == str(uninterrupted) and "val" in b
    assert b["phase1"]["head"] == a["phase1"]["head"]  # The same phase-I model.
    # phase2_seed unset: phase II's randomness is the seed's, as in the run the phase I came from.
    assert _phase2_first_step(workdir)["cls"] == _phase2_first_step(uninterrupted)["cls"]
    np.testing.assert_array_equal(np.load(workdir / "memory_bank.npz")["bank"],
                                  np.load(uninterrupted / "memory_bank.npz")["bank"])
    refused = helpers.run_in_process(tmp_path / "other", tiny_cifar, *helpers.TINY, "--config.seed=1",
                                     f"--config.phase1_from={uninterrupted}")
    assert refused.returncode == 2 and "seed" in refused.stderr and "phase1_from" in refused.stderr
    assert not (tmp_path / "other").exists()
    recipe = helpers.run_in_process(tmp_path / "other", tiny_cifar, *helpers.TINY, "--config.phase1.epochs=3",
                                    f"--config.phase1_from={uninterrupted}")
    assert recipe.returncode == 2 and "phase1.epochs" in recipe.stderr
    # The variant trained no phase I of its own: nothing to start from.
    unfinished = helpers.run_in_process(tmp_path / "other", tiny_cifar, *helpers.TINY,
                                        f"--config.phase1_from={workdir}")
    assert unfinished.returncode == 2 and "no finished phase I" in unfinished.stderr
    assert not (tmp_path / "other").exists()
    # A finished variant is reported even after its phase I's workdir is gone (a new machine).
    finished, gone = tmp_path / "finished", tmp_path / "gone"
    shutil.copytree(workdir, finished)
    saved = json.loads((finished / "config.json").read_text())
    (finished / "config.json").write_text(json.dumps({**saved, "phase1_from": str(gone)}))
    reported = helpers.run_in_process(finished, tiny_cifar, *helpers.TINY, f"--config.phase1_from={gone}",
                                      "--config.loss.retention_temperature=0.1")
    assert reported.returncode == 0 and "is complete" in reported.stdout, reported.stderr[-3000:]


def test_joint_phase_on_the_resident_path_resumes_exactly(tmp_path, tiny_cifar):
    """The joint phase (method=plain) with images resident on the devices, stopped mid-epoch and
    resumed, ends bitwise where an uninterrupted run ends (CPU, same device count)."""
    extra = ["--config.method=plain", "--config.steps_per_dispatch=2", "--config.checkpoint_every_steps=2"]
    reference = tmp_path / "reference"
    result = helpers.run_in_process(reference, tiny_cifar, *helpers.TINY, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resident on the devices" in result.stdout
    workdir = tmp_path / "wd"
    code, output = _run_until(workdir, tiny_cifar, "joint epoch 1/2 step 2/6", signal.SIGTERM, *extra)
    assert code == 3, output[-3000:]
    # Resumed with a setting plain does not read changed: allowed, and said (config.json keeps the first's).
    resumed = helpers.run_in_process(workdir, tiny_cifar, *helpers.TINY, *extra,
                                     "--config.loss.retention_temperature=0.5")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"joint: resuming from step [24]/6", resumed.stdout), resumed.stdout
    assert "1 setting(s) other than its config.json" in resumed.stdout, resumed.stdout
    assert "loss.retention_temperature: 0.01 -> 0.5" in resumed.stdout, resumed.stdout
    want = helpers.export(reference, tmp_path / "want.npz")
    got = helpers.export(workdir, tmp_path / "got.npz")
    assert sorted(want) == sorted(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    a = json.loads((reference / "results.json").read_text())
    b = json.loads((workdir / "results.json").read_text())
    assert [a[k] for k in ("overall", "many", "medium", "few")] == [b[k] for k in ("overall", "many", "medium", "few")]
    # The joint phase learns: measured 5.0% over 100 classes here (chance 1%); 3x chance is the bar.
    assert a["overall"] >= 3.0


def _phase1_features(workdir, tmp_path, ctx, rows):
    """Eval-mode phase-I features of the un-augmented training images `rows`, from the export."""
    from asyncjax import augment
    from asyncjax.archive import unflatten
    variables = unflatten(helpers.export(workdir, tmp_path / "phase1_features.npz", "--phase=phase1"))
    images = augment.cifar_eval(ctx.data.train_images.images[rows])
    return np.asarray(ctx.build_model(ctx.split.num_head).apply(variables, images, train=False)["features"])


@pytest.mark.xdist_group("uninterrupted")
def test_imprinted_tail_rows_are_the_normalised_tail_class_means(tmp_path, tiny_cifar, uninterrupted):
    """phase2_init=imprint: W_c2's column of each tail class is its mean phase-I feature, normalised.
    Phase II runs at lr 0, so the exported classifier is its initialisation."""
    import ml_collections

    from asyncjax import setup
    workdir = tmp_path / "imprint"
    result = helpers.run_in_process(workdir, tiny_cifar, *helpers.TINY, f"--config.phase1_from={uninterrupted}",
                                    "--config.phase2_init=imprint", "--config.phase2.base_lr=0")
    assert result.returncode == 0, result.stderr[-3000:]
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    ctx = setup.build(config, str(tmp_path / "probe"))
    c1 = ctx.split.num_head
    tail = np.flatnonzero(ctx.train_labels >= c1)
    features = _phase1_features(uninterrupted, tmp_path, ctx, tail)
    kernel = helpers.export(workdir, tmp_path / "final.npz")["params/head/kernel"]
    labels = ctx.train_labels[tail] - c1
    for k in range(ctx.split.num_tail):
        mean = features[labels == k].mean(axis=0)
        # Two programs computed the features (the trainer's sharded inference, this one): 1e-4.
        np.testing.assert_allclose(kernel[:, c1 + k], mean / np.linalg.norm(mean), atol=1e-4, err_msg=str(k))


@pytest.mark.xdist_group("uninterrupted")
def test_the_tiny_runs_learn(uninterrupted):
    """Colour-coded tiny data (tests/helpers.py) is learnable in a few steps: phase I, phase II and
    the final model must be well above chance, not just inside [0, 100]. Measured here (Intel
    Xeon): phase I 10.8% on its 60 head classes (chance 1.7%), final 15.0% over 100 classes
    (chance 1%). Thresholds at 3x chance leave room for another CPU's rounding."""
    results = json.loads((uninterrupted / "results.json").read_text())
    head_classes = results["num_head_classes"]
    assert results["phase1"]["head"]["overall"] >= 3 * 100 / head_classes
    assert results["overall"] >= 3 * 100 / results["num_classes"]
    assert results["few"] > 0  # Phase II learned tail classes that phase I never saw.


@pytest.mark.xdist_group("uninterrupted")
def test_predict_prints_names_and_probabilities_from_a_workdir_and_an_export(tmp_path, tiny_cifar, uninterrupted):
    """asyncjax.predict on images written as files: the same top-k from the workdir and from its
    export, probabilities sorted and at most 1 in sum, names from --class_names."""
    from PIL import Image

    from asyncjax.data import cifar
    images, labels = cifar.read_cifar100_binary(tiny_cifar, "test")
    paths = []
    for i in range(3):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(images[i]).convert("L" if i == 2 else "RGB").save(path)  # A grayscale one too.
        paths.append(str(path))
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"name{c}" for c in range(100)) + "\n")

    def predict(*args):
        result = subprocess.run([sys.executable, "-m", "asyncjax.predict", *args, "--top_k=3", "--json",
                                 f"--class_names={names}", *paths], cwd=helpers.REPO, env=helpers.cli_env(),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    from_workdir = predict(f"--workdir={uninterrupted}")
    helpers.export(uninterrupted, tmp_path / "model.npz")
    from_export = predict(f"--model={tmp_path / 'model.npz'}")
    assert [r["image"] for r in from_workdir] == paths
    for a, b in zip(from_workdir, from_export):
        assert [c["class_id"] for c in a["top_k"]] == [c["class_id"] for c in b["top_k"]]
        probabilities = [c["probability"] for c in a["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
        assert all(c["name"] == f"name{c['class_id']}" for c in a["top_k"])
    plain = subprocess.run([sys.executable, "-m", "asyncjax.predict", f"--workdir={uninterrupted}", paths[0]],
                           cwd=helpers.REPO, env=helpers.cli_env(), capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and plain.stdout.startswith(f"{paths[0]}: class ")
    missing = subprocess.run([sys.executable, "-m", "asyncjax.predict", f"--workdir={uninterrupted}",
                              str(tmp_path / "nope.png")], cwd=helpers.REPO, env=helpers.cli_env(),
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "nope.png" in missing.stderr


def test_the_tests_compilation_cache_is_private(tmp_path):
    """JAX runs executables from its compilation cache: the tests' cache is this user's alone
    (mode 0700), never a fixed folder under the shared /tmp that anyone could fill first."""
    import os

    from tests.conftest import private_cache_dir
    cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
    info = os.stat(cache)
    assert info.st_uid == os.getuid() and info.st_mode & 0o077 == 0, (cache, oct(info.st_mode))
    opened = tmp_path / "opened"
    opened.mkdir(mode=0o777)
    os.chmod(opened, 0o777)
    assert private_cache_dir(str(opened)) == str(opened) and os.stat(opened).st_mode & 0o777 == 0o700
    if os.getuid() == 0:  # Only root can hand a folder to another user.
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(RuntimeError, match="belongs to another user"):
            private_cache_dir(str(theirs))


@pytest.mark.xdist_group("uninterrupted")
def test_a_damaged_latest_checkpoint_and_bank_fall_back_and_end_as_uninterrupted(tmp_path, tiny_cifar, uninterrupted):
    """Phase II's latest checkpoint with its data files cut in half, and memory_bank.npz cut short
    (a disk fault, a copy that stopped): the step is set aside (kept as <step>.damaged), the run
    resumes from the one before, the bank is selected again, and it ends bitwise as uninterrupted."""
    workdir = tmp_path / "damaged"
    shutil.copytree(uninterrupted, workdir)
    (workdir / "results.json").unlink()
    phase2 = workdir / "checkpoints" / "phase2"
    latest = max(int(p.name) for p in phase2.iterdir() if p.name.isdigit())
    for path in (phase2 / str(latest)).rglob("*"):
        if path.is_file() and path.parent.name == "d":  # The arrays' data.
            path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    bank = workdir / "memory_bank.npz"
    bank.write_bytes(bank.read_bytes()[:100])
    result = helpers.run_main(workdir, tiny_cifar, *helpers.TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"phase2: checkpoint {latest} cannot be read" in result.stdout
    assert f"memory bank: {bank} is damaged" in result.stdout
    assert (phase2 / f"{latest}.damaged").is_dir()
    _assert_same_run(workdir, uninterrupted, tmp_path)
