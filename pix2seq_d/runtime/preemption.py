"""Stopping on a signal: SIGINT (Ctrl-C) and SIGTERM end a run cleanly, whatever it is doing.

`install_stop_handlers()` (main.py calls it first, before any dataset preparation or
compilation) turns the first SIGINT or SIGTERM into a request that the loops poll:

  training     `preemption_requested(step)` at every step: the step finishes, a complete
               checkpoint is written and the process exits with status 0; a request before the
               first step ends the run with nothing trained and nothing to save;
  evaluation   `check_stop('...')` between batches raises `StopRequested` within a batch's time
  and predict  (main.py exits with 128 + the signal number; a rerun evaluates again); a
               follower waiting for the next checkpoint stops at once (`wait_or_stop`).

Neither signal interrupts Python code mid-way (a KeyboardInterrupt raised inside a garbage
collector callback is swallowed; one raised inside XLA compilation crashed the process). A
second signal exits at once (status 128 + signal) and keeps the last complete checkpoint; a
checkpoint being written then leaves a temporary folder, which the next start removes.

With several processes a per-process flag cannot make every host save at the same step, so
SIGTERM is left to `jax.distributed`'s preemption sync service (it catches SIGTERM itself and
agrees on one step, `multihost_utils.reached_preemption_sync_point`), and SIGINT exits at once
(the peers then stop, naming the process).
"""

import os
import signal
import sys
import threading
from typing import Any

import jax
from absl import logging
from jax.experimental import multihost_utils

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stop_flag = threading.Event()
_stop_signal: list[int] = []
_previous_handlers: dict[int, Any] = {}


class StopRequested(Exception):
  """A signal asked the run to stop where it cannot save (evaluation, prediction)."""

  def __init__(self, where: str):
    name = signal.Signals(_stop_signal[0]).name if _stop_signal else 'a signal'
    super().__init__(f'{name} received: stopped {where}.')
    self.exit_status = 128 + (_stop_signal[0] if _stop_signal else signal.SIGTERM)


def _exit_now(signum: int, why: str) -> None:
  name = signal.Signals(signum).name
  logging.warning('%s received %s: exiting now; the last complete checkpoint is kept.', name, why)
  logging.flush()
  sys.stderr.flush()
  os._exit(128 + signum)


def _on_signal(signum, frame):
  del frame
  if _stop_flag.is_set():
    _exit_now(signum, 'again')
  _stop_signal.append(signum)
  _stop_flag.set()
  logging.warning(
    '%s received: stopping at the next safe point (training: after this step, with a '
    'checkpoint). Send it again to exit at once.',
    signal.Signals(signum).name,
  )


def _on_signal_multiprocess(signum, frame):
  del frame
  _exit_now(signum, 'in a multi-process run')


def install_stop_handlers() -> None:
  """Installs the handlers (module docstring); call from the main thread, once JAX knows the
  process count. Idempotent; `uninstall_stop_handlers` restores the previous ones."""
  multiprocess = jax.process_count() > 1
  for signum in _SIGNALS:
    if multiprocess and signum == signal.SIGTERM:
      continue  # jax.distributed's preemption service handles it
    handler = _on_signal_multiprocess if multiprocess else _on_signal
    previous = signal.signal(signum, handler)
    _previous_handlers.setdefault(signum, previous)
  _stop_flag.clear()
  _stop_signal.clear()


def uninstall_stop_handlers() -> None:
  """Restores the handlers that were there before and clears a pending request."""
  for signum, previous in _previous_handlers.items():
    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
  _previous_handlers.clear()
  _stop_flag.clear()
  _stop_signal.clear()


def stop_requested() -> bool:
  """Whether a signal asked this process to stop (single process)."""
  return _stop_flag.is_set()


def check_stop(where: str) -> None:
  """Raises `StopRequested` naming `where` when a signal asked the run to stop."""
  if _stop_flag.is_set():
    raise StopRequested(where)


def wait_or_stop(seconds: float, where: str) -> None:
  """Sleeps `seconds`, or raises `StopRequested` naming `where` as soon as a signal arrives."""
  if _stop_flag.wait(seconds):
    raise StopRequested(where)


def preemption_requested(step: int) -> bool:
  """Whether the train loop should save now and exit; call at every step on every process.

  Single process: True once SIGINT or SIGTERM arrived. Several processes: True on every host at
  the same step, once any host was told to stop (`multihost_utils.reached_preemption_sync_point`,
  the check orbax's `reached_preemption` uses).
  """
  if _stop_flag.is_set():
    return True
  if jax.process_count() > 1:
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # jax_enable_preemption_service is off: no preemption notices.
      return False
  return False
