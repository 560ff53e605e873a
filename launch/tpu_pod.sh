#!/usr/bin/env bash
# Starts pix2seq_d on every worker of a Cloud TPU VM pod slice. jax.distributed.initialize() finds
# the coordinator from the TPU environment, so every worker runs the same command.
#
#   launch/tpu_pod.sh TPU_NAME ZONE --config=configs/coco.py --workdir=gs://BUCKET/run [...]
#
# The repository is copied to every worker and installed with the TPU extra first. Use a gs://
# workdir: checkpoints and TensorBoard logs must be visible to all workers.
set -euo pipefail
tpu=${1:?usage: $0 TPU_NAME ZONE [pix2seq_d.main flags...]}
zone=${2:?usage: $0 TPU_NAME ZONE [pix2seq_d.main flags...]}
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm scp --recurse "${repo}" "${tpu}":~/pix2seq_d --zone="${zone}" --worker=all
gcloud compute tpus tpu-vm ssh "${tpu}" --zone="${zone}" --worker=all --command="
  set -e; cd ~/pix2seq_d
  pip install -q -e '.[tpu]'
  python -m pix2seq_d.main${args} 2>&1 | tee -a ~/pix2seq_d_\$(hostname).log"
