#!/usr/bin/env bash
# Runs asyncjax on this machine: its GPUs / TPU if JAX sees them, else the CPU.
#
#   launch/local.sh [--dry-run] [--cpu-devices=N] -- --config=configs/cifar100_lt.py --workdir=DIR [...]
#
# --cpu-devices=N splits the CPU into N XLA host devices (the batch is sharded over them; about
# 1.3x on a 2-core CPU). Everything after `--` goes to `python -m asyncjax.main`.
# With N > 1 it also raises XLA:CPU's collective timeout from 40 s to 10 min: a run that shares the
# CPU at low priority (nice 19) can wait that long for a core, and XLA aborts the whole process when
# one device's thread is 40 s late to an all-reduce ("Termination timeout for all reduce"). Even so,
# a 2-device run at nice 5 beside the test suite once waited past 10 min and died (session 12): on a
# shared CPU run several 1-device runs side by side instead (the same images/s in total,
# benchmarks/two_at_once.py).
set -euo pipefail

dry_run=0
cpu_devices=0
python=${PYTHON:-python3}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --cpu-devices=*) cpu_devices=${1#*=}; shift ;;
    --) shift; break ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "launch/local.sh: unknown option $1 (arguments for asyncjax.main go after --)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "launch/local.sh: give asyncjax.main's arguments after --, e.g. -- --config=configs/cifar100_lt.py --workdir=DIR" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
env_prefix=()
if [[ "$cpu_devices" -gt 1 ]]; then
  env_prefix=(env "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$cpu_devices --xla_cpu_collective_call_terminate_timeout_seconds=600")
fi
command=("${env_prefix[@]}" "$python" -m asyncjax.main "$@")
if [[ $dry_run -eq 1 ]]; then
  printf '%q ' "${command[@]}"; echo
  exit 0
fi
exec "${command[@]}"
