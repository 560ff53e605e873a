"""Joining a multi-process run, and checks that every process runs the same experiment.

`initialize` wraps `jax.distributed.initialize`:

- With an explicit coordinator address, every process other than 0 first waits (at most the
  initialization timeout) until something accepts connections there, and otherwise stops with a
  message naming the address, instead of JAX's abort, which blames a task that died.
- The heartbeat timeout bounds how long a process outlives a lost peer. `PeerMonitor` (started
  by `start_peer_monitor`) exchanges its own heartbeats and stops a process (status 1) after half
  of that timeout, naming the lost peer's index, host and pid, or the peer that reported a
  failure. JAX's coordination service is the backstop: after one to two heartbeat timeouts it
  aborts the survivors (status 134) naming the task ("The following tasks are unhealthy (stopped
  sending heartbeats): 1"), and when process 0 dies it aborts the others at once ("Either the
  leader task was preempted/died").

`check_same_config` compares the whole config of every process with process 0's through the
coordination service's key-value store, and stops a run whose processes were started with
different configs (or different code), naming the fields that differ.

`wait_for_peers` holds a process at a named point until every process reaches it, through the
coordination service (waiting up to the initialization timeout). The loops call it before the
first collective of a phase in which processes may drift apart (preparing data, restoring,
compiling): JAX's CPU collectives (Gloo) give a late peer only 30 s, which a loaded host exceeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time

from absl import logging

_CONFIG_KEY = 'pix2seq_d/config/'
_ALIVE_KEY = 'pix2seq_d/alive/'  # + process index -> beat counter
_HOST_KEY = 'pix2seq_d/host/'  # + process index -> "host (pid N)"
_DONE_KEY = 'pix2seq_d/done/'  # + process index, once it finished normally
_BARRIER = 'pix2seq_d/barrier/'  # + a counter and a name
# How long `wait_for_peers` waits: `initialize`'s timeout.
_peer_timeout_s = 300
_barriers_passed = 0


class DistributedError(RuntimeError):
  """A multi-process run cannot start: the message says why and what to do.

  `reported`: the message was already written to stderr (before the processes left together).
  """

  def __init__(self, message: str, reported: bool = False):
    super().__init__(message)
    self.reported = reported


def _split_address(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(':')
  if not sep or not host or not port.isdigit():
    raise DistributedError(f'--coordinator_address={address!r}: expected host:port.')
  return host.strip('[]'), int(port)


def wait_for_coordinator(address: str, timeout_s: float, poll_s: float = 0.5) -> float:
  """Waits until `address` (host:port) accepts TCP connections; returns the seconds waited.

  Raises:
    DistributedError: nothing accepted a connection within `timeout_s`.
  """
  host, port = _split_address(address)
  start = time.monotonic()
  last_error: OSError | None = None
  while True:
    try:
      with socket.create_connection((host, port), timeout=max(poll_s, 0.1)):
        return time.monotonic() - start
    except OSError as error:
      last_error = error
    if time.monotonic() - start >= timeout_s:
      raise DistributedError(
        f'could not reach the coordinator at {address} within {timeout_s:g} s '
        f'({last_error}). Process 0 runs the coordinator: start it (with the same '
        '--coordinator_address and --num_processes), check the address and that the port is '
        'open between the hosts, or raise --coordinator_timeout_s.'
      )
    time.sleep(poll_s)


def initialize(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  *,
  timeout_s: int,
  heartbeat_timeout_s: int,
) -> None:
  """`jax.distributed.initialize` with a reachable-coordinator check and the given timeouts.

  Args:
    coordinator_address: host:port of process 0, or None to let JAX find it (TPU pods, Slurm,
      Open MPI environments).
    num_processes, process_id: this run's size and this process's index (None: from the
      cluster environment).
    timeout_s: how long to wait for the coordinator and for every process to join.
    heartbeat_timeout_s: after how long without heartbeats a peer counts as lost.
  """
  import jax

  global _peer_timeout_s
  if timeout_s < 1 or heartbeat_timeout_s < 1:
    raise DistributedError(
      f'--coordinator_timeout_s={timeout_s} and --heartbeat_timeout_s={heartbeat_timeout_s} '
      'must be >= 1 (seconds).'
    )
  _peer_timeout_s = timeout_s
  remaining = timeout_s
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise DistributedError(
        '--coordinator_address needs --num_processes and --process_id as well.'
      )
    if not 0 <= process_id < num_processes:
      raise DistributedError(
        f'--process_id={process_id} is not in [0, --num_processes={num_processes}).'
      )
    if process_id != 0:
      logging.info(
        'Process %d: waiting for the coordinator at %s.', process_id, coordinator_address
      )
      remaining = max(1, round(timeout_s - wait_for_coordinator(coordinator_address, timeout_s)))
  logging.info(
    'Joining the run at %s as process %s of %s: waiting up to %d s for every process; a peer '
    'silent for %d s ends the run.',
    coordinator_address or '(from the cluster environment)',
    process_id,
    num_processes,
    remaining,
    heartbeat_timeout_s,
  )
  jax.distributed.initialize(
    coordinator_address,
    num_processes,
    process_id,
    initialization_timeout=remaining,
    heartbeat_timeout_seconds=heartbeat_timeout_s,
  )


def config_digest(config_json: str) -> str:
  """sha256 hex digest of a config's JSON text."""
  return hashlib.sha256(config_json.encode()).hexdigest()


