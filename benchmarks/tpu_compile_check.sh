#!/usr/bin/env bash
# The README's / RESULTS.md's TPU compile table: every config's programs compiled for a TPU
# topology on this CPU host (asyncjax.compile_check; needs pip install -e ".[tpu]").
# Usage: benchmarks/tpu_compile_check.sh OUT_DIR   (one NAME.txt with the table and one NAME.json
# with the JSON line per row; about an hour on a 2-core machine, ResNet-152 the longest).
set -euo pipefail
out="${1:?usage: $0 OUT_DIR}"
mkdir -p "$out"
row() {
  local name="$1"; shift
  echo "=== $name: $*"
  python -m asyncjax.compile_check "$@" | tee "$out/$name.txt"
  tail -n 1 "$out/$name.txt" > "$out/$name.json"
}
bf16=--config.model.dtype=bfloat16
row cifar100_lt_v5e_2x2 --config=configs/cifar100_lt.py --topology=v5e:2x2 "$bf16"
row imagenet_lt_r50_v5e_4x4 --config=configs/imagenet_lt.py --topology=v5e:4x4 "$bf16"
row inat_r50_v5e_8x8_model1 --config=configs/inat.py --topology=v5e:8x8 "$bf16" --config.mesh.model=1
row inat_r50_v5e_8x8_model8 --config=configs/inat.py --topology=v5e:8x8 "$bf16" --config.mesh.model=8
row places_lt_r152_v5e_4x4 --config=configs/places_lt.py --topology=v5e:4x4 "$bf16"
