"""Shared test fixtures. Tests run offline and on CPU."""
import os
import pathlib

import pytest

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
