#!/usr/bin/env bash
# Cloud TPU VM pod slices: create one, copy this checkout to every worker, install it, run the same
# pix2seq_d command on all workers, watch the logs, delete the slice.
#
#   launch/tpu_pod.sh COMMAND --name=NAME --zone=ZONE [options] [-- pix2seq_d.main flags...]
#
# Commands:
#   create    gcloud compute tpus tpu-vm create (--accelerator-type, --version, --spot/--preemptible)
#   copy      packs this checkout (without .git) and unpacks it into ~/pix2seq_d on every worker
#   install   pip install -e '.[tpu]' on every worker
#   run       starts python -m pix2seq_d.main FLAGS in the background on every worker
#             (--worker=all); each worker appends its output to ~/pix2seq_d_logs/main.log
#   up        create, copy, install and run
#   logs      the last lines of every worker's log (--lines=N)
#   stop      SIGTERM to the run on every worker: it saves a checkpoint and exits
#   delete    deletes the slice
# Options:
#   --name=NAME --zone=ZONE [--project=P] [--accelerator-type=v5p-32 (default)]
#   [--version=RUNTIME (default v2-alpha-tpuv5)] [--spot | --preemptible] [--lines=50]
#   --dry-run   print every command (gcloud, tar) instead of running it
#
# jax.distributed finds the coordinator from the TPU environment, so every worker runs the same
# command. Use a gs:// workdir: checkpoints and TensorBoard logs must be visible to all workers.
# After a preemption (spot / preemptible slices), `delete`, then `up` with the same flags: the run
# resumes from the last checkpoint in the workdir.
set -euo pipefail

usage() {
  sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

command=${1:-}
[[ -z "${command}" || "${command}" == -h || "${command}" == --help ]] && usage
shift
name='' zone='' project='' accelerator=v5p-32 version=v2-alpha-tpuv5 capacity='' lines=50
dry_run=0
main_flags=()
while (($#)); do
  case "$1" in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --accelerator-type=*) accelerator=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --spot) capacity=--spot ;;
    --preemptible) capacity=--preemptible ;;
    --lines=*) lines=${1#*=} ;;
    --dry-run) dry_run=1 ;;
    --) shift; main_flags=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown option '$1' (pix2seq_d flags go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "${name}" && -n "${zone}" ]] || { echo 'tpu_pod.sh: --name and --zone are required' >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=launch/lib.sh
source "${repo}/launch/lib.sh"
archive=${TMPDIR:-/tmp}/pix2seq_d_${name}.tar.gz
scope=(--zone="${zone}")
[[ -n "${project}" ]] && scope+=(--project="${project}")

# Runs (or, with --dry-run, prints) one command.
x() {
  if ((dry_run)); then
    print_command "$@"
  else
    "$@"
  fi
}

on_all_workers() {
  x gcloud compute tpus tpu-vm ssh "${name}" "${scope[@]}" --worker=all --command="$1"
}

create() {
  local args=(--accelerator-type="${accelerator}" --version="${version}")
  [[ -n "${capacity}" ]] && args+=("${capacity}")
  x gcloud compute tpus tpu-vm create "${name}" "${scope[@]}" "${args[@]}"
}

copy() {
  x tar --exclude=.git --exclude='*.pyc' -czf "${archive}" -C "${repo}" .
  x gcloud compute tpus tpu-vm scp "${archive}" "${name}:~/pix2seq_d.tar.gz" "${scope[@]}" \
    --worker=all
  on_all_workers 'rm -rf ~/pix2seq_d && mkdir -p ~/pix2seq_d && tar -xzf ~/pix2seq_d.tar.gz -C ~/pix2seq_d'
}

install() {
  on_all_workers "cd ~/pix2seq_d && python3 -m pip install -q -e '.[tpu]'"
}

run() {
  ((${#main_flags[@]})) || { echo 'tpu_pod.sh run: give the pix2seq_d flags after --' >&2; exit 2; }
  local flags
  flags=$(printf ' %q' "${main_flags[@]}")
  on_all_workers "mkdir -p ~/pix2seq_d_logs && cd ~/pix2seq_d && nohup python3 -m pix2seq_d.main${flags} >> ~/pix2seq_d_logs/main.log 2>&1 < /dev/null &"
}

stop() {
  on_all_workers 'pkill -TERM -f pix2seq_d.main || true'
}

logs() {
  on_all_workers "echo \"== \$(hostname)\"; tail -n ${lines} ~/pix2seq_d_logs/main.log"
}

delete() {
  x gcloud compute tpus tpu-vm delete "${name}" "${scope[@]}" --quiet
}

case "${command}" in
  create) create ;;
  copy) copy ;;
  install) install ;;
  run) run ;;
  up) create; copy; install; run ;;
  logs) logs ;;
  stop) stop ;;
  delete) delete ;;
  *) echo "tpu_pod.sh: unknown command '${command}'" >&2; usage ;;
esac
