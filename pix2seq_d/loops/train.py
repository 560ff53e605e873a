"""The training loop: the run (run.py: mesh, dataset, task, abstract state) -> its state, restored
or fresh -> the jitted step -> the loop with periodic logging, image summaries, checkpoints and
evaluation (evaluate.py, with the evaluators of config.eval.metrics). Images and videos run
through this same loop: the task (tasks/registry.py) says what differs.
"""

import json
import time

import jax
import numpy as np
from absl import logging
from clu import periodic_actions
from etils import epath

from pix2seq_d.config import fields
from pix2seq_d.loops import run as run_lib
from pix2seq_d.parallel import distributed, sharding
from pix2seq_d.runtime import (
  checkpoints,
  preemption,
  stream_positions,
  workdir_files,
  workdir_lock,
)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the message names the step."""


def flat_hparams(tree: dict, prefix: str = '') -> dict[str, bool | int | float | str]:
  """The whole config as TensorBoard hparams: {'model.encoder.dim': 512, ...}; values that are
  not a bool, int, float or str (tuples, None) are written as their str()."""
  return {
    name: value if isinstance(value, (bool, int, float, str)) else str(value)
    for name, value in fields.flat(tree, prefix).items()
  }


def config_changes(previous: dict, current: dict) -> list[str]:
  """'field: old -> new' for every field of two config dicts that differs, sorted by field."""
  before, after = flat_hparams(previous), flat_hparams(current)
  missing = '(absent)'
  return [
    f'{field}: {before.get(field, missing)!r} -> {after.get(field, missing)!r}'
    for field in sorted(set(before) | set(after))
    if before.get(field, missing) != after.get(field, missing)
  ]


def _record_config(config, workdir: str, start_step: int, writer) -> None:
  """Stores the run's config in the workdir (process 0), and on a resume says what changed.

  A resumed run with another batch size, microbatches or learning rate trains a different
  experiment from the checkpoint on: the changes are logged, written to TensorBoard as text at
  the resume step, and the hyperparameters are written again with the new values.
  """
  if jax.process_index() != 0:
    return
  current = json.loads(config.to_json_best_effort())
  previous = workdir_files.read_config(workdir) if start_step else None
  changes = config_changes(previous, current) if previous is not None else []
  if start_step == 0 or changes:
    writer.write_hparams(flat_hparams(current))
  if changes:
    logging.warning(
      'Resuming step %d with a config that differs from the one the run was trained with '
      '(%s):\n  %s',
      start_step,
      workdir_files.CONFIG_FILE,
      '\n  '.join(changes),
    )
    writer.write_texts(start_step, {'config_changes': '\n\n'.join(changes)})
  workdir_files.write_config(workdir, config.to_json_best_effort())


def _first_non_finite(pending: list[tuple[int, jax.Array]]) -> tuple[list[float], int | None]:
  """Fetches the pending per-step losses; returns them and the first non-finite step."""
  losses = [float(v) for v in jax.device_get([loss for _, loss in pending])]
  for (step, _), loss in zip(pending, losses, strict=True):
    if not np.isfinite(loss):
      return losses, step
  return losses, None


def _logged_tags(workdir: str) -> dict[int, set[str]]:
  """{step: tags} of every summary the TensorBoard event files in `workdir` hold."""
  from tensorboard.backend.event_processing import event_file_loader

  logged: dict[int, set[str]] = {}
  for path in epath.Path(workdir).glob('events.out.tfevents.*'):
    for event in event_file_loader.EventFileLoader(str(path)).Load():
      if event.HasField('summary'):
        logged.setdefault(int(event.step), set()).update(v.tag for v in event.summary.value)
  return logged


class _SkipLoggedSteps:
  """A clu MetricWriter that drops the summaries (step, tag) a run before a resume already
  logged for the steps the resumed run replays: it recomputes them exactly (same state, data
  stream and keys), so TensorBoard shows each one once. Per tag, not per step: a run killed
  while writing a step's summaries leaves some of them, and the resumed run writes the others."""

  _STEPPED = (
    'write_scalars',
    'write_images',
    'write_texts',
    'write_histograms',
    'write_videos',
    'write_audios',
    'write_summaries',
    'write_pointcloud',
  )

  def __init__(self, writer, logged: dict[int, set[str]]):
    self._writer = writer
    self._logged = logged

  def __getattr__(self, name):
    method = getattr(self._writer, name)
    if name not in self._STEPPED:
      return method

    def write(step, values, *args, **kwargs):
      done = self._logged.get(int(step), ())
      values = {tag: value for tag, value in values.items() if tag not in done}
      return method(step, values, *args, **kwargs) if values else None

    return write


