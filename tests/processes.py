"""Helpers for tests that run `python -m pix2seq_d.main` (and other commands) as real processes.

They share one persistent compilation cache (JAX_COMPILATION_CACHE_DIR when set, else a per-module
folder) so that later runs reuse the first run's compiled steps.
"""

import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# How long a test waits for a process step that includes compiling (starting, the first train
# step, a first checkpoint) before calling it hung. Only a hang should reach it: two test suites at
# once on two cores compile about five times slower than one.
PATIENCE_S = 1200


def main_command(
  workdir, data_dir, *overrides, mode='train_and_eval', config='configs/shapes.py:tiny'
) -> list[str]:
  """The main command on the tiny shapes set with small batches and few sampling steps."""
  return [
    sys.executable,
    '-m',
    'pix2seq_d.main',
    f'--config={config}',
    f'--workdir={workdir}',
    f'--mode={mode}',
    '--config.data.name=shapes/tiny',
    f'--config.data.data_dir={data_dir}',
    '--config.data.shuffle_buffer=16',
    '--config.data.num_parallel_calls=1',
    '--config.train.batch_size=4',
    '--config.eval.batch_size=4',
    '--config.eval.num_examples=4',
    '--config.diffusion.steps=2',
    '--config.train.log_every=2',
    '--config.train.warmup_steps=2',
    '--config.train.image_summary_every=4',
    *overrides,
  ]


def process_env(jax_cache: str) -> dict[str, str]:
  """The environment of a test process: CPU JAX, the shared cache, this checkout importable."""
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    TF_CPP_MIN_LOG_LEVEL='2',
    PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  env['JAX_COMPILATION_CACHE_DIR'] = jax_cache
  env['PYTHON'] = sys.executable
  return env


def run(cmd, jax_cache: str, timeout: float = PATIENCE_S) -> tuple[int, str]:
  """Runs `cmd` from the repository root; returns (exit status, stdout + stderr)."""
  proc = subprocess.run(
    cmd, cwd=ROOT, env=process_env(jax_cache), capture_output=True, text=True, timeout=timeout
  )
  return proc.returncode, proc.stdout + proc.stderr


def start(cmd, jax_cache: str) -> subprocess.Popen:
  """The command as a background process whose output (stdout and stderr) is kept."""
  return subprocess.Popen(
    cmd,
    cwd=ROOT,
    env=process_env(jax_cache),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


class Output:
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
