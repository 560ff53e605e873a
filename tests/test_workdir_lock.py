"""One training run per workdir: a live holder blocks a second run, a dead one does not."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pix2seq_d.runtime import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_holder(workdir, **fields):
  record = {
    'host': socket.gethostname(),
    'pid': os.getpid(),
    'token': 'other',
    'started': time.time(),
    'heartbeat': time.time(),
    **fields,
  }
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(record))


@pytest.fixture
def sleeper():
  """A live process that is not this one: the holder of a lock taken by another run."""
  proc = subprocess.Popen(['sleep', '120'])
  yield proc.pid
  proc.kill()
  proc.wait()


def test_live_holder_is_named_and_blocks(tmp_path, sleeper):
  _write_holder(tmp_path, pid=sleeper)
  with pytest.raises(workdir_lock.WorkdirLockedError) as error:
    workdir_lock.WorkdirLock(tmp_path).acquire()
  assert f'pid {sleeper}' in str(error.value) and socket.gethostname() in str(error.value)


def test_killed_holder_on_this_host_is_taken_over(tmp_path):
  proc = subprocess.Popen(['sleep', '120'])
  proc.kill()
  proc.wait()
  _write_holder(tmp_path, pid=proc.pid)  # heartbeat fresh, but the process is gone
  lock = workdir_lock.WorkdirLock(tmp_path)
  lock.acquire()
  assert lock.holder()['pid'] == os.getpid()
  lock.release()
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def test_other_host_blocks_until_its_heartbeat_is_stale(tmp_path):
  _write_holder(tmp_path, host='tpu-worker-7', pid=1234)
  with pytest.raises(workdir_lock.WorkdirLockedError, match='tpu-worker-7'):
    workdir_lock.WorkdirLock(tmp_path).acquire()
  _write_holder(
    tmp_path, host='tpu-worker-7', pid=1234, heartbeat=time.time() - workdir_lock.STALE_AFTER_S - 1
  )
  lock = workdir_lock.WorkdirLock(tmp_path)
  lock.acquire()
  lock.release()


def test_heartbeat_keeps_the_lock_fresh(tmp_path):
  lock = workdir_lock.WorkdirLock(tmp_path, heartbeat_s=0.2, stale_after_s=1.0)
  lock.acquire()
  first = lock.holder()['heartbeat']
  time.sleep(1.5)
  assert lock.holder()['heartbeat'] > first
  # Another run sees a live holder (this process) even after stale_after_s has passed.
  with pytest.raises(workdir_lock.WorkdirLockedError):
    workdir_lock.WorkdirLock(tmp_path, stale_after_s=1.0).acquire()
  lock.release()


@pytest.mark.slow
def test_second_run_on_a_workdir_stops_at_start(tmp_path, shapes_data_dir, sleeper):
  """The main command with the workdir held by a live run: a clear error, nothing trained."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  _write_holder(workdir, pid=sleeper)
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'pix2seq_d.main',
      '--config=configs/shapes.py:tiny',
      f'--workdir={workdir}',
      '--config.data.name=shapes/tiny',
      f'--config.data.data_dir={shapes_data_dir}',
      '--mode=train',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert result.returncode == 1
  assert 'is in use by another run' in result.stderr and f'pid {sleeper}' in result.stderr
  assert not (workdir / 'checkpoints').exists()