def _flatten(tree, prefix: str = '') -> dict:
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f'{prefix}{key}.'))
    return flat
  return {prefix[:-1]: tree}


def config_differences(base: str, other: str, other_name: str, limit: int = 8) -> list[str]:
  """'field: X on process 0, Y on <other_name>' for fields of two config JSON texts that differ."""
  a, b = _flatten(json.loads(base)), _flatten(json.loads(other))
  missing = '(absent)'
  lines = [
    f'{key}: {a.get(key, missing)!r} on process 0, {b.get(key, missing)!r} on {other_name}'
    for key in sorted(set(a) | set(b))
    if a.get(key, missing) != b.get(key, missing)
  ]
  return lines[:limit] + ([f'... and {len(lines) - limit} more'] if len(lines) > limit else [])


def check_same_config(config, timeout_s: int) -> None:
  """Stops every process of a run whose processes' configs differ (a no-op for one process).

  Every process publishes its config's JSON in the coordination service's key-value store and
  reads everyone's, so all of them stop together, each with the same message.

  Raises:
    DistributedError: some config differs from process 0's (the message names the processes and
      the fields), or a process's config did not arrive within `timeout_s`.
  """
  import jax
  from jax._src import distributed as jax_distributed

  if jax.process_count() == 1:
    return
  client = jax_distributed.global_state.client
  client.key_value_set(f'{_CONFIG_KEY}{jax.process_index()}', config.to_json(sort_keys=True))
  texts = []
  for index in range(jax.process_count()):
    try:
      texts.append(client.blocking_key_value_get(f'{_CONFIG_KEY}{index}', timeout_s * 1000))
    except Exception as error:  # jax raises its runtime error type on a timeout
      raise DistributedError(
        f'process {index} did not publish its config within {timeout_s} s: {error}'
      ) from error
  digests = [config_digest(text) for text in texts]
  differing = [index for index, digest in enumerate(digests) if digest != digests[0]]
  if differing:
    lines = []
    for index in differing:
      lines += config_differences(texts[0], texts[index], f'process {index}')
    message = (
      f'the processes were started with different configs (sha256 of process 0: '
      f'{digests[0][:12]}; differing: '
      + ', '.join(f'process {i} {digests[i][:12]}' for i in differing)
      + '):\n  '
      + '\n  '.join(lines)
      + '\nStart every process with the same --config and --config.* overrides.'
    )
    # Every process writes the message before any leaves: once process 0 (the coordinator) is
    # gone, JAX aborts the others at once.
    sys.stderr.write(f'error: {message}\n')
    sys.stderr.flush()
    try:
      client.wait_at_barrier('pix2seq_d/config_mismatch', timeout_s * 1000)
    except Exception:  # noqa: BLE001 - a peer already gone: leave anyway
      pass
    raise DistributedError(message, reported=True)
  logging.info('Config sha256 %s, the same on all %d processes.', digests[0][:12], len(texts))


