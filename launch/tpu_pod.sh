#!/usr/bin/env bash
# A TPU VM slice (e.g. v5litepod-64): create or reuse it, copy this project to every worker,
# install it, mount the bucket that holds data and workdir (gcsfuse), and run
# `python -m asyncjax.main --multihost` on all workers at once.
#
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --bucket=BUCKET [--type=v5litepod-64]
#       [--version=v2-alpha-tpuv5-lite] [--create] [--dry-run]
#       -- --config=configs/inat.py --workdir=/mnt/BUCKET/runs/inat [--config.data...=/mnt/BUCKET/...]
#
# Paths under /mnt/BUCKET are the bucket, mounted on every worker. --dry-run prints the gcloud
# commands instead of running them. Re-running after a preemption resumes from the checkpoints.
set -euo pipefail

dry_run=0
create=0
name=""
zone=""
bucket=""
accelerator="v5litepod-64"
version="v2-alpha-tpuv5-lite"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --create) create=1; shift ;;
    --name=*) name=${1#*=}; shift ;;
    --zone=*) zone=${1#*=}; shift ;;
    --bucket=*) bucket=${1#*=}; shift ;;
    --type=*) accelerator=${1#*=}; shift ;;
    --version=*) version=${1#*=}; shift ;;
    --) shift; break ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "launch/tpu_pod.sh: unknown option $1 (arguments for asyncjax.main go after --)" >&2; exit 2 ;;
  esac
done
for required in name zone bucket; do
  if [[ -z "${!required}" ]]; then
    echo "launch/tpu_pod.sh: --$required is required" >&2
    exit 2
  fi
done
if [[ $# -eq 0 ]]; then
  echo "launch/tpu_pod.sh: give asyncjax.main's arguments after --" >&2
  exit 2
fi
# The bucket's name goes into a command run with sudo on every worker: only the characters of a
# Cloud Storage bucket name (lowercase letters, digits, '-', '_', '.'; a letter or digit at each
# end; gcloud checks the rest), and quoted as well.
if [[ ! "$bucket" =~ ^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$ ]]; then
  echo "launch/tpu_pod.sh: --bucket=$bucket is not a Cloud Storage bucket name (lowercase letters, digits, '-', '_', '.')" >&2
  exit 2
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
main_args=$(printf '%q ' "$@")
if [[ $dry_run -eq 1 ]]; then
  tarball=/tmp/asyncjax-XXXXXXXXXX.tar.gz  # Named by mktemp when it runs.
else
  tarball=$(mktemp /tmp/asyncjax-XXXXXXXXXX.tar.gz)
  trap 'rm -f "$tarball"' EXIT
fi
mount=$(printf '%q' "/mnt/$bucket")
quoted_bucket=$(printf '%q' "$bucket")
remote_setup="set -e; mkdir -p ~/asyncjax && tar -xzf ~/asyncjax.tar.gz -C ~/asyncjax && cd ~/asyncjax && \
python3 -m venv .venv && . .venv/bin/activate && pip install -q -e . 'jax[tpu]>=0.10,<0.12' && \
sudo mkdir -p $mount && (mountpoint -q $mount || sudo gcsfuse --implicit-dirs -o allow_other $quoted_bucket $mount)"
remote_run="cd ~/asyncjax && . .venv/bin/activate && python -m asyncjax.main --multihost $main_args"

run() {
  if [[ $dry_run -eq 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

if [[ $create -eq 1 ]]; then
  run gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$accelerator" --version="$version"
fi
run tar -czf "$tarball" -C "$repo" --exclude=.venv --exclude=.git --exclude=workdirs --exclude=runs --exclude=carry .
run gcloud compute tpus tpu-vm scp "$tarball" "$name:~/asyncjax.tar.gz" --zone="$zone" --worker=all
run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$remote_setup"
run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$remote_run"
