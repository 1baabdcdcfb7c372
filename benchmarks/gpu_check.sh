#!/usr/bin/env bash
# One prepared check for a lent GPU (about 8 minutes on an H100): train-step throughput and model
# FLOP utilisation of asyncjax next to PyTorch (bf16 AMP, channels_last), then, while time is left,
# 200-epoch CIFAR-100-LT IF100 runs of async and plain. Results go to $OUT (or gpu_check_out/),
# a short table last.
#
#   benchmarks/gpu_check.sh [--dry-run] [--budget-seconds=480] [--peak-tflops=989]
#
# --dry-run: tiny sizes on whatever device JAX sees (the CPU here), to know the script works
# before a GPU is lent. Packages missing on the GPU machine (grain, ml-collections,
# tensorflow-datasets, ...) travel as wheels in .whl/ (see the device tool's README); they are
# installed to /tmp/site when .whl/ exists. CIFAR-100 is read from data/cifar-100-binary or
# ../shared/data/cifar-100-binary, whichever exists (copy it into the tree to carry it).
set -euo pipefail

dry_run=0
budget=480
peak_tflops=989   # H100 SXM dense bf16; H200 is the same chip's compute.
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --budget-seconds=*) budget=${1#*=}; shift ;;
    --peak-tflops=*) peak_tflops=${1#*=}; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "benchmarks/gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
start=$(date +%s)
out=${OUT:-gpu_check_out}
mkdir -p "$out"
python=${PYTHON:-python3}
if [[ -d .whl ]]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
cifar=""
for candidate in data/cifar-100-binary ../shared/data/cifar-100-binary; do
  [[ -f $candidate/train.bin ]] && cifar=$candidate && break
done

(nvidia-smi || echo "no nvidia-smi") > "$out/device.txt" 2>&1
"$python" -c "import jax, sys; print(sys.version); print('jax', jax.__version__, jax.devices())" >> "$out/device.txt" 2>&1

left() { echo $(( budget - ($(date +%s) - start) )); }

# 1) Train steps: (model, batch, image size, phase, JAX variants timed in the same rounds).
# scan,unrolled: the device-resident path, --dispatch steps per call, as a loop and unrolled;
# phase1: phase I's step beside phase II's (goal: phase II <= 1.5x phase I's time).
# taps: the per-tap conv weight gradient (models/conv.py; the CPU default) against XLA's own.
if [[ $dry_run -eq 1 ]]; then
  configs=("resnet32 8 32 1 scan,unrolled,taps" "resnet32 8 32 2 phase1" "resnet50 4 64 1 -")
  timing=(--rounds=1 --steps=1 --warmup=1 --dispatch=1)
else
  # Most valuable first (ResNet-50 sets the 224-px projections), so that a run cut short by the
  # lease still brings back the figures that matter; the unrolled variant compiles longest.
  configs=("resnet50 256 224 1 -" "resnet32 512 32 1 -" "resnet32 512 32 2 phase1"
           "resnet32 64 32 1 scan,unrolled,taps")
  timing=(--rounds=5 --steps=10 --warmup=3 --dispatch=10)
fi
: > "$out/train_step.jsonl"
for config in "${configs[@]}"; do
  read -r model batch size phase also <<< "$config"
  [[ $also == - ]] && also=""
  for dtype in float32 bfloat16; do
    [[ $model == resnet50 && $dtype == float32 ]] && continue
    "$python" benchmarks/train_step.py --model="$model" --batch="$batch" --image_size="$size" --phase="$phase" \
      --dtype="$dtype" --torch=channels_last --peak_tflops="$peak_tflops" --also="$also" "${timing[@]}" \
      2> "$out/train_step_${model}_${batch}_${phase}_${dtype}.log" | tail -n 1 >> "$out/train_step.jsonl" \
      || echo "{\"model\": \"$model\", \"batch\": $batch, \"phase\": $phase, \"dtype\": \"$dtype\", \"failed\": true}" \
         >> "$out/train_step.jsonl"
  done
done

# 2) Full CIFAR-100-LT IF100 runs while the budget allows (each resumable if cut off).
runs=()
if [[ -n $cifar ]]; then
  for method in async plain; do
    if [[ $dry_run -eq 1 ]]; then
      extra=("--config=configs/cifar100_lt.py:imbalance=100,smoke=True" --config.steps_per_dispatch=4)
    else
      # Device-resident images, 20 steps per dispatch: the GPU does not wait on Python.
      extra=(--config=configs/cifar100_lt.py:imbalance=100 --config.eval_every_epochs=50
             --config.steps_per_dispatch=20 --config.log_every_steps=100)
    fi
    remaining=$(left)
    if [[ $remaining -lt 60 ]]; then
      echo "skipped $method: ${remaining}s left" >> "$out/runs.txt"
      continue
    fi
    timeout "$remaining" "$python" -m asyncjax.main "${extra[@]}" --workdir="$out/cifar100_lt_if100_$method" \
      --config.data.cifar100_dir="$cifar" --config.method="$method" > "$out/run_$method.log" 2>&1 \
      || echo "$method stopped (status $?) after the time budget; the workdir resumes" >> "$out/runs.txt"
    runs+=("$method")
  done
else
  echo "no CIFAR-100 binary directory found: no training runs" >> "$out/runs.txt"
fi

# 3) The short table, last.
"$python" - "$out" "${runs[@]}" <<'PY'
import json, os, sys
out, runs = sys.argv[1], sys.argv[2:]
print("model     batch phase dtype     jax img/s  torch img/s  ratio  GFLOP/img  MFU")
for line in open(os.path.join(out, "train_step.jsonl")):
    r = json.loads(line)
    if r.get("failed"):
        print(f"{r['model']:9} {r['batch']:5} {r['phase']:5} {r['dtype']:9} FAILED (see its log)")
        continue
    print(f"{r['model']:9} {r['batch']:5} {r['phase']:5} {r['dtype']:9} {r['jax_img_s']:9.1f} "
          f"{r.get('torch_img_s', float('nan')):12.1f} {r.get('ratio', float('nan')):6.2f} "
          f"{r['jax_gflop_per_image']:9.2f} {r.get('jax_mfu', float('nan')):5.3f}")
    variants = {k[4:-6]: v for k, v in r.items() if k.startswith("jax_") and k.endswith("_img_s") and k != "jax_img_s"}
    if variants:
        print("    same rounds: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in variants.items()))
for method in runs:
    path = os.path.join(out, f"cifar100_lt_if100_{method}", "results.json")
    if os.path.exists(path):
        r = json.load(open(path))
        print(f"cifar100_lt IF100 {method}: overall {r['overall']:.2f} many {r['many']:.2f} "
              f"medium {r['medium']:.2f} few {r['few']:.2f} wall {sum(r['wall_time_s'].values()):.0f}s")
    else:
        print(f"cifar100_lt IF100 {method}: not finished in the budget")
PY
echo "total $(( $(date +%s) - start ))s; files in $out"
