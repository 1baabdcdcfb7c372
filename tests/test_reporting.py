"""asyncjax/reporting.py: the files a run's progress goes to."""
import subprocess
import sys

from tests import helpers


def test_tensorboard_files_without_importing_torch(tmp_path):
    """tensorboardX imports torch when it can (about 2 s of every run's start-up where the
    converter's torch is installed); the reporter writes event files without it, and torch stays
    importable afterwards."""
    code = f"""
import sys
from asyncjax import reporting
reporter = reporting.Reporter({str(tmp_path)!r})
reporter.write("phase1", 1, {{"loss": 0.5}})
assert "torch" not in sys.modules, "torch was imported"
import torch
print("ok", torch.__name__)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=helpers.REPO, env=helpers.cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok torch" in result.stdout, result.stderr[-2000:]
    assert list((tmp_path / "tensorboard").iterdir())
