#!/usr/bin/env bash
# asyncjax's test suite, timed as CI sees it: `.ci/run` on a clean clone of HEAD with ../shared beside it,
# a fresh private compilation cache, every test's duration (pytest --durations=0), and the seconds
# in all. Background runs named by --pause are stopped (SIGSTOP) for the measurement and continued
# after, so that the figure is an idle machine's; name the CPU (lscpu) beside it in RESULTS.md.
#
#   benchmarks/suite_time.sh [--workers=2] [--pause=PATTERN] [--out=/tmp/suite_time]
#
# PATTERN is a `pgrep -f` pattern, e.g. 'asyncjax.main --config=configs/cifar100_lt.py|asyncjax.reproduce'.
# Writes OUT/ci.log (the whole output; the durations at its end) and prints the summary lines.
set -euo pipefail

workers=2
pause=""
out=/tmp/suite_time
for arg in "$@"; do
  case "$arg" in
    --workers=*) workers="${arg#*=}" ;;
    --pause=*) pause="${arg#*=}" ;;
    --out=*) out="${arg#*=}" ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
shared="$(cd "$repo/.." && pwd)/shared"
[[ -d "$shared" ]] || { echo "no ../shared beside $repo" >&2; exit 2; }
rm -rf "$out"
mkdir -p "$out"
git clone -q "$repo" "$out/main"
ln -s "$shared" "$out/shared"
# The clone's own .ci/run, with the worker count and every test's duration.
sed -i -e "s/pytest -q -n 2/pytest -q -n $workers/" -e "s/--durations=25/--durations=0/" "$out/main/.ci/run"
mkdir -m 700 "$out/cache" "$out/cache/tests-xla"
pids=""
continue_paused() { for p in $pids; do kill -CONT "$p" 2>/dev/null || true; done; }
trap continue_paused EXIT
if [[ -n "$pause" ]]; then
  # Not this script (its own command line holds the pattern) nor what pgrep's subshell was.
  for p in $(pgrep -f "$pause" || true); do
    if [[ "$p" != "$$" ]] && ! grep -q suite_time "/proc/$p/cmdline" 2>/dev/null && kill -STOP "$p" 2>/dev/null; then
      pids="$pids $p"
    fi
  done
fi
start=$(date +%s)
set +e
(cd "$out/main" && CI=true JAX_COMPILATION_CACHE_DIR="$out/cache/tests-xla" bash .ci/run) > "$out/ci.log" 2>&1
status=$?
set -e
seconds=$(( $(date +%s) - start ))
continue_paused
{
  echo "commit $(git -C "$out/main" rev-parse --short HEAD), workers $workers, paused: ${pids:-none}"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') (family $(lscpu | sed -n 's/^CPU family: *//p') model $(lscpu | sed -n 's/^Model: *//p'))"
  grep -E "passed|failed" "$out/ci.log" | tail -1
  echo ".ci/run exit $status, $seconds s in all"
} | tee "$out/summary.txt"
exit "$status"
