"""launch/ scripts: their --dry-run output, their argument checks, and shellcheck."""
import io
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from tests import helpers

SCRIPTS = ["launch/local.sh", "launch/slurm_gpu.sh", "launch/tpu_pod.sh", ".ci/run", "benchmarks/gpu_check.sh",
           "benchmarks/suite_time.sh",
           "launch/carry.sh", "launch/evidence_queue.sh"]


def run(*args):
    return subprocess.run(list(args), cwd=helpers.REPO, capture_output=True, text=True, timeout=60)


def test_shellcheck_is_clean():
    shellcheck = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    result = run(shellcheck, *SCRIPTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_local_dry_run():
    result = run("launch/local.sh", "--dry-run", "--cpu-devices=4", "--", "--config=configs/cifar100_lt.py",
                 "--workdir=/tmp/w")
    assert result.returncode == 0, result.stderr
    assert "--xla_force_host_platform_device_count=4" in result.stdout
    assert "--xla_cpu_collective_call_terminate_timeout_seconds=600" in result.stdout
    assert "-m asyncjax.main --config=configs/cifar100_lt.py --workdir=/tmp/w" in result.stdout
    assert run("launch/local.sh", "--dry-run").returncode == 2


def test_slurm_dry_run():
    result = run("launch/slurm_gpu.sh", "--dry-run", "--nodes=4", "--gpus-per-node=8", "--partition=a100",
                 "--", "--config=configs/imagenet_lt.py", "--workdir=/fs/run")
    assert result.returncode == 0, result.stderr
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --partition=a100",
                 "#SBATCH --signal=TERM@120",
                 "srun --kill-on-bad-exit=1 python -m asyncjax.main --multihost --config=configs/imagenet_lt.py"):
        assert line in result.stdout
    assert run("launch/slurm_gpu.sh", "--dry-run", "--bogus").returncode == 2


def test_tpu_pod_dry_run():
    result = run("launch/tpu_pod.sh", "--dry-run", "--create", "--name=t1", "--zone=z1", "--bucket=b1",
                 "--type=v5litepod-64", "--", "--config=configs/inat.py", "--workdir=/mnt/b1/runs/inat")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm create t1 --zone=z1 --accelerator-type=v5litepod-64")
    assert any("tpu-vm scp" in line and "--worker=all" in line for line in lines)
    assert "gcsfuse" in result.stdout and "asyncjax.main\\ --multihost" in result.stdout
    assert result.stdout.count("--worker=all") == 3
    missing = run("launch/tpu_pod.sh", "--dry-run", "--name=t1", "--", "--workdir=x")
    assert missing.returncode == 2 and "--zone is required" in missing.stderr


@pytest.mark.parametrize("script", SCRIPTS[:3] + SCRIPTS[4:])
def test_help(script):
    result = run(script, "--help")
    assert result.returncode == 0 and "asyncjax" in result.stdout


def test_tpu_pod_refuses_a_bucket_that_is_not_a_name_and_quotes_the_one_it_takes(tmp_path):
    """--bucket goes into a command run with sudo on every worker: anything but a bucket name is
    refused, and a real launch (a stand-in gcloud recording its arguments) uses a mktemp tarball,
    removed on exit, not one named by the process id."""
    import re
    bad = run("launch/tpu_pod.sh", "--dry-run", "--name=t1", "--zone=z1", "--bucket=b1; rm -rf ~", "--", "--workdir=x")
    assert bad.returncode == 2 and "is not a Cloud Storage bucket name" in bad.stderr and not bad.stdout
    fake, log = tmp_path / "bin", tmp_path / "gcloud.log"
    fake.mkdir()
    (fake / "gcloud").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\n')
    (fake / "gcloud").chmod(0o755)
    result = subprocess.run(["launch/tpu_pod.sh", "--name=t1", "--zone=z1", "--bucket=my.bucket_1", "--",
                             "--workdir=/mnt/my.bucket_1/w"], cwd=helpers.REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    calls = log.read_text()
    tarball = re.search(r"tpu-vm scp (\S+) ", calls).group(1)
    assert re.fullmatch(r"/tmp/asyncjax-\w{10}\.tar\.gz", tarball), tarball
    assert not os.path.exists(tarball)  # Removed on exit.
    assert "sudo gcsfuse --implicit-dirs -o allow_other my.bucket_1 /mnt/my.bucket_1" in calls


def queue_checkout(tmp_path):
    """A stand-in checkout for launch/evidence_queue.sh: its scripts, CIFAR's train.bin, carried
    archives and committed results of the paper-budget runs (the script works on its own checkout)."""
    repo = tmp_path / "repo"
    (repo / "launch").mkdir(parents=True)
    for script in ("launch/evidence_queue.sh", "launch/carry.sh"):
        shutil.copy2(helpers.REPO / script, repo / script)
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "train.bin").write_bytes(b"")
    (repo / "carry").mkdir()
    # cross_entropy's archive was saved after it finished (it holds results.json); ldam_drw's is a
    # snapshot from before it finished, whose results are committed since.
    archived = {"plain_if100_seed1": ["config.json"], "cross_entropy_if100_seed0": ["config.json", "results.json"],
                "ldam_drw_if100_seed0": ["config.json"], "phase2_full_budget_p2seed0": ["config.json"]}
    for name, files in archived.items():
        with tarfile.open(repo / "carry" / f"{name}.tar.gz", "w:gz") as archive:
            for file in files:
                info = tarfile.TarInfo(file)
                info.size = 2
                archive.addfile(info, io.BytesIO(b"{}"))
            if name == "cross_entropy_if100_seed0":  # A listing longer than a pipe holds, as a checkpoint's.
                for shard in range(3000):
                    archive.addfile(tarfile.TarInfo(f"checkpoints/joint/33800/state/shard_{shard:05d}_of_03000"))
    for name in ("plain_if100_seed0", "cross_entropy_if100_seed0", "ldam_drw_if100_seed0"):
        (repo / "results" / "paper_budget" / name).mkdir(parents=True)
        for file in ("results.json", "config.json"):
            (repo / "results" / "paper_budget" / name / file).write_text("{}")
    return repo


