"""Images/s of the ImageNet-style input pipeline (read + JPEG decode + random-resized
crop + flip, in grain workers) for several worker counts, next to the training step's
images/s on the same machine: does the input keep up with the accelerator?

    python benchmarks/input_pipeline.py --workers=1,2 --images=256 --batch=64

The images are synthetic JPEGs at ImageNet's typical size (500 x 375, quality 90,
smooth content plus noise), written once to --dir, read through the real
`ListFolderSource` and `StreamingImages`. Worker counts alternate (A B A B ...) over
--rounds rounds; medians are reported. The training-step figure comes from
benchmarks/train_step.py (ResNet-50, 224 px, phase I, JAX only) run by this script.
The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from asyncjax.data import pipeline, sources  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
parser.add_argument("--images", type=int, default=256, help="distinct JPEGs written")
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--batches", type=int, default=6, help="batches timed per round")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "asyncjax-jpeg-bench"))
parser.add_argument("--train_step_batch", type=int, default=16, help="0: skip the training-step figure")
args = parser.parse_args()


def write_images(directory: str, count: int) -> str:
    list_path = os.path.join(directory, "bench_list.txt")
    if os.path.exists(list_path):
        return list_path
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    lines = []
    for i in range(count):
        base = np.stack([(x * (i % 7 + 1)) % 256, (y * (i % 5 + 1)) % 256, (x + y + 13 * i) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(directory, f"{i}.jpg"), quality=90)
        lines.append(f"{i}.jpg {i % 10}")
    with open(list_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return list_path


def pipeline_rate(source, workers: int, epoch: int) -> float:
    table = pipeline.StreamingImages(source, workers=workers, per_worker_buffer=2)
    rng = np.random.default_rng(epoch)
    batches = [rng.integers(0, len(source), args.batch) for _ in range(args.batches + 1)]
    iterator = table.batches(batches, training=True, key=(0, 1, epoch))
    next(iterator)  # Worker start-up and the first batch are not timed.
    started = time.perf_counter()
    for _ in iterator:
        pass
    return args.batches * args.batch / (time.perf_counter() - started)


def train_step_rate() -> dict:
    command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_step.py"),
               "--model=resnet50", f"--batch={args.train_step_batch}", "--torch=none", "--rounds=2", "--steps=2",
               "--warmup=1"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    source = sources.ListFolderSource(write_images(args.dir, args.images), args.dir)
    counts = [int(w) for w in args.workers.split(",")]
    rates = {w: [] for w in counts}
    for round_number in range(args.rounds):
        for w in counts:
            rates[w].append(pipeline_rate(source, w, round_number))
    result = {"batch": args.batch, "image": "500x375 JPEG q90 -> 224 random-resized crop",
              "cpu_count": os.cpu_count(), "rounds": args.rounds,
              **{f"pipeline_img_s_{w}_workers": round(statistics.median(r), 1) for w, r in rates.items()},
              "pipeline_all": {str(w): [round(x, 1) for x in r] for w, r in rates.items()}}
    if args.train_step_batch:
        step = train_step_rate()
        result.update(train_step_img_s=round(step["jax_img_s"], 1), train_step_model="resnet50 224px phase I",
                      train_step_batch=args.train_step_batch)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
