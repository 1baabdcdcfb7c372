#!/usr/bin/env bash
# The evidence queue (issue 30) on this machine: the paper-budget table's unfinished runs, trained
# by one worker per core, each worker pinned to its core and training one 1-device run at a time
# (benchmarks/two_at_once.py: as fast in total as one 2-device run, without its all-reduce hangs).
#
#   launch/evidence_queue.sh start [--dry-run] [--workers=N]  # restore what runs/ lacks, start the workers
#   launch/evidence_queue.sh stop     # SIGTERM (each run checkpoints), then carry every unfinished run
#   launch/evidence_queue.sh status   # the workers, and the last line of each unfinished run's log
#
# Every worker goes through QUEUE below in order, one `python -m asyncjax.reproduce --budget=full
# --skip_running` per entry: it reports a finished seed, resumes an unfinished one, and leaves a
# seed that another worker is training to that worker (its workdir's lock), so the workers share the
# seeds without a plan. Runs live in runs/paper_budget/, each worker's output in
# runs/queue_worker<N>.log. A worker stops at the first entry that fails or is interrupted (exit 3
# after SIGTERM, with a checkpoint); `start` again resumes where it stopped. A watchdog carries the
# unfinished runs every 30 minutes (launch/carry.sh, into carry/), so a machine that goes away
# loses at most that. On a new machine `start` first restores carry/<run>.tar.gz for every run that
# runs/paper_budget/ lacks, and copies the results.json and config.json of results/paper_budget/
# for the finished runs whose checkpoints did not travel (or whose archive predates those results:
# restoring it would train the run's tail again), so that their seeds are reported.
# Environment: CIFAR100_DIR (default ../shared/data/cifar-100-binary), PYTHON (default
# .venv/bin/python where it exists, else python3), NICE (default 15).
set -euo pipefail

# method(s) seeds imbalance(s): the issue's rows in its order; after row 3 the check of row 1's gap,
# the cross-entropy row and its post-hoc family on LDAM-DRW's recipe (experiments.RECIPES).
QUEUE=(
  "ldam_drw 1 100"
  "plain 3 100"
  "async 3 100"
  "cross_entropy_ldam_recipe,logit_adjustment_ldam_recipe,crt_ldam_recipe,lws_ldam_recipe,tau_norm_ldam_recipe,ncm_ldam_recipe 1 100"
  "focal 1 100"
  "balanced_softmax 1 100"
  "plain,async 1 50,200"
)
usage() { awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; }
die() { echo "launch/evidence_queue.sh: $*" >&2; exit 2; }

cd "$(dirname "$0")/.."
# Absolute paths, so that the process patterns below match this checkout's queue and no other.
self=$PWD/launch/evidence_queue.sh
root=$PWD/runs/paper_budget
python=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
cifar=${CIFAR100_DIR:-../shared/data/cifar-100-binary}
nice_level=${NICE:-15}
pattern="asyncjax.reproduce --budget=full --workdir=$root"

# Workdirs of runs that have checkpoints but no results.json.
unfinished() {
  local dir
  for dir in "$root"/*_if*_seed*/; do
    [[ -d "${dir}checkpoints" && ! -f "${dir}results.json" ]] && basename "$dir"
  done
  return 0
}

# Whether carry/NAME.tar.gz is a snapshot from before the run finished (no results.json in it) while
# its results are committed: restoring it would train the run's tail again.
stale() {
  local listing
  [[ -f "results/paper_budget/$1/results.json" ]] || return 1
  # The listing whole, not piped into grep -q: under pipefail tar's SIGPIPE would read as "absent".
  listing=$(tar -tzf "carry/$1.tar.gz" 2>/dev/null) || true
  ! grep -qx results.json <<< "$listing"
}

# The ids of the cores this process may run on, one a line (Linux's Cpus_allowed_list, e.g. 0-3,8);
# nothing where the list is not there.
allowed_cores() {
  local list range ranges
  list=$(awk '/^Cpus_allowed_list:/ { print $2 }' /proc/self/status 2>/dev/null) || return 0
  IFS=, read -ra ranges <<< "$list"
  for range in "${ranges[@]}"; do
    if [[ "$range" == *-* ]]; then seq "${range%-*}" "${range#*-}"; else echo "$range"; fi
  done
}

carry_all() {
  local name
  for name in $(unfinished); do launch/carry.sh save "$root/$name" "carry/$name.tar.gz"; done
}

