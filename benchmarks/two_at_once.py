"""Two training runs on one CPU: side by side on 1 XLA device each, or one after the other on 2?

    python benchmarks/two_at_once.py [--repeats=2] [--rounds=6] [--steps=20] [--phase=1]

Alternates (A B C A B C ...) the ways of giving a 2-core machine two runs' worth of steps:
  A: one process, the batch sharded over 2 XLA host devices (one run after the other);
  B: two processes started together, 1 XLA device each (two runs side by side);
  C: as B, each process pinned to a core of its own (sched_setaffinity, as `taskset -c N` does), so
     that XLA sizes its thread pool to one core and the two do not take turns on both.
Each process is benchmarks/train_step.py (the package's own jitted step, ResNet-32, batch 64,
no PyTorch), --rounds rounds of --steps steps after a warm-up; its median round is its rate, so
the few rounds one process of B may run alone while the other compiles barely move it. The
total images/s of B is the sum of its two processes. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--repeats", type=int, default=2, help="A B pairs")
parser.add_argument("--rounds", type=int, default=6)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--phase", type=int, choices=[1, 2], default=1)
parser.add_argument("--batch", type=int, default=64)
args = parser.parse_args()


def launch(devices: int, core: int | None = None) -> subprocess.Popen:
    """benchmarks/train_step.py on `devices` XLA host devices; pinned to `core` when given."""
    command = [sys.executable, os.path.join(HERE, "train_step.py"), "--model=resnet32", f"--batch={args.batch}",
               f"--phase={args.phase}", "--torch=none", f"--devices={devices}", f"--rounds={args.rounds}",
               f"--steps={args.steps}", "--warmup=3"]
    pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, preexec_fn=pin)


def result(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        sys.exit(f"benchmarks/train_step.py failed (exit {process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


cores = sorted(os.sched_getaffinity(0))
if len(cores) < 2:
    sys.exit(f"two_at_once needs 2 cores; this process may use {cores}")
one_two_device, two_one_device, two_pinned, cpu = [], [], [], ""
for repeat in range(args.repeats):
    a = result(launch(2))
    one_two_device.append(a["jax_img_s"])
    b = [result(p) for p in [launch(1), launch(1)]]
    two_one_device.append(sum(r["jax_img_s"] for r in b))
    c = [result(p) for p in [launch(1, cores[0]), launch(1, cores[1])]]
    two_pinned.append(sum(r["jax_img_s"] for r in c))
    cpu = a["cpu"]
    print(f"repeat {repeat}: one run on 2 devices {a['jax_img_s']:.1f} img/s; two runs on 1 device each "
          f"{b[0]['jax_img_s']:.1f} + {b[1]['jax_img_s']:.1f} = {two_one_device[-1]:.1f} img/s; the same pinned "
          f"to a core each {c[0]['jax_img_s']:.1f} + {c[1]['jax_img_s']:.1f} = {two_pinned[-1]:.1f} img/s", flush=True)
summary = {"cpu": cpu, "phase": args.phase, "batch": args.batch, "rounds": args.rounds, "steps": args.steps,
           "one_run_two_devices_img_s": one_two_device, "two_runs_one_device_total_img_s": two_one_device,
           "two_runs_pinned_total_img_s": two_pinned,
           "ratio_side_by_side": statistics.median(two_one_device) / statistics.median(one_two_device),
           "ratio_pinned": statistics.median(two_pinned) / statistics.median(one_two_device)}
print(json.dumps(summary))
