"""Shared test fixtures. Tests run offline and on CPU."""
import os
import pathlib

import pytest

# One persistent XLA compilation cache for the whole test session, the CLI runs
# (subprocesses inherit the environment) included: most of them compile the same
# tiny models, and a cached executable is the same program, so results are unchanged.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                                "asyncjax-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
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