def queue(repo, *args, prefix=(), **env):
    return subprocess.run([*prefix, str(repo / "launch/evidence_queue.sh"), *args], cwd=repo, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def test_evidence_queue_start_restores_what_the_machine_lacks_and_pins_a_worker_per_core(tmp_path):
    repo = queue_checkout(tmp_path)
    cifar = str(tmp_path / "cifar")
    result = queue(repo, "start", "--dry-run", "--workers=2", CIFAR100_DIR=cifar)
    assert result.returncode == 0, result.stderr
    lines, root = result.stdout.splitlines(), f"{repo}/runs/paper_budget"
    # Every carried run of the table is restored (not the phase-II study's archive); a finished
    # run that has no archive gets its committed files, so that its seed is reported.
    # An archive older than its run's committed results is not restored (the run's tail would be
    # trained again); the results are copied instead.
    assert lines[:6] == [
        f"launch/carry.sh restore carry/cross_entropy_if100_seed0.tar.gz {root}/cross_entropy_if100_seed0",
        f"launch/carry.sh restore carry/plain_if100_seed1.tar.gz {root}/plain_if100_seed1",
        f"mkdir -p {root}/ldam_drw_if100_seed0",
        f"cp results/paper_budget/ldam_drw_if100_seed0/results.json results/paper_budget/ldam_drw_if100_seed0/"
        f"config.json {root}/ldam_drw_if100_seed0/",
        f"mkdir -p {root}/plain_if100_seed0",
        f"cp results/paper_budget/plain_if100_seed0/results.json results/paper_budget/plain_if100_seed0/config.json "
        f"{root}/plain_if100_seed0/"]
    assert "not restoring carry/ldam_drw_if100_seed0.tar.gz: it predates" in result.stderr
    workers = [line for line in lines if line.startswith("worker ")]
    assert len(workers) == 2 and lines[-1].startswith("watchdog: ")
    if shutil.which("taskset"):
        assert workers[1] == (f"worker 1: taskset -c 1 nice -n 15 {repo}/launch/evidence_queue.sh worker 1 >> "
                              "runs/queue_worker1.log")
    assert queue(repo, "start", "--dry-run", "--workers=0", CIFAR100_DIR=cifar).returncode == 2
    missing = queue(repo, "start", "--dry-run", CIFAR100_DIR=str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no CIFAR-100 at" in missing.stderr


@pytest.mark.skipif(not shutil.which("taskset") or len(os.sched_getaffinity(0)) < 2, reason="needs taskset, 2 cores")
def test_evidence_queue_pins_workers_to_the_cores_it_is_allowed(tmp_path):
    """A lone worker gets every allowed core, not core 0 alone; in a cpuset that allows core 1 only
    (as a Slurm allocation of cores 4-5 would), the worker is pinned to 1, not to 0 (which taskset
    would refuse, killing the worker at its start)."""
    repo = queue_checkout(tmp_path)
    cifar = str(tmp_path / "cifar")
    allowed = sorted(os.sched_getaffinity(0))

    def worker_lines(*prefix):
        result = queue(repo, "start", "--dry-run", "--workers=1", prefix=prefix, CIFAR100_DIR=cifar)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines() if line.startswith("worker ")]

    cores = ",".join(map(str, allowed))
    assert worker_lines() == [f"worker 0: taskset -c {cores} nice -n 15 {repo}/launch/evidence_queue.sh worker 0 >> "
                              "runs/queue_worker0.log"]
    last = allowed[-1]
    assert worker_lines("taskset", "-c", str(last)) == [
        f"worker 0: taskset -c {last} nice -n 15 {repo}/launch/evidence_queue.sh worker 0 >> runs/queue_worker0.log"]


def test_evidence_queue_worker_goes_through_the_queue_and_stops_at_an_interruption(tmp_path):
    """A worker runs reproduce --skip_running for each entry in order, and stops at the first one
    that exits non-zero (3: interrupted), passing its exit code on."""
    repo = queue_checkout(tmp_path)
    calls = tmp_path / "calls"
    stub = tmp_path / "python"  # Records its arguments; exits 3 on the call numbered $FAIL_AT.
    stub.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                    f'[ "$(wc -l < {calls})" -eq "${{FAIL_AT:-0}}" ] && exit 3\nexit 0\n')
    stub.chmod(0o755)
    done = queue(repo, "worker", "0", PYTHON=str(stub), CIFAR100_DIR="/data/cifar")
    assert done.returncode == 0 and "the queue is done" in done.stdout, done.stdout + done.stderr
    lines = calls.read_text().splitlines()
    assert [line.split("--methods=")[1].split()[0] for line in lines] == [
        "ldam_drw", "plain", "async", "cross_entropy_ldam_recipe,logit_adjustment_ldam_recipe,crt_ldam_recipe,"
        "lws_ldam_recipe,tau_norm_ldam_recipe,ncm_ldam_recipe", "focal", "balanced_softmax", "plain,async"]
    assert lines[1] == (f"-m asyncjax.reproduce --budget=full --workdir={repo}/runs/paper_budget --methods=plain "
                        "--seeds=3 --imbalance=100 --skip_running --config.data.cifar100_dir=/data/cifar")
    assert lines[-1].endswith("--seeds=1 --imbalance=50,200 --skip_running --config.data.cifar100_dir=/data/cifar")
    calls.unlink()
    stopped = queue(repo, "worker", "0", PYTHON=str(stub), FAIL_AT="2")
    assert stopped.returncode == 3 and "worker 0 stops: exit 3" in stopped.stdout
    assert len(calls.read_text().splitlines()) == 2


