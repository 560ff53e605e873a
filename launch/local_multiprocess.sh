#!/usr/bin/env bash
# Runs N processes of pix2seq_d on this machine, joined by jax.distributed over localhost: the
# multi-host code path (per-host data shards, global batches, lockstep evaluation) on one box.
#
#   launch/local_multiprocess.sh NUM_PROCESSES --config=configs/shapes.py --workdir=/tmp/run [...]
#
# On a CPU-only machine each process gets DEVICES_PER_PROCESS simulated devices (default 1);
# PYTHON names the interpreter (default: python).
set -euo pipefail
num_processes=${1:?usage: $0 NUM_PROCESSES [pix2seq_d.main flags...]}
shift
port=${PORT:-$((20000 + RANDOM % 20000))}
devices=${DEVICES_PER_PROCESS:-1}
if [[ -z "${XLA_FLAGS:-}" && "${JAX_PLATFORMS:-cpu}" == cpu ]]; then
  export XLA_FLAGS="--xla_force_host_platform_device_count=${devices}"
fi
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < num_processes; i++)); do
  "${PYTHON:-python}" -m pix2seq_d.main "$@" --coordinator_address="localhost:${port}" \
    --num_processes="${num_processes}" --process_id="${i}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "${pid}" || status=$?; done
exit "${status}"
