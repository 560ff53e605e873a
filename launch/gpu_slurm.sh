#!/usr/bin/env bash
# Slurm batch script: one pix2seq_d process per GPU, on every node of the allocation.
#
#   sbatch --nodes=4 launch/gpu_slurm.sh --config=configs/coco.py --workdir=/shared/runs/coco
#   launch/gpu_slurm.sh --dry-run --config=...   (inside an allocation, or with SLURM_* set)
#
# Process 0 runs on the first node of the allocation and is the coordinator (port: PORT, default
# 12000 + job id % 20000); every task gets --coordinator_address, --num_processes=$SLURM_NTASKS
# and --process_id=$SLURM_PROCID. Each task writes its own log, LOG_DIR/pix2seq_d_<job>_<task>.log
# (LOG_DIR default: the submission directory). Slurm sends SIGTERM two minutes before the time
# limit (--signal below): every process saves a checkpoint and exits; submitting the same command
# again resumes from it. --dry-run prints the srun line and each task's environment and command.
#
#SBATCH --job-name=pix2seq_d
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=12
#SBATCH --time=72:00:00
#SBATCH --signal=TERM@120
set -euo pipefail

dry_run=0
if [[ "${1:-}" == --dry-run ]]; then
  dry_run=1
  shift
fi
for name in SLURM_JOB_ID SLURM_NTASKS SLURM_JOB_NODELIST; do
  if [[ -z "${!name:-}" ]]; then
    echo "gpu_slurm.sh: ${name} is not set: submit with sbatch (or set SLURM_* for --dry-run)" >&2
    exit 2
  fi
done

# The first host of a Slurm node list such as "gpu[003-006,9],cpu1" -> gpu003.
first_host() {
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$1" | head -n 1
    return
  fi
  local list=${1%%,*} prefix range
  if [[ "$1" =~ ^([^,\[]+)\[([^],-]+) ]]; then
    prefix=${BASH_REMATCH[1]}
    range=${BASH_REMATCH[2]}
    echo "${prefix}${range}"
  else
    echo "${list}"
  fi
}

coordinator="$(first_host "${SLURM_JOB_NODELIST}"):${PORT:-$((12000 + SLURM_JOB_ID % 20000))}"
log_dir=${LOG_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
# The input pipeline's TensorFlow must not take GPU memory (pix2seq_d also hides GPUs from TF).
export TF_CPP_MIN_LOG_LEVEL=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export PIX2SEQ_D_COORDINATOR=${coordinator}
# Each task expands its own SLURM_PROCID (single quotes: not this shell).
# shellcheck disable=SC2016
task_command=(bash -c 'exec python -m pix2seq_d.main "$@" --coordinator_address="${PIX2SEQ_D_COORDINATOR}" --num_processes="${SLURM_NTASKS}" --process_id="${SLURM_PROCID}"' pix2seq_d)
srun_line=(srun --kill-on-bad-exit=1 --output="${log_dir}/pix2seq_d_%j_%t.log"
  "${task_command[@]}" "$@")

if ((dry_run)); then
  # shellcheck source=launch/lib.sh
  source "$(dirname "$0")/lib.sh"
  echo "srun line: $(print_command "${srun_line[@]}")"
  per_node=${SLURM_NTASKS_PER_NODE:-${SLURM_NTASKS}}
  per_node=${per_node%%(*}
  for ((task = 0; task < SLURM_NTASKS; task++)); do
    printf 'task %d: SLURM_PROCID=%d SLURM_LOCALID=%d SLURM_NODEID=%d SLURM_NTASKS=%d' \
      "${task}" "${task}" $((task % per_node)) $((task / per_node)) "${SLURM_NTASKS}"
    echo " PIX2SEQ_D_COORDINATOR=${coordinator} $(print_command python -m pix2seq_d.main "$@" \
      --coordinator_address="${coordinator}" --num_processes="${SLURM_NTASKS}" \
      --process_id="${task}")"
  done
  exit 0
fi
mkdir -p "${log_dir}"
echo "pix2seq_d: ${SLURM_NTASKS} processes, coordinator ${coordinator}, logs in ${log_dir}"
exec "${srun_line[@]}"
