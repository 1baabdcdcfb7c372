"""Shared test fixtures. Tests run offline and on CPU."""
import os
import pathlib

import pytest


def private_cache_dir(path: str) -> str:
    """`path`, created if needed, mode 0700 and owned by this user: JAX loads executables from its
    compilation cache, so a folder others can write to (a fixed name under the shared /tmp) would
    let them plant code that the tests run. Refuses a folder of another user; closes one of ours
    that is open to others."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.stat(path)
    if info.st_uid != os.getuid():
        raise RuntimeError(f"test compilation cache {path} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)  # Ours: close it to others before JAX reads anything from it.
    return path


# One persistent XLA compilation cache for the whole test session (and its xdist workers), the CLI
# runs included (subprocesses inherit the environment): most of them compile the same tiny models,
# and a cached executable is the same program, so results are unchanged. Per user, private.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", private_cache_dir(
    os.path.join(os.path.expanduser("~"), ".cache", "asyncjax", "tests-xla")))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# LLVM at optimisation level 1 for the CPU programs the tests compile (the workers' and every CLI
# run's: subprocesses inherit it). Most test programs run a few steps once, so compiling is most
# of their cost; measured on the Zen 4 machine, a ResNet-8 init compiled in 2.0 s instead of 7.1 s
# and its training step in 1.9 s instead of 2.8 s, and ran no slower (RESULTS.md "Test suite").
# The same programs (XLA's own optimisations are untouched); the flag is part of the compilation
# cache's key, so the tests never mix executables of the two levels. Runs outside the tests keep XLA's default.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1").strip()
# CI installs libtpu (for compile_check's tests): without this, every process would look for a
# TPU at start-up and print libtpu's warnings into the output that the CLI tests read.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CIFAR_DIR = REPO.parent / "shared" / "data" / "cifar-100-binary"


@pytest.fixture(scope="session")
def cifar100_dir() -> str:
    """Real CIFAR-100 in the binary layout: $ASYNCJAX_CIFAR100_DIR or ../shared/data/cifar-100-binary.

    Outside CI a machine without the data skips these tests; in CI (CI=true) a
    missing directory is a failure, so that CI never passes by skipping.
    """
    path = os.environ.get("ASYNCJAX_CIFAR100_DIR", str(DEFAULT_CIFAR_DIR))
    if not os.path.isfile(os.path.join(path, "train.bin")):
        message = f"real CIFAR-100 not found at {path} (set ASYNCJAX_CIFAR100_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> str:
    """CIFAR-100 in the binary layout, 20 training and 2 test images per class, colour by class."""
    from tests import helpers
    return helpers.write_tiny_cifar(tmp_path_factory.mktemp("tiny_cifar"))
