#!/usr/bin/env bash
# Slurm batch script: one process per GPU across nodes. jax.distributed.initialize() reads the
# Slurm environment (SLURM_NTASKS, SLURM_PROCID, the node list) to find the coordinator.
#
#   sbatch --nodes=4 launch/gpu_slurm.sh --config=configs/coco.py --workdir=/shared/runs/coco
#
#SBATCH --job-name=pix2seq_d
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=12
#SBATCH --time=72:00:00
#SBATCH --signal=TERM@120
# (--signal sends SIGTERM two minutes before the time limit: the run saves a checkpoint and exits;
#  resubmitting the same command resumes from it.)
set -euo pipefail
# The input pipeline's TensorFlow must not take GPU memory; pix2seq_d also hides GPUs from TF.
export TF_CPP_MIN_LOG_LEVEL=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
srun --kill-on-bad-exit=1 python -m pix2seq_d.main "$@"
