"""launch/ scripts: their --dry-run output, their argument checks, and shellcheck."""
import os
import shutil
import subprocess
import sys

import pytest

from tests import helpers

SCRIPTS = ["launch/local.sh", "launch/slurm_gpu.sh", "launch/tpu_pod.sh", ".ci/run", "benchmarks/gpu_check.sh",
           "benchmarks/suite_time.sh",
           "launch/carry.sh"]


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
