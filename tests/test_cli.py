"""One exit-code scheme for every command line (asyncjax/cli.py): 0 done and --help, 2 bad input
with one line on stderr, 3 interrupted (tests/test_reliability.py), 1 only for a bug."""
import subprocess
import sys

import pytest

from tests import helpers


def _run(*args):
    result = subprocess.run([sys.executable, "-m", *args], cwd=helpers.REPO, env=helpers.cli_env(),
                            capture_output=True, text=True, timeout=300)
    # XLA's C++ logging (lines like 'W1128 ...') is not ours; everything else on stderr is.
    errors = [line for line in result.stderr.splitlines()
              if line and (line.startswith("error:") or not (line[:1] in "WIE" and line[1:5].isdigit()))]
    return result.returncode, result.stdout, errors


@pytest.mark.parametrize("module", ["asyncjax.main", "asyncjax.reproduce", "asyncjax.export", "asyncjax.convert",
                                    "asyncjax.plot", "asyncjax.predict"])
def test_help_exits_0(module):
    code, out, errors = _run(module, "--help")
    assert code == 0 and ("--workdir" in out or "--input" in out), out
    if module == "asyncjax.main":
        assert "Exit status" in out and "ldam_drw" in out


@pytest.mark.parametrize("args,message", [
    (["asyncjax.main", "--workdir=/tmp/never"], "--config=FILE is required"),
    (["asyncjax.main", "--config", "configs/cifar100_lt.py:smoke=True", "--workdir=/tmp/never",
      "--config.phase1.decay_fractions=(0.8,"], "expected a tuple"),
    (["asyncjax.main", "--config=configs/cifar100_lt.py", "--workdir=/tmp/never", "--multihost",
      "--config.data.cifar100_dir=/nonexistent"], "--multihost found no cluster"),
    (["asyncjax.main", "--config=configs/cifar100_lt.py", "--workdir=/tmp/never",
      "--config.data.cifar100_dir=/nonexistent"], "does not exist"),
    (["asyncjax.convert", "--output=/tmp/never.npz"], "--input"),
    (["asyncjax.reproduce", "--workdir=/tmp/never", "--methods=plainn"], "unknown methods"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    code, _, errors = _run(*args)
    assert code == 2, errors
    assert len(errors) == 1 and errors[0].startswith("error:") and message in errors[0], errors


def test_dry_run_validates_estimates_and_writes_nothing(tmp_path):
    data = helpers.write_tiny_cifar(tmp_path / "data")
    workdir = tmp_path / "wd"
    code, out, errors = _run("asyncjax.main", "--config=configs/cifar100_lt.py:smoke=True", f"--workdir={workdir}",
                             f"--config.data.cifar100_dir={data}", *helpers.TINY, "--dry_run")
    assert code == 0, errors
    assert "phase1: " in out and "phase2: " in out and "estimated total" in out and "img/s" in out
    assert "resnet8" in out  # The resolved configuration.
    assert not workdir.exists()
    code, _, errors = _run("asyncjax.main", "--config=configs/cifar100_lt.py:smoke=True", f"--workdir={workdir}",
                           f"--config.data.cifar100_dir={data}", "--config.phase2.schedule=cos", "--dry_run")
    assert code == 2 and "phase2.schedule" in errors[0] and not workdir.exists()
