"""`--mode=eval`: evaluate a training workdir's checkpoints, the latest one or each as it appears.

  python -m pix2seq_d.main --config=C --workdir=RUN --mode=eval                          # latest
  python -m pix2seq_d.main --config=C --workdir=RUN --mode=eval --config.eval.follow=True  # each

A follower is the second job beside a training run (on other accelerators) that evaluates every
checkpoint the trainer writes, once each, oldest first, and stops once it has evaluated the
checkpoint of config.train.num_steps. Each evaluation is recorded in TensorBoard (its own event
file in the workdir, eval/<scalar> at the checkpoint's step) and in eval_results.json; a step
already in eval_results.json's history is not evaluated again, so a restarted follower picks up
where it stopped.

Nothing here changes what the trainer owns: the checkpoints are opened read-only (a step being
written is a temporary folder that orbax does not list, so it is skipped until it is complete, and
nothing is cleaned up), no lock is taken and categories.json is not rewritten. Only the EMA weights
are restored, into abstract arrays: no optimiser state or second copy of the weights is built.

A checkpoint the trainer deletes (it keeps config.train.keep_checkpoints) before the follower gets
to it is skipped with a warning. When no training run holds the workdir's run.lock for
config.eval.follow_timeout_s seconds and the final step has not appeared, the follower stops with
an error naming the last step it evaluated. SIGINT or SIGTERM stop it at once while it waits and
between batches while it evaluates (exit 128 + signal; every finished evaluation is kept).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from absl import logging

from pix2seq_d.loops import run as run_lib
from pix2seq_d.parallel import distributed, hosts
from pix2seq_d.runtime import checkpoints, preemption, workdir_files, workdir_lock

# What process 0 decides at each poll of a follower (a step >= 0 means: evaluate that step).
_WAIT, _DONE, _TRAINER_GONE = -1, -2, -3


class TrainerGoneError(RuntimeError):
  """A follower found no live training run for too long before the final step."""


def run(config, workdir: str) -> dict | None:
  """Evaluates the latest checkpoint of `workdir`, or with config.eval.follow each new one.

  Returns:
    The record of the last evaluation (None when a follower found nothing left to evaluate).

  Raises:
    FileNotFoundError: no checkpoint in `workdir` (plain eval).
    TrainerGoneError: a follower waited config.eval.follow_timeout_s with no training run.
  """
  follow = config.eval.follow
  if not follow and not checkpoints.saved_steps(workdir):
    # Checked before anything is built: an eval of the wrong folder leaves it as it was.
    raise FileNotFoundError(f'--mode=eval: no checkpoint in {workdir}; train first.')
  run = run_lib.open_run(config, workdir, data='eval')
  # Results could not be added to a broken eval_results.json: found before any evaluation.
  evaluated = {record['step'] for record in workdir_files.read_results_history(workdir)}
  writer = run.writer()
  run_eval = run.evaluation(writer)
  distributed.wait_for_peers('checkpoints')
  manager = run.checkpoint_manager(read_only=True)

  def evaluate_step(step: int) -> dict:
    return run_eval(*run.restore_ema(manager, step), step)

  try:
    if not follow:
      step = manager.latest_step()
      if step is None:
        raise FileNotFoundError(f'--mode=eval: no complete checkpoint in {workdir}; train first.')
      logging.info('Evaluating the checkpoint of step %d in %s.', step, workdir)
      return evaluate_step(step)
    return follow_run(run.config, workdir, manager, evaluate_step, evaluated)
  finally:
    manager.close()
    writer.close()


def _decide(config, steps: list[int], evaluated: set[int], idle_s: float) -> int:
  """What a follower does next (process 0's view): a step to evaluate, _WAIT, _DONE or
  _TRAINER_GONE. `idle_s` is how long no training run has held the workdir."""
  pending = sorted(set(steps) - evaluated)
  if pending:
    return pending[0]
  if any(step >= config.train.num_steps for step in evaluated):
    return _DONE
  if idle_s > config.eval.follow_timeout_s:
    return _TRAINER_GONE
  return _WAIT


def follow_run(
  config,
  workdir: str,
  manager: checkpoints.CheckpointManager,
  evaluate_step: Callable[[int], dict],
  evaluated: set[int],
) -> dict | None:
  """Evaluates every checkpoint of `workdir` not in `evaluated`, as they appear (module doc).

  Args:
    config: the experiment config (train.num_steps is the final step; eval.follow_poll_s and
      eval.follow_timeout_s the waits).
    workdir: the training run's workdir.
    manager: its checkpoints, opened read-only.
    evaluate_step: step -> evaluation record (restores the step's EMA weights and evaluates).
    evaluated: steps already evaluated (eval_results.json's history); updated in place.

  Returns:
    The last evaluation record, or None when nothing was left to evaluate.
  """
  lock = workdir_lock.WorkdirLock(workdir)  # read only: whether a trainer is alive
  last_alive = time.monotonic()
  record = None
  logging.info(
    'Following %s: evaluating each new checkpoint until step %d (config.train.num_steps).',
    workdir,
    config.train.num_steps,
  )
  while True:
    if lock.live_holder() is not None:
      last_alive = time.monotonic()
    steps = manager.reload()
    action = hosts.value_of_first(_decide(config, steps, evaluated, time.monotonic() - last_alive))
    if action == _DONE:
      logging.info('Followed %s to its final step; evaluated: %s.', workdir, sorted(evaluated))
      return record
    if action == _TRAINER_GONE:
      last = max(evaluated, default=None)
      raise TrainerGoneError(
        f'--config.eval.follow: no training run has held {workdir} (its run.lock) for '
        f'{config.eval.follow_timeout_s} s (config.eval.follow_timeout_s) and its checkpoint of '
        f'step {config.train.num_steps} (config.train.num_steps) has not appeared. Every '
        f'checkpoint up to step {last} is evaluated; start the follower again to go on.'
      )
    if action == _WAIT:
      preemption.wait_or_stop(
        config.eval.follow_poll_s,
        f'following {workdir} (evaluated: {sorted(evaluated)}; eval_results.json holds them)',
      )
      continue
    try:
      record = evaluate_step(action)
    except (FileNotFoundError, ValueError) as error:
      if (manager.directory / str(action)).exists():
        raise
      logging.warning(
        'Skipping step %d: the training run deleted it before it was evaluated (it keeps the '
        'newest config.train.keep_checkpoints; raise it, or checkpoint less often, so that the '
        'follower keeps up). %s',
        action,
        error,
      )
    evaluated.add(action)
    last_alive = time.monotonic()  # a new checkpoint is a sign of life too