def skip_replayed_summaries(writer, workdir: str, start_step: int):
  """The writer of a run resumed at `start_step`: summaries of the steps after it that the
  killed run logged before its end are not written twice (`_SkipLoggedSteps`). Everything else
  is written: a new run on an old workdir (its checkpoints deleted) logs all its steps, and an
  evaluation of the checkpoint's own step again (more images, other settings) logs its results."""
  if jax.process_index() != 0:
    return writer
  replayed = {step: tags for step, tags in _logged_tags(workdir).items() if step > start_step}
  return _SkipLoggedSteps(writer, replayed) if replayed else writer


def _resume_position(config, workdir: str, start_step: int) -> int:
  """Where this process's training stream continues after `start_step` (0 for a new run).

  The position saved with the checkpoint; without one (a checkpoint of an older version, or a
  different process count) the position of an uninterrupted stream with no skipped examples.
  """
  if start_step == 0:
    return 0
  position = stream_positions.load(workdir, start_step, jax.process_index(), jax.process_count())
  if position is None:
    position = start_step * (config.train.batch_size // jax.process_count())
    logging.warning(
      'No stream position saved for step %d of process %d/%d: continuing the '
      'training stream at %d (exact unless examples were skipped).',
      start_step,
      jax.process_index(),
      jax.process_count(),
      position,
    )
  return position


def run(config, workdir: str, mode: str) -> dict | None:
  """Trains, and with mode 'train_and_eval' evaluates at the end ('train' or 'train_and_eval').

  A training run holds the workdir's lock (process 0 takes it), so a second run on the same
  workdir stops at start instead of interleaving checkpoints with this one. (`--mode=eval` and
  its follower are eval_checkpoints.py: they only read the workdir.)

  Returns:
    The last evaluation record, or None when no evaluation ran.
  """
  lock = None
  if jax.process_index() == 0:
    lock = workdir_lock.WorkdirLock(workdir)
    lock.acquire()
  try:
    return _run(config, workdir, mode)
  finally:
    if lock is not None:
      lock.release()


def _check_num_steps(config, workdir: str, mode: str) -> None:
  """Says before anything is built what a resumed run will do with config.train.num_steps.

  Raises:
    ValueError: the workdir's latest checkpoint lies beyond num_steps (training cannot go back;
      evaluating that checkpoint is --mode=eval).
  """
  saved = checkpoints.saved_steps(workdir)
  if not saved:
    return
  latest, num_steps = saved[-1], config.train.num_steps
  if latest > num_steps:
    raise ValueError(
      f'config.train.num_steps={num_steps}: {workdir} holds a checkpoint of step {latest}, '
      f'beyond it, so there is nothing to train. Raise num_steps to train on, use --mode=eval '
      'to evaluate that checkpoint, or a new --workdir to start afresh.'
    )
  if latest == num_steps:
    logging.info(
      'The checkpoint of step %d is the last step (config.train.num_steps): nothing to train%s.',
      latest,
      '; evaluating it' if mode == 'train_and_eval' else '',
    )


def _run(config, workdir: str, mode: str) -> dict | None:
  _check_num_steps(config, workdir, mode)
  run = run_lib.open_run(config, workdir, data='train')
  # An evaluation's results could not be added to a broken eval_results.json: found now.
  workdir_files.read_results_history(workdir)
  if jax.process_index() == 0:
    workdir_files.write_categories(workdir, run.categories)
  writer = run.writer()
  # The checkpoint manager's start is the first collective; data and state took each process
  # its own time.
  distributed.wait_for_peers('checkpoints')
  manager = run.checkpoint_manager()
  state, start_step = run.start_state(manager)
  if start_step:
    writer = skip_replayed_summaries(writer, workdir, start_step)
  evaluation = run.evaluation(writer)
  state, step, preempted, record = _train(run, state, start_step, manager, writer, evaluation)
  if mode == 'train_and_eval' and not preempted:
    record = evaluation(state.ema_params, state.ema_model_state, step)
  manager.close()
  writer.flush()
  writer.close()
  return record


def _train(run, state, start_step: int, manager, writer, evaluation):
  """Trains from `start_step` to config.train.num_steps (or a preemption) with periodic logging,
  image summaries, checkpoints and evaluations; returns (state, last step, preempted, the last
  evaluation's record or None)."""
  config, workdir = run.config, run.workdir
  train_step = run.train_step()
  train_iter = run.task.train_iterator(
    run.source, start_position=_resume_position(config, workdir, start_step)
  )
  num_steps = config.train.num_steps
  report = periodic_actions.ReportProgress(
    num_train_steps=num_steps, writer=writer, every_steps=config.train.log_every
  )
  key = jax.random.key(config.seed)
  pending: list[tuple[int, jax.Array]] = []
  last_metrics, window_start, window_examples = None, time.time(), 0
  record = None
  _record_config(config, workdir, start_step, writer)

  def check_losses():
    """Stops the run at the first non-finite loss; returns the mean of the pending losses."""
    losses, bad_step = _first_non_finite(pending)
    pending.clear()
    if bad_step is not None:
      raise NonFiniteLossError(
        f'The loss became non-finite at step {bad_step}; the run stops here. The last good '
        f'checkpoint in {workdir} is kept (step {manager.latest_step()}).'
      )
    return float(np.mean(losses)) if losses else float('nan')

  distributed.wait_for_peers('training')
  step, preempted = start_step, preemption.stop_requested()
  last_step = num_steps
  if preempted:  # a signal while data, state or the step were prepared: nothing new to save
    logging.warning('Stopping before the first step; the workdir is as it was at step %d.', step)
    last_step = start_step
  for step in range(start_step + 1, last_step + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      batch = next(train_iter)
      global_batch = sharding.make_global_batch(batch, run.mesh)
      state, metrics = train_step(state, global_batch, jax.random.fold_in(key, step))
    pending.append((step, metrics['loss']))
    last_metrics = metrics
    window_examples += config.train.batch_size
    report(step)

    preempted = preemption.preemption_requested(step)
    if step % config.train.log_every == 0 or step == num_steps or preempted:
      mean_loss = check_losses()
      scalars = {f'train/{k}': float(v) for k, v in jax.device_get(last_metrics).items()}
      scalars['train/loss'] = mean_loss
      elapsed = time.time() - window_start
      scalars['train/examples_per_sec'] = window_examples / max(elapsed, 1e-9)
      window_start, window_examples = time.time(), 0
      writer.write_scalars(step, scalars)
      if hasattr(train_iter, 'skipped') and train_iter.skipped:
        writer.write_scalars(step, {'train/skipped_examples': train_iter.skipped})
    if step % config.train.image_summary_every == 0 and jax.process_index() == 0:
      pictures = run.task.train_pictures(batch, run.categories)
      writer.write_images(step, {'train/input_gt': pictures})
    if step % config.train.checkpoint_every == 0 or step == num_steps or preempted:
      check_losses()
      manager.save(step, state, force=preempted or step == num_steps)
      stream_positions.save(
        workdir, step, jax.process_index(), jax.process_count(), train_iter.position
      )
      stream_positions.prune(workdir, set(manager.all_steps()) | {step})
    if preempted:
      logging.warning('Preemption requested: saved step %d, exiting.', step)
      break
    if config.train.eval_every and step % config.train.eval_every == 0 and step < num_steps:
      record = evaluation(state.ema_params, state.ema_model_state, step)
  # Stop the endless training input pipeline: its tf.data threads would otherwise keep filling
  # buffers during evaluation and delay the interpreter's exit.
  del train_iter
  manager.wait_until_finished()
  return state, step, preempted, record
