"""Two training runs on one CPU: side by side on 1 XLA device each, or one after the other on 2?

    python benchmarks/two_at_once.py [--repeats=2] [--rounds=6] [--steps=20] [--phase=1]

Alternates (A B A B ...) the two ways of giving a 2-core machine two runs' worth of steps:
  A: one process, the batch sharded over 2 XLA host devices (one run after the other);
  B: two processes started together, 1 XLA device each (two runs side by side).
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


def launch(devices: int) -> subprocess.Popen:
    command = [sys.executable, os.path.join(HERE, "train_step.py"), "--model=resnet32", f"--batch={args.batch}",
               f"--phase={args.phase}", "--torch=none", f"--devices={devices}", f"--rounds={args.rounds}",
               f"--steps={args.steps}", "--warmup=3"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})


def result(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        sys.exit(f"benchmarks/train_step.py failed (exit {process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


one_two_device, two_one_device, cpu = [], [], ""
for repeat in range(args.repeats):
    a = result(launch(2))
    one_two_device.append(a["jax_img_s"])
    pair = [launch(1), launch(1)]
    b = [result(p) for p in pair]
    two_one_device.append(sum(r["jax_img_s"] for r in b))
    cpu = a["cpu"]
    print(f"repeat {repeat}: one run on 2 devices {a['jax_img_s']:.1f} img/s; two runs on 1 device each "
          f"{b[0]['jax_img_s']:.1f} + {b[1]['jax_img_s']:.1f} = {two_one_device[-1]:.1f} img/s", flush=True)
summary = {"cpu": cpu, "phase": args.phase, "batch": args.batch, "rounds": args.rounds, "steps": args.steps,
           "one_run_two_devices_img_s": one_two_device, "two_runs_one_device_total_img_s": two_one_device,
           "ratio_side_by_side": statistics.median(two_one_device) / statistics.median(one_two_device)}
print(json.dumps(summary))
