#!/usr/bin/env bash
# Carries an asyncjax run's workdir to another machine: what a resume needs, in one archive.
#
#   launch/carry.sh save WORKDIR ARCHIVE.tar.gz      # while the run goes on, or after it stopped
#   launch/carry.sh restore ARCHIVE.tar.gz WORKDIR   # then the run's own command resumes it there
#
# For machines that take their disk with them when they go (preemptible VMs without a shared
# filesystem, this project's CPU machines): the archive holds config.json, metrics.jsonl, log.txt,
# memory_bank.npz and results.json where they exist, and the latest finished checkpoint of each phase
# (a resume reads only that one). Older checkpoints, half-written ones (Orbax's *.orbax-checkpoint-tmp-*)
# and TensorBoard events stay behind. `save` writes ARCHIVE whole or not at all; `restore` refuses a
# WORKDIR that exists, so a carried run never mixes with another.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; }
die() { echo "launch/carry.sh: $*" >&2; exit 2; }

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  save)
    [[ $# -eq 3 ]] || die "usage: launch/carry.sh save WORKDIR ARCHIVE.tar.gz"
    workdir=$2 archive=$3
    [[ -f "$workdir/config.json" ]] || die "$workdir holds no config.json (not a workdir of asyncjax.main)"
    members=()
    for name in config.json metrics.jsonl log.txt memory_bank.npz results.json; do
      if [[ -e "$workdir/$name" ]]; then members+=("$name"); fi
    done
    for phase in "$workdir"/checkpoints/*/; do
      [[ -d "$phase" ]] || continue
      # Finished steps are directories named by their number alone.
      latest=$(find "$phase" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | grep -E '^[0-9]+$' | sort -n | tail -n 1 || true)
      if [[ -n "$latest" ]]; then members+=("checkpoints/$(basename "$phase")/$latest"); fi
    done
    mkdir -p "$(dirname "$archive")"  # a first save into carry/ of a fresh clone
    tar -czf "$archive.tmp" -C "$workdir" "${members[@]}"
    mv "$archive.tmp" "$archive"
    echo "saved ${members[*]} of $workdir to $archive"
    ;;
  restore)
    [[ $# -eq 3 ]] || die "usage: launch/carry.sh restore ARCHIVE.tar.gz WORKDIR"
    archive=$2 workdir=$3
    [[ -f "$archive" ]] || die "no archive $archive"
    [[ ! -e "$workdir" ]] || die "$workdir exists: restore into a new workdir"
    mkdir -p "$workdir.tmp"
    tar -xzf "$archive" -C "$workdir.tmp"
    mv "$workdir.tmp" "$workdir"
    echo "restored $archive to $workdir: run the run's own command with --workdir=$workdir to resume"
    ;;
  *) usage >&2; exit 2 ;;
esac
