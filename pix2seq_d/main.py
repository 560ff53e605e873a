"""Entry point: `python -m pix2seq_d.main --config=configs/NAME.py[:arg] --workdir=DIR --mode=M`.

Modes: train, eval (with --config.eval.follow=True: every checkpoint of a live training run, as it
appears), train_and_eval (default), predict, summary, plan (what a run would do: config
differences, mesh, parameters, memory per device, data found, checkpoint; nothing trained). Any
config field can be overridden with `--config.a.b=value`. On a TPU pod, a Slurm GPU cluster or
with explicit `--coordinator_address/--num_processes/--process_id`, `jax.distributed.initialize`
runs before anything asks JAX about devices.
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ('train', 'eval', 'train_and_eval', 'predict', 'summary', 'plan')

config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and results go (local or gs://).')
flags.DEFINE_enum('mode', 'train_and_eval', MODES, 'What to run.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 for multi-process runs.')
flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process index in a multi-process run.')
flags.DEFINE_integer(
  'coordinator_timeout_s',
  300,
  'Multi-process runs: how long to wait for the coordinator (process 0) and for every process '
  'to join before stopping with an error.',
)
flags.DEFINE_integer(
  'heartbeat_timeout_s',
  60,
  'Multi-process runs: a process not heard from for this long counts as lost, and every other '
  'process then stops (status 134) within one to two of these timeouts.',
)
flags.DEFINE_string(
  'jax_cache_dir',
  os.environ.get('JAX_COMPILATION_CACHE_DIR', os.path.expanduser('~/.cache/pix2seq_d/jax')),
  'Persistent compilation cache ("" turns it off).',
)
FLAGS = flags.FLAGS

# Environment variables set by the launchers on which `jax.distributed.initialize()` can find its
# coordinator by itself (TPU pods, Slurm, Open MPI).
_CLUSTER_ENV = ('TPU_WORKER_HOSTNAMES', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')


def _initialize_distributed(config):
  """Joins a multi-process run when one is configured, checks that every process runs the same
  config and returns the started `distributed.PeerMonitor` (None for a single process)."""
  from pix2seq_d.parallel import distributed

  timeouts = {
    'timeout_s': FLAGS.coordinator_timeout_s,
    'heartbeat_timeout_s': FLAGS.heartbeat_timeout_s,
  }
  cluster = [name for name in _CLUSTER_ENV if os.environ.get(name, '1') not in ('', '1')]
  if FLAGS.coordinator_address:
    distributed.initialize(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, **timeouts
    )
  elif cluster:
    logging.info('Multi-process environment (%s): jax.distributed.initialize().', cluster)
    distributed.initialize(None, None, None, **timeouts)
  else:
    return None
  distributed.check_same_config(config, FLAGS.coordinator_timeout_s)
  return distributed.start_peer_monitor(FLAGS.heartbeat_timeout_s)


def _enable_compilation_cache(path: str) -> None:
  import jax

  if not path:
    return
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def _check_workdir(workdir: str | None, mode: str) -> str:
  """Creates the workdir and checks it is writable, with a message naming it otherwise."""
  from etils import epath

  if not workdir:
    raise app.UsageError(f'--workdir is required for --mode={mode}.')
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_test_{os.getpid()}'
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise app.UsageError(f'--workdir={workdir} cannot be written: {e}') from e
  return workdir


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  if config is None:
    raise app.UsageError('--config=configs/NAME.py is required.')
  from pix2seq_d.loops import registries
  from pix2seq_d.parallel import distributed

  try:
    registries.check_config(config, FLAGS.mode)
  except ValueError as error:  # the message names the field: no usage text, no traceback.
    sys.stderr.write(f'error: {error}\n')
    sys.exit(1)
  if FLAGS.mode == 'summary':
    from pix2seq_d.loops import run as run_lib
    from pix2seq_d.tools import summary

    run = run_lib.open_run(config, FLAGS.workdir or '', data=None)  # reads and writes nothing
    print(summary.model_summary(run.config, run.task), flush=True)
    return
  if FLAGS.mode == 'plan':
    if not FLAGS.workdir:
      raise app.UsageError('--workdir is required for --mode=plan (it is not created).')
    from pix2seq_d.tools import plan

    sys.exit(0 if plan.plan(config, FLAGS.workdir, lambda line: print(line, flush=True)) else 1)

  try:
    monitor = _initialize_distributed(config)
  except distributed.DistributedError as error:
    if not error.reported:
      sys.stderr.write(f'error: {error}\n')
    sys.stderr.flush()
    os._exit(1)  # without joining JAX's coordination threads
  from pix2seq_d.runtime import preemption

  # Before any dataset preparation or compilation: Ctrl-C and SIGTERM stop at a safe point.
  preemption.install_stop_handlers()
  _enable_compilation_cache(FLAGS.jax_cache_dir)
  workdir = _check_workdir(FLAGS.workdir, FLAGS.mode)
  try:
    _run(config, workdir, FLAGS.mode)
  except preemption.StopRequested as stop:
    logging.warning('%s', stop)
    _exit_now(stop.exit_status)
  except Exception as error:  # every failure ends the process, see _exit_on_failure
    _exit_on_failure(monitor, error)
  if monitor is not None:
    monitor.stop()


def _run(config, workdir: str, mode: str) -> None:
  if mode == 'predict':
    from pix2seq_d.loops import predict

    predict.run(config, workdir)
    return
  if mode == 'eval':
    from pix2seq_d.loops import eval_checkpoints

    record = eval_checkpoints.run(config, workdir)
  else:
    from pix2seq_d.loops import train

    record = train.run(config, workdir, mode)
  if record is not None:
    logging.info('Evaluation: %s', record)


def _exit_on_failure(monitor, error: Exception) -> None:
  """Reports the exception being handled and ends the process with exit status 1 at once.

  In a multi-process run it first tells the peers (they stop too, naming this process) and names
  the peers that are gone: the error itself, often a failed collective, does not.

  A failure can leave library threads that never finish: orbax's checkpoint threads wait forever
  for the signal of a write that failed (an unwritable checkpoints/ folder), and tf.data keeps
  its own. A normal interpreter exit joins them and would hang (on Slurm or a TPU pod, holding
  the allocation), so the process ends here without joining them.
  """
  logging.exception('pix2seq_d stopped on an error; exiting with status 1.')
  logging.flush()
  if monitor is not None:
    monitor.stop(
      failure=f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'
    )
    lost = monitor.describe_lost_peers()
    if lost:
      logging.error('Peers: %s.', lost)
      logging.flush()
  _exit_now(1)


def _exit_now(status: int) -> None:
  """Ends the process with `status` without joining library threads (see _exit_on_failure)."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a one-paragraph error for a `--config.a.b` that names no field.

  ml_collections raises AttributeError / KeyError from inside absl's parser for an unknown
  field, which would otherwise end the process with three chained tracebacks.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as error:
    text = str(error).replace('\\', '')
    if "has no attribute 'get_config'" in text:
      path = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), '?')
      sys.stderr.write(
        f'error: --config={path}: the file defines no get_config(); a config file defines '
        'get_config(arg=None) returning an ml_collections.ConfigDict (e.g. configs/shapes.py).\n'
      )
      sys.exit(2)
    match = re.search(r'[A-Za-z_]\w*', text)
    name = match.group(0) if match else ''
    culprits = [
      arg.split('=')[0]
      for arg in argv[1:]
      if arg.startswith('--config.') and name in arg.split('=')[0].split('.')
    ]
    if not culprits:  # not an override naming a missing field (e.g. a bug in a config file)
      raise
    suggestion = re.search(r'Did you mean "(\w+)"', text)
    sys.stderr.write(
      f'error: {" ".join(culprits)}: the config has no field {name!r}'
      f'{f"; did you mean {suggestion.group(1)!r}?" if suggestion else "."} Fields are those '
      'the config file defines (see pix2seq_d/config/defaults.py), e.g. '
      '--config.train.num_steps=100.\n'
    )
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
