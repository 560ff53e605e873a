"""Signals (runtime/preemption.py): Ctrl-C and SIGTERM stop a run at a safe point, a second one
at once, and nothing half-written survives: the handlers in this process, then real runs."""

import os
import signal
import subprocess
import threading
import time

import pytest
from processes import PATIENCE_S, main_command, start

from pix2seq_d.runtime import preemption


def test_the_first_signal_is_a_request_and_uninstall_restores_the_handlers():
  previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
  preemption.install_stop_handlers()
  try:
    for signum in (signal.SIGINT, signal.SIGTERM):
      assert not preemption.preemption_requested(0)
      preemption.check_stop('here')  # nothing requested: no exception
      os.kill(os.getpid(), signum)  # no KeyboardInterrupt: only a request
      deadline = time.monotonic() + 5
      while not preemption.stop_requested() and time.monotonic() < deadline:
        time.sleep(0.01)
      assert preemption.preemption_requested(1)
      with pytest.raises(preemption.StopRequested) as stop:
        preemption.check_stop('evaluating step 4 at batch 2')
      name = signal.Signals(signum).name
      assert str(stop.value) == f'{name} received: stopped evaluating step 4 at batch 2.'
      assert stop.value.exit_status == 128 + signum
      preemption.install_stop_handlers()  # a new run in this process starts without a request
  finally:
    preemption.uninstall_stop_handlers()
  assert {s: signal.getsignal(s) for s in previous} == previous
  assert not preemption.preemption_requested(2)


class _Output:
  """A running process's output lines, read in a thread so that the test can wait for one."""

  def __init__(self, proc: subprocess.Popen):
    self.proc, self.lines = proc, []
    self._thread = threading.Thread(target=self._read, daemon=True)
    self._thread.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append(line)

  def text(self) -> str:
    return ''.join(self.lines)

  def wait_for(self, fragment: str, timeout: float = PATIENCE_S, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while fragment not in self.text():
      assert self.proc.poll() is None, f'ended before {fragment!r}:\n{self.text()[-3000:]}'
      assert time.monotonic() < deadline, f'no {fragment!r} within {timeout} s'
      time.sleep(poll)

  def finish(self, timeout: float) -> tuple[int, float]:
    """(exit status, seconds it took to exit)."""
    start_time = time.monotonic()
    code = self.proc.wait(timeout)
    self._thread.join(10)
    return code, time.monotonic() - start_time


def _steps(workdir):
  folder = workdir / 'checkpoints'
  return (
    sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
  )


def _temporary(workdir):
  folder = workdir / 'checkpoints'
  return [p.name for p in folder.iterdir() if 'tmp' in p.name] if folder.exists() else []


@pytest.mark.slow
def test_signals_stop_training_compilation_and_evaluation_cleanly(
  tmp_path, shapes_data_dir, jax_cache
):
  workdir = tmp_path / 'run'
  long_run = ('--config.train.num_steps=100000', '--config.train.checkpoint_every=1000')

  # Ctrl-C while the state is built and the step compiled: no crash, nothing saved.
  early = _Output(start(main_command(workdir, shapes_data_dir, *long_run, mode='train'), jax_cache))
  early.wait_for('Mesh ')
  early.proc.send_signal(signal.SIGINT)
  code, _ = early.finish(timeout=PATIENCE_S)
  assert code == 0, early.text()[-3000:]
  assert 'Stopping before the first step' in early.text() and 'Fatal Python' not in early.text()
  assert _steps(workdir) == []

  # Ctrl-C during training: the step ends, a complete checkpoint of it is written, status 0
  # (checkpoint_every is 1000: the save is the signal's).
  steady = _Output(
    start(main_command(workdir, shapes_data_dir, *long_run, mode='train'), jax_cache)
  )
  steady.wait_for('train/loss=')
  steady.proc.send_signal(signal.SIGINT)
  code, seconds = steady.finish(timeout=120)
  assert code == 0, steady.text()[-3000:]
  saved = _steps(workdir)
  assert len(saved) == 1 and saved[0] % 1000 and not _temporary(workdir), saved
  print(f'Ctrl-C in training: exited 0 in {seconds:.1f} s with step {saved[0]} saved')

  # Twice: exits at once, status 130, keeping the last complete checkpoint. (The second is sent
  # once the first was handled, while the step's checkpoint is written: signals sent together
  # arrive as one.)
  twice = _Output(start(main_command(workdir, shapes_data_dir, *long_run, mode='train'), jax_cache))
  twice.wait_for('train/loss=')
  twice.proc.send_signal(signal.SIGINT)
  twice.wait_for('SIGINT received: stopping', poll=0.02)
  twice.proc.send_signal(signal.SIGINT)
  code, seconds = twice.finish(timeout=60)
  assert code == 130, twice.text()[-3000:]
  assert 'SIGINT received again: exiting now' in twice.text()
  assert saved[0] in _steps(workdir)

  # SIGTERM during the final evaluation stops it within seconds (status 143, no results); the
  # start removed any temporary checkpoint folder the previous exit left.
  last = max(_steps(workdir))
  finish = main_command(
    workdir,
    shapes_data_dir,
    f'--config.train.num_steps={last + 2}',
    '--config.eval.num_examples=0',
    '--config.eval.batch_size=1',
  )
  evaluation = _Output(start(finish, jax_cache))
  evaluation.wait_for(f'Evaluating step {last + 2}')
  evaluation.proc.send_signal(signal.SIGTERM)
  code, seconds = evaluation.finish(timeout=120)
  assert code == 143, evaluation.text()[-3000:]
  assert f'SIGTERM received: stopped evaluating step {last + 2}' in evaluation.text()
  assert not (workdir / 'eval_results.json').exists()
  assert last + 2 in _steps(workdir) and not _temporary(workdir)
  print(f'SIGTERM in evaluation: exited 143 after {seconds:.1f} s')