class PeerMonitor:
  """Heartbeats through the coordination service's key-value store, to name lost peers.

  Every process publishes a counter every `interval_s`. A background thread ends this process
  (status 1) when a peer's counter has not moved for `timeout_s`, or when a peer reported a
  failure, with a message naming the peer (index, host, pid). `describe_lost_peers` names them
  after a failure of this process: a collective that failed because a peer died says only
  "connection reset". A process that lost the coordinator (process 0) cannot reach the store at
  all, and says so.
  """

  def __init__(self, client, process_index: int, process_count: int, interval_s, timeout_s):
    self._client = client
    self._index = process_index
    self._peers = [i for i in range(process_count) if i != process_index]
    self._interval = interval_s
    self._timeout = timeout_s
    self._beats = 0
    self._seen: dict[int, tuple[str, float]] = {}  # peer -> (counter, when it last changed)
    self._hosts: dict[int, str] = {}
    self._stop = threading.Event()
    self._lock = threading.Lock()
    self._thread = threading.Thread(target=self._run, name='pix2seq_d-peers', daemon=True)

  def start(self) -> PeerMonitor:
    host = f'{socket.gethostname()} (pid {os.getpid()})'
    self._client.key_value_set(f'{_HOST_KEY}{self._index}', host)
    self._beat()
    self._thread.start()
    return self

  def stop(self, failure: str = '') -> None:
    """Stops beating and tells the peers this process ended: finished, or failed with `failure`."""
    self._stop.set()
    try:
      value = f'failed: {failure}' if failure else 'finished'
      self._client.key_value_set(f'{_DONE_KEY}{self._index}', value, allow_overwrite=True)
    except Exception:  # noqa: BLE001 - the coordinator already left: nobody to tell
      pass

  def _beat(self) -> None:
    self._beats += 1
    key = f'{_ALIVE_KEY}{self._index}'
    self._client.key_value_set(key, str(self._beats), allow_overwrite=True)

  def _name(self, peer: int) -> str:
    return f'process {peer} on {self._hosts[peer]}' if peer in self._hosts else f'process {peer}'

  def _problems(self) -> list[str]:
    """Reads the store once: failed peers and peers silent for the timeout, described.

    Raises:
      Exception: the store cannot be reached (the coordinator is gone).
    """
    now = time.monotonic()
    alive = dict(self._client.key_value_dir_get(_ALIVE_KEY))
    ended = dict(self._client.key_value_dir_get(_DONE_KEY))
    if len(self._hosts) < len(self._peers):
      for key, value in self._client.key_value_dir_get(_HOST_KEY):
        self._hosts[int(key.rsplit('/', 1)[1])] = value
    problems = []
    with self._lock:
      for peer in self._peers:
        end = ended.get(f'{_DONE_KEY}{peer}', '')
        if end.startswith('failed'):
          problems.append(f'{self._name(peer)} {end}')
          continue
        if end:
          continue  # finished normally
        counter = alive.get(f'{_ALIVE_KEY}{peer}', '')
        last = self._seen.get(peer)
        if last is None or last[0] != counter:
          self._seen[peer] = (counter, now)
        elif now - last[1] >= self._timeout:
          problems.append(f'lost {self._name(peer)}: no heartbeat for {now - last[1]:.0f} s')
    return problems

  def _coordinator_lost(self, error: Exception) -> str:
    return (
      f'lost the coordinator, {self._name(0)}: the coordination service cannot be reached '
      f'({str(error).splitlines()[0] if str(error) else type(error).__name__})'
    )

  def describe_lost_peers(self, wait_s: float | None = None) -> str:
    """Watches the peers for up to `wait_s` (default: the timeout); '' when all are well."""
    deadline = time.monotonic() + (self._timeout + self._interval if wait_s is None else wait_s)
    while True:
      try:
        problems = self._problems()
      except Exception as error:  # noqa: BLE001 - any failure to reach the store means the same
        return self._coordinator_lost(error)
      if problems or time.monotonic() >= deadline:
        return '; '.join(problems)
      time.sleep(self._interval)

  def _run(self) -> None:
    while not self._stop.wait(self._interval):
      try:
        self._beat()
        problems = self._problems()
      except Exception as error:  # noqa: BLE001
        problems = [self._coordinator_lost(error)]
      if not problems or self._stop.is_set():
        continue
      self.stop(failure=f'stopped because of: {"; ".join(problems)}')
      logging.error(
        'Process %d stops (status 1): %s. Start every process again with the same command to '
        'resume from the last checkpoint.',
        self._index,
        '; '.join(problems),
      )
      logging.flush()
      os._exit(1)


def wait_for_peers(name: str) -> None:
  """Returns once every process has called this with `name` (at once for one process).

  Every process must pass the same points in the same order. A peer that does not arrive within
  the initialization timeout (--coordinator_timeout_s) ends the wait with JAX's deadline error.
  """
  import jax
  from jax._src import distributed as jax_distributed

  global _barriers_passed
  if jax.process_count() == 1:
    return
  _barriers_passed += 1
  barrier = f'{_BARRIER}{_barriers_passed}/{name}'
  jax_distributed.global_state.client.wait_at_barrier(barrier, _peer_timeout_s * 1000)


def start_peer_monitor(heartbeat_timeout_s: int) -> PeerMonitor | None:
  """Starts a `PeerMonitor` (None for one process) that declares a peer lost after half of the
  heartbeat timeout, before JAX's own check ends the process with a less specific message."""
  import jax
  from jax._src import distributed as jax_distributed

  if jax.process_count() == 1:
    return None
  timeout = max(2.0, heartbeat_timeout_s / 2)
  return PeerMonitor(
    jax_distributed.global_state.client,
    jax.process_index(),
    jax.process_count(),
    interval_s=max(0.5, timeout / 10),
    timeout_s=timeout,
  ).start()
