"""launch/ scripts: their --dry-run output, their argument checks, and shellcheck."""
import os
import shutil
import subprocess
import sys

import pytest

from tests import helpers

SCRIPTS = ["launch/local.sh", "launch/slurm_gpu.sh", "launch/tpu_pod.sh", ".ci/run", "benchmarks/gpu_check.sh",
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
