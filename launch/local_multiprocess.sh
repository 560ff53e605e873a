#!/usr/bin/env bash
# Runs N processes of pix2seq_d on this machine, joined by jax.distributed over localhost: the
# multi-host code path (per-host data shards, global batches, lockstep evaluation) on one box.
#
#   launch/local_multiprocess.sh [--dry-run] NUM_PROCESSES --config=configs/shapes.py --workdir=/tmp/run [...]
#
# On a CPU-only machine each process gets DEVICES_PER_PROCESS simulated devices (default 1);
# PYTHON names the interpreter (default: python); PORT the coordinator's port (default: random);
# with LOG_DIR set, process i writes LOG_DIR/process_i.log instead of this terminal. The exit
# status is the first non-zero status of the processes. --dry-run prints each process's command.
set -euo pipefail
dry_run=0
if [[ "${1:-}" == --dry-run ]]; then
  dry_run=1
  shift
fi
num_processes=${1:?usage: $0 [--dry-run] NUM_PROCESSES [pix2seq_d.main flags...]}
[[ "${num_processes}" =~ ^[1-9][0-9]*$ ]] || { echo "NUM_PROCESSES must be >= 1, got '${num_processes}'" >&2; exit 2; }
shift
port=${PORT:-$((20000 + RANDOM % 20000))}
devices=${DEVICES_PER_PROCESS:-1}
if [[ -z "${XLA_FLAGS:-}" && "${JAX_PLATFORMS:-cpu}" == cpu ]]; then
  export XLA_FLAGS="--xla_force_host_platform_device_count=${devices}"
fi
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"
[[ -n "${LOG_DIR:-}" ]] && ((!dry_run)) && mkdir -p "${LOG_DIR}"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < num_processes; i++)); do
  cmd=("${PYTHON:-python}" -m pix2seq_d.main "$@" --coordinator_address="localhost:${port}"
    --num_processes="${num_processes}" --process_id="${i}")
  if ((dry_run)); then
    echo "process ${i}: XLA_FLAGS=${XLA_FLAGS:-} $(print_command "${cmd[@]}")"
  elif [[ -n "${LOG_DIR:-}" ]]; then
    "${cmd[@]}" >"${LOG_DIR}/process_${i}.log" 2>&1 &
    pids+=($!)
  else
    "${cmd[@]}" &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do
  wait "${pid}" || { code=$?; ((status)) || status=${code}; }
done
exit "${status}"
