#!/usr/bin/env bash
# Multi-node GPU training of asyncjax under SLURM: one process per GPU, jax.distributed.initialize() reads
# the SLURM environment (--multihost), the batch is sharded over every GPU of every node.
#
#   launch/slurm_gpu.sh [--dry-run] [--nodes=2] [--gpus-per-node=8] [--partition=P] [--time=24:00:00]
#                       [--venv=PATH] -- --config=configs/imagenet_lt.py --workdir=/shared/fs/DIR [...]
#
# The workdir and the data must be on a file system every node sees. --dry-run prints the batch
# script instead of submitting it with sbatch. Re-submitting the same command resumes the run.
set -euo pipefail

dry_run=0
nodes=1
gpus_per_node=8
partition=""
time_limit="24:00:00"
venv=".venv"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --nodes=*) nodes=${1#*=}; shift ;;
    --gpus-per-node=*) gpus_per_node=${1#*=}; shift ;;
    --partition=*) partition=${1#*=}; shift ;;
    --time=*) time_limit=${1#*=}; shift ;;
    --venv=*) venv=${1#*=}; shift ;;
    --) shift; break ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "launch/slurm_gpu.sh: unknown option $1 (arguments for asyncjax.main go after --)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "launch/slurm_gpu.sh: give asyncjax.main's arguments after --" >&2
  exit 2
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
main_args=$(printf '%q ' "$@")
script=$(cat <<SCRIPT
#!/usr/bin/env bash
#SBATCH --job-name=asyncjax
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$gpus_per_node
#SBATCH --gpus-per-node=$gpus_per_node
#SBATCH --time=$time_limit
${partition:+#SBATCH --partition=$partition}
#SBATCH --signal=TERM@120
#SBATCH --output=asyncjax-%j.log
set -euo pipefail
cd $(printf '%q' "$repo")
source $(printf '%q' "$venv")/bin/activate
# One process per GPU; SIGTERM 120 s before the time limit makes every process checkpoint and stop.
srun --kill-on-bad-exit=1 python -m asyncjax.main --multihost $main_args
SCRIPT
)
if [[ $dry_run -eq 1 ]]; then
  echo "$script"
  echo "# would run: sbatch <the script above>"
  exit 0
fi
echo "$script" | sbatch
