"""The evidence queue's CIFAR-100-LT rows side by side on one lent GPU (asyncjax issue 30).

    python benchmarks/gpu_queue.py --rows=plain@1,plain@2,async@1,async@2 --imbalance=100 \
        --budget_seconds=480 [--pack=.cifar_pack] [--smoke]

Each row `METHOD@SEED` is the queue's own row (`experiments.row_config`, the config `reproduce
--budget=full` gives it; `cross_entropy` is plain with the linear head), trained in its own process
at the same time as the others (small batches leave one GPU mostly idle), in
/tmp/gpu_queue/METHOD_ifIMB_seedSEED. CIFAR-100 comes from --cifar100_dir, else data/cifar-100-binary,
else the carried pack (asyncjax.data.cifar_pack), unpacked and checked by SHA-256 first. When the
budget runs out, every run still going gets SIGTERM (it checkpoints and exits 3, resumable).

Back in $OUT (a device call returns at most 8 files): `gpu_queue.txt` (the device, each row's
status and figures) and `gpu_queue.tar.gz` (each row's results.json, config.json, log.txt and
metrics.jsonl; an unfinished row's checkpoints and bank too, to go on elsewhere with
`launch/carry.sh`-style restore). `--smoke` runs the rows at the smoke budget on whatever device
JAX sees: the script checked on a CPU before a GPU is lent.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One process trains one row: the queue's own config, run under the command line's exit codes.
CHILD = ("import sys; from asyncjax import cli, experiments, train; "
         "m, imb, seed, budget, wd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]; "
         "config = experiments.row_config(m, imb, seed, budget, sys.argv[6:]); "
         "cli.guarded(lambda: train.run(config, wd))")


def cifar_dir(args) -> str:
    if args.cifar100_dir:
        return args.cifar100_dir
    local = os.path.join(REPO, "data", "cifar-100-binary")
    if os.path.isfile(os.path.join(local, "train.bin")):
        return local
    from asyncjax.data import cifar_pack
    target = "/tmp/gpu_queue_cifar"
    if not os.path.isfile(os.path.join(target, cifar_pack.PACKED)):
        cifar_pack.unpack(args.pack, target)  # Refuses a pack whose rows differ from the originals.
    return target


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", required=True, help="METHOD@SEED,...")
    parser.add_argument("--imbalance", type=int, default=100)
    parser.add_argument("--budget_seconds", type=int, default=480)
    parser.add_argument("--pack", default=os.path.join(REPO, ".cifar_pack"))
    parser.add_argument("--cifar100_dir", default="")
    parser.add_argument("--root", default="/tmp/gpu_queue")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_queue_out"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    rows = [(r.split("@")[0], int(r.split("@")[1])) for r in args.rows.split(",")]
    data = cifar_dir(args)
    # Device-resident images and 20 steps per dispatch: the GPU does not wait on Python.
    overrides = [f"--config.data.cifar100_dir={data}", "--config.steps_per_dispatch=20",
                 "--config.log_every_steps=100"]
    codes = run_rows(rows, args.imbalance, "smoke" if args.smoke else "full", overrides, args.budget_seconds,
                     args.root, args.out, f"data {data}")
    return 0 if all(code == 0 for code in codes) else 1


def run_rows(rows, imbalance: int, budget: str, overrides, budget_seconds: float, root: str, out: str,
             note: str = "", child: str = CHILD) -> list:
    """Trains the rows side by side (`child` is each process's Python code), stops what is still
    running at the budget's end (SIGTERM), writes OUT/gpu_queue.txt and OUT/gpu_queue.tar.gz;
    returns the processes' exit codes."""
    start = time.time()
    os.makedirs(out, exist_ok=True)
    os.makedirs(root, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_PYTHON_CLIENT_PREALLOCATE="false")  # Several processes share the one GPU's memory.
    children = {}
    for method, seed in rows:
        name = f"{method}_if{imbalance}_seed{seed}"
        workdir = os.path.join(root, name)
        with open(os.path.join(root, f"{name}.out"), "a") as log:
            children[name] = (subprocess.Popen(
                [sys.executable, "-c", child, method, str(imbalance), str(seed), budget, workdir, *overrides],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), workdir)
    deadline = start + budget_seconds
    while time.time() < deadline and any(p.poll() is None for p, _ in children.values()):
        time.sleep(min(5, max(0.1, deadline - time.time())))
    for process, _ in children.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # Checkpoint and exit 3: resumable.
    for process, _ in children.values():
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    lines = [f"device: {device()}", f"budget {budget}, {time.time() - start:.0f} s in all, {note}".rstrip(", ")]
    with tarfile.open(os.path.join(out, "gpu_queue.tar.gz"), "w:gz") as tar:
        for name, (process, workdir) in children.items():
            results = os.path.join(workdir, "results.json")
            finished = os.path.isfile(results)
            kept = ["results.json", "config.json", "log.txt", "metrics.jsonl"]
            if not finished:
                kept += ["checkpoints", "memory_bank.npz"]
            for item in kept:
                if os.path.exists(os.path.join(workdir, item)):
                    tar.add(os.path.join(workdir, item), arcname=f"{name}/{item}")
            tar.add(os.path.join(root, f"{name}.out"), arcname=f"{name}/process.out")
            if finished:
                with open(results) as f:
                    r = json.load(f)
                lines.append(f"{name}: exit {process.returncode}, overall {r['overall']:.2f} many {r['many']:.2f} "
                             f"medium {r['medium']:.2f} few {r['few']:.2f}, wall {sum(r['wall_time_s'].values()):.0f} s")
            else:
                lines.append(f"{name}: exit {process.returncode}, not finished (checkpoints in the archive)")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(out, "gpu_queue.txt"), "w") as f:
        f.write(text + "\n")
    return [process.returncode for process, _ in children.values()]


def device() -> str:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "no nvidia-smi (" + os.uname().machine + ")"


if __name__ == "__main__":
    sys.exit(main())
