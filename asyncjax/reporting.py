"""Progress a person can follow: a log line every N steps, metrics.jsonl, and
TensorBoard event files (tensorboardX: no TensorFlow needed). Process 0 only."""
from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time

import jax

from asyncjax import files


def _format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0, seconds))))


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch. tensorboardX tries `import torch` at
    import time (for its PyTorch graph export, unused here), and where torch is installed (the
    checkpoint converter's extra) that costs every run about 2 s of start-up. A `None` entry in
    sys.modules makes that import fail fast; it is removed again at once, so that torch stays
    importable for anything else in the process."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class Reporter:
    def __init__(self, workdir: str | None):
        """`workdir=None`: print only (a dry run writes nothing)."""
        self.is_main = jax.process_index() == 0
        self._jsonl = None
        self._log = None
        self._tb = None
        if self.is_main and workdir is not None:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = files.append_lines(os.path.join(workdir, "metrics.jsonl"))
            self._log = files.append_lines(os.path.join(workdir, "log.txt"))  # The printed lines, kept.
            try:
                self._tb = _summary_writer()(os.path.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard files are optional; metrics.jsonl always exists.
                self._tb = None

    def info(self, message: str) -> None:
        if self.is_main:
            line = f"[{time.strftime('%H:%M:%S')}] {message}"
            print(line, flush=True)
            if self._log:
                self._log.write(f"[{time.strftime('%Y-%m-%d')}] {line}\n")
                self._log.flush()

    def write(self, phase: str, step: int, metrics: dict) -> None:
        if not self._jsonl:
            return
        values = {k: float(v) for k, v in metrics.items()}
        finite = {k: v for k, v in values.items() if math.isfinite(v)}
        # Non-finite values (an empty shot group) become null: metrics.jsonl stays strict JSON.
        self._jsonl.write(json.dumps({"phase": phase, "step": step, "time": time.time(),
                                      **{k: finite.get(k) for k in values}}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in finite.items():
                self._tb.add_scalar(f"{phase}/{k}", v, step)

    def train_line(self, phase: str, epoch: int, epochs: int, step: int, total: int, metrics: dict,
                   images_per_second: float, seconds_left: float) -> None:
        terms = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "lr")
        self.info(f"{phase} epoch {epoch + 1}/{epochs} step {step}/{total} {terms} "
                  f"lr {metrics.get('lr', 0.0):.5f} | {images_per_second:.0f} img/s | "
                  f"ETA {_format_duration(seconds_left)}")

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._log:
            self._log.close()
        if self._tb is not None:
            self._tb.close()
        sys.stdout.flush()