# The whole command in one function, read before it runs: the workers live for hours, and bash
# reads a script as it goes, so an edit of this file would otherwise reach the running workers.
main() {
  case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    start)
      shift
      dry_run=0
      workers=$(nproc)
      while [[ $# -gt 0 ]]; do
        case "$1" in
          --dry-run) dry_run=1; shift ;;
          --workers=*) workers=${1#*=}; shift ;;
          *) die "unknown option $1" ;;
        esac
      done
      [[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive number, got $workers"
      [[ -f "$cifar/train.bin" ]] || die "no CIFAR-100 at $cifar (set CIFAR100_DIR)"
      if [[ $dry_run -eq 0 ]] && pgrep -f "$pattern" >/dev/null; then
        die "the queue is already running (launch/evidence_queue.sh status); stop it first"
      fi
      run() { if [[ $dry_run -eq 1 ]]; then echo "$*"; else "$@"; fi; }
      [[ $dry_run -eq 1 ]] || mkdir -p "$root"
      for archive in carry/*_if*_seed*.tar.gz; do
        [[ -f "$archive" ]] || continue
        name=$(basename "$archive" .tar.gz)
        [[ -e "$root/$name" ]] && continue
        if stale "$name"; then
          echo "not restoring $archive: it predates its run's committed results (results/paper_budget/$name)" >&2
          continue
        fi
        run launch/carry.sh restore "$archive" "$root/$name"
      done
      for result in results/paper_budget/*_if*_seed*/results.json; do
        [[ -f "$result" ]] || continue
        name=$(basename "$(dirname "$result")")
        if [[ ! -e "$root/$name" ]] && { [[ ! -f "carry/$name.tar.gz" ]] || stale "$name"; }; then
          run mkdir -p "$root/$name"
          run cp "$(dirname "$result")/results.json" "$(dirname "$result")/config.json" "$root/$name/"
        fi
      done
      # Each worker pinned to its share of the cores this process may use (one core each when there
      # are as many workers as cores; both cores for a lone worker on two), where taskset can pin
      # (Linux) and there are no more workers than cores; else the scheduler's choice. The ids come
      # from the allowed list, not 0..n-1: a cpuset (Slurm, containers) may allow cores 4-5 only.
      mapfile -t cores < <(allowed_cores)
      share=0
      command -v taskset >/dev/null && [[ ${#cores[@]} -ge $workers ]] && share=$(( ${#cores[@]} / workers ))
      for ((worker = 0; worker < workers; worker++)); do
        prefix=()
        if [[ $share -gt 0 ]]; then
          mine=("${cores[@]:worker * share:share}")
          prefix=(taskset -c "$(IFS=,; echo "${mine[*]}")")
        fi
        if [[ $dry_run -eq 1 ]]; then
          echo "worker $worker: ${prefix[*]} nice -n $nice_level $self worker $worker >> runs/queue_worker$worker.log"
        else
          JAX_PLATFORMS=cpu PYTHON=$python CIFAR100_DIR=$cifar nohup "${prefix[@]}" nice -n "$nice_level" \
            "$self" worker "$worker" >> "runs/queue_worker$worker.log" 2>&1 &
        fi
      done
      if [[ $dry_run -eq 1 ]]; then
        echo "watchdog: $self watchdog >> runs/queue_watchdog.log"
      else
        nohup "$self" watchdog >> runs/queue_watchdog.log 2>&1 &
        echo "started $workers worker(s) (runs/queue_worker*.log) and the carry watchdog; stop with $self stop"
      fi
      ;;
    worker)  # Internal: one worker's pass through QUEUE.
      for entry in "${QUEUE[@]}"; do
        read -r methods seeds imbalance <<< "$entry"
        command=("$python" -m asyncjax.reproduce --budget=full "--workdir=$root" "--methods=$methods"
                 "--seeds=$seeds" "--imbalance=$imbalance" --skip_running "--config.data.cifar100_dir=$cifar")
        echo "[$(date -u '+%F %T')] worker $2: ${command[*]}"
        status=0
        "${command[@]}" || status=$?
        if [[ $status -ne 0 ]]; then
          echo "[$(date -u '+%F %T')] worker $2 stops: exit $status (3: interrupted, resumable)"
          exit "$status"
        fi
      done
      echo "[$(date -u '+%F %T')] worker $2: the queue is done"
      ;;
    watchdog)  # Internal: carry the unfinished runs every 30 minutes while a worker lives.
      while sleep 1800; do
        pgrep -f "$self worker" >/dev/null || exit 0
        carry_all
      done
      ;;
    stop)
      # The workers' loops first (so none starts its next entry), then their runs.
      # The watchdog and its `sleep 1800` (which would otherwise outlive it by up to 30 minutes).
      for pid in $(pgrep -f "$self watchdog" || true); do
        children=$(pgrep -P "$pid" || true)
        kill "$pid" 2>/dev/null || true
        for child in $children; do kill "$child" 2>/dev/null || true; done
      done
      pkill -TERM -f "$self worker" || true
      pkill -TERM -f "$pattern" || true
      for _ in $(seq 120); do pgrep -f "$pattern" >/dev/null || break; sleep 1; done
      pgrep -f "$pattern" >/dev/null && die "workers still running after 120 s; carry nothing while they write"
      carry_all
      echo "stopped; carried: $(unfinished | tr '\n' ' '). Commit carry/ so that the next machine resumes them."
      ;;
    status)
      pgrep -af "$pattern" || echo "no worker running"
      for name in $(unfinished); do
        echo "$name: $(tail -n 1 "$root/$name/log.txt" 2>/dev/null)"
      done
      ;;
    *) usage >&2; exit 2 ;;
  esac
}
main "$@"; exit
