"""Preemption: SIGTERM turns into a save at the end of the current step, then a clean exit.

`install_preemption_handler()` turns SIGTERM into a flag that the train loop polls with
`preemption_requested(step)` at every step. With several processes the flag is not used (hosts
could see it at different steps and then disagree on when to save); instead `jax.distributed`'s
preemption sync service, which catches SIGTERM itself, tells every host at the same step
(`multihost_utils.reached_preemption_sync_point`).
"""

import signal
import threading
from typing import Any

import jax
from absl import logging
from jax.experimental import multihost_utils

_preemption_flag = threading.Event()
_previous_handler: Any = None
_installed = False


def _on_sigterm(signum, frame):
  del frame
  if _preemption_flag.is_set():
    # A second SIGTERM: the loop did not get to save in time; die as the sender intended.
    uninstall_preemption_handler()
    signal.raise_signal(signum)
    return
  logging.warning('SIGTERM received: saving a checkpoint and exiting at the end of this step.')
  _preemption_flag.set()


def install_preemption_handler() -> bool:
  """Turns SIGTERM into a flag that `preemption_requested` reports (single process only).

  Call from the main thread. With several processes this installs nothing and returns False:
  `jax.distributed` then runs its preemption sync service, which catches SIGTERM itself and
  agrees on one step for all hosts (a Python handler would replace its handler).

  Returns:
    True when the handler was installed.
  """
  global _previous_handler, _installed
  if jax.process_count() > 1:
    return False
  if not _installed:
    _previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    _installed = True
  _preemption_flag.clear()
  return True


def uninstall_preemption_handler() -> None:
  """Restores the SIGTERM handler that was there before and clears the flag."""
  global _previous_handler, _installed
  if _installed:
    signal.signal(
      signal.SIGTERM, _previous_handler if _previous_handler is not None else signal.SIG_DFL
    )
    _installed = False
    _previous_handler = None
  _preemption_flag.clear()


def preemption_requested(step: int) -> bool:
  """Whether the train loop should save now and exit; call at every step on every process.

  Single process: True once SIGTERM arrived (after `install_preemption_handler`). Several
  processes: True on every host at the same step, once any host was told to stop
  (`multihost_utils.reached_preemption_sync_point`, the check orbax's `reached_preemption` uses).
  """
  if _preemption_flag.is_set():
    return True
  if jax.process_count() > 1:
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # jax_enable_preemption_service is off: no preemption notices.
      return False
  return False