def test_evidence_queue_stop_carries_every_unfinished_run(tmp_path):
    repo = queue_checkout(tmp_path)
    root = repo / "runs" / "paper_budget"
    for name, finished in (("async_if100_seed1", False), ("plain_if100_seed0", True)):
        (root / name / "checkpoints" / "joint" / "12").mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
        if finished:
            (root / name / "results.json").write_text("{}")
    result = queue(repo, "stop")
    assert result.returncode == 0, result.stderr
    assert "carried: async_if100_seed1 " in result.stdout
    assert (repo / "carry" / "async_if100_seed1.tar.gz").stat().st_size > 0
    assert not (repo / "carry" / "plain_if100_seed0.tar.gz").exists()


def test_evidence_queue_stop_ends_the_watchdog_and_its_sleep(tmp_path):
    """`stop` ends the carry watchdog together with the `sleep 1800` it waits in, which would
    otherwise outlive it by up to 30 minutes."""
    repo = queue_checkout(tmp_path)
    watchdog = subprocess.Popen([str(repo / "launch/evidence_queue.sh"), "watchdog"], cwd=repo)
    try:
        sleeping = ""
        for _ in range(100):  # Until the watchdog waits in its sleep.
            sleeping = subprocess.run(["pgrep", "-P", str(watchdog.pid), "sleep"], capture_output=True,
                                      text=True).stdout.split()
            if sleeping:
                break
            subprocess.run(["sleep", "0.1"])
        assert sleeping, "the watchdog never reached its sleep"
        assert queue(repo, "stop").returncode == 0
        assert watchdog.wait(timeout=10) != 0
        for _ in range(50):  # Killed: gone at once, or a zombie until init reaps it.
            alive = subprocess.run(["ps", "-o", "stat=", "-p", sleeping[0]], capture_output=True, text=True).stdout
            if not alive.strip() or alive.strip().startswith("Z"):
                break
            subprocess.run(["sleep", "0.1"])
        assert not alive.strip() or alive.strip().startswith("Z"), f"the watchdog's sleep outlived it: {alive}"
    finally:  # Whatever the outcome, no sleep of this test outlives it.
        watchdog.kill()
        for pid in sleeping:
            subprocess.run(["kill", pid], capture_output=True)
