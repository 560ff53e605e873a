"""One training run per workdir: a lock file that names its holder and is kept fresh.

Two runs writing one workdir interleave their checkpoints and one run's work is lost. A run takes
`<workdir>/run.lock` at start (process 0 of a multi-process run) and keeps its heartbeat fresh
from a background thread while it lives. A second run finds the lock and stops with a message
naming the holder's host and pid.

A run killed with SIGKILL (or preempted) cannot remove its lock, so a lock is stale, and taken
over, when its holder's pid is gone on this host, or when its heartbeat is older than
STALE_AFTER_S wherever it was written (a TPU VM or Slurm node replaced after a preemption).

  lock = WorkdirLock(workdir)
  lock.acquire()          # raises WorkdirLockedError naming the live holder
  ...
  lock.release()
"""

import json
import os
import socket
import threading
import time
import uuid

from etils import epath

LOCK_FILE = 'run.lock'
HEARTBEAT_S = 20.0  # how often the holder refreshes its heartbeat.
STALE_AFTER_S = 90.0  # a heartbeat older than this belongs to a dead run.


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir; the message names its host and pid."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # it exists, owned by someone else
  return True


class WorkdirLock:
  """The lock of one workdir (local or gs://); see the module docstring."""

  def __init__(
    self,
    workdir: str | epath.PathLike,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    stale_after_s: float = STALE_AFTER_S,
  ):
    self.path = epath.Path(workdir) / LOCK_FILE
    self.heartbeat_s = heartbeat_s
    self.stale_after_s = stale_after_s
    self.record = {
      'host': socket.gethostname(),
      'pid': os.getpid(),
      'token': uuid.uuid4().hex,
      'started': time.time(),
      'heartbeat': time.time(),
    }
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def holder(self) -> dict | None:
    """The lock file's record, or None when there is none (an unreadable file counts as none)."""
    try:
      return json.loads(self.path.read_text())
    except (FileNotFoundError, ValueError):
      return None

  def stale_reason(self, holder: dict) -> str | None:
    """Why `holder` no longer runs, or None when it may still be running."""
    if holder.get('host') == self.record['host'] and not _pid_alive(int(holder.get('pid', -1))):
      return f'pid {holder.get("pid")} is gone on this host'
    age = time.time() - float(holder.get('heartbeat', 0.0))
    if age > self.stale_after_s:
      return f'its heartbeat is {age:.0f} s old'
    return None

  def live_holder(self) -> dict | None:
    """The record of the run that holds the lock now, or None (no lock, or a stale one).

    Only reads: a follower evaluator asks whether a training run is still alive.
    """
    holder = self.holder()
    if holder is None or self.stale_reason(holder) is not None:
      return None
    return holder

  def _write(self) -> None:
    self.record['heartbeat'] = time.time()
    tmp = self.path.parent / f'{LOCK_FILE}.{self.record["token"]}.tmp'
    tmp.write_text(json.dumps(self.record))
    tmp.replace(self.path)

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirLockedError when a live run holds it."""
    holder = self.holder()
    if holder is not None and holder.get('token') != self.record['token']:
      reason = self.stale_reason(holder)
      if reason is None:
        started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))
        raise WorkdirLockedError(
          f'{self.path.parent} is in use by another run: host {holder.get("host")}, pid '
          f'{holder.get("pid")}, started {started}, alive '
          f'{time.time() - float(holder.get("heartbeat", 0)):.0f} s ago. Stop that run or use '
          f'another --workdir. (If it is dead, its lock counts as stale '
          f'{self.stale_after_s:.0f} s after its last heartbeat; {self.path} can be deleted.)'
        )
    self._write()
    # Two runs starting together both wrote: the last rename wins, the other one stops here.
    time.sleep(min(1.0, self.heartbeat_s / 10))
    if (self.holder() or {}).get('token') != self.record['token']:
      raise WorkdirLockedError(
        f'{self.path.parent} was taken by another run starting at the '
        'same time; use another --workdir.'
      )
    self._thread = threading.Thread(target=self._beat, name='workdir-lock', daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        self._write()
      except OSError:
        pass  # a transient storage error; the next beat tries again

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still this run's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if (self.holder() or {}).get('token') == self.record['token']:
      self.path.unlink(missing_ok=True)
