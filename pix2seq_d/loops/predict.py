"""`--mode=predict`, one runner for every task: segment new inputs with a trained run's EMA weights.

  python -m pix2seq_d.main --config=configs/shapes.py --workdir=RUN --mode=predict \
      --config.predict.input=IMAGE_FOLDER_OR_VIDEO --config.predict.output=OUT

The task says what the input may be (images and folders of images; for a video task folders of
frames, folders of such folders and video files) and what it writes into OUT (COCO panoptic PNGs
+ JSON and coloured overlays; for videos per video the DAVIS-layout object PNGs, COCO panoptic
and overlays). Outputs are named by the input's name, so two inputs with one name (a.png, a.jpg)
are refused before anything runs. Inputs are read a batch at a time (one per data-parallel
device); an input that cannot be read is skipped with a warning naming it, and the others are
all written: the run fails only when none could be read. The files are staged and moved into
place at the end; SIGINT or SIGTERM stops before the next batch and moves the files of the inputs
predicted so far into place (the COCO panoptic JSON names exactly those), then exits with
128 + the signal; an error leaves OUT as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from pix2seq_d.loops import run as run_lib
from pix2seq_d.parallel import sharding
from pix2seq_d.runtime import preemption
from pix2seq_d.tasks import base


@dataclasses.dataclass
class Predictor:
  """A trained run's EMA weights and the compiled sampler of its task (`state.jit_predict`)."""

  config: Any
  task: base.Task
  predict_fn: Callable
  params: Any
  model_state: Any
  step: int
  categories: list
  mesh: jax.sharding.Mesh

  @property
  def batch_size(self) -> int:
    """Rows per call: one per data-parallel device."""
    return self.mesh.shape['data'] * self.mesh.shape['fsdp']


def load_predictor(config, workdir: str) -> Predictor:
  """Restores the newest checkpoint of `workdir` and compiles its task's sampler.

  Raises:
    FileNotFoundError: no categories.json or no checkpoint in `workdir`.
  """
  return restore_predictor(run_lib.open_run(config, workdir, data='workdir'))


def restore_predictor(run: run_lib.Run) -> Predictor:
  """The Predictor of the newest checkpoint of `run`'s workdir (FileNotFoundError: none)."""
  workdir = run.workdir
  # Read-only and the EMA weights only: safe beside a training run writing the same workdir.
  manager = run.checkpoint_manager(read_only=True)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'--mode=predict: no checkpoint in {workdir}.')
  params, model_state = run.restore_ema(manager, step)
  manager.close()
  return Predictor(
    run.config,
    run.task,
    run.predict_fn(),
    params,
    model_state,
    step,
    list(run.categories),
    run.mesh,
  )


def run(config, workdir: str) -> str:
  """Predicts every input; returns what the task's prediction files return (the panoptic JSON
  of images, the output folder of videos)."""
  output = config.predict.output
  if not output:
    raise ValueError('--mode=predict needs --config.predict.output=DIR.')
  if not config.predict.input:
    raise ValueError('--mode=predict needs --config.predict.input=PATH.')
  run = run_lib.open_run(config, workdir, data='workdir')
  sources = run.task.predict_sources(config.predict.input)  # before any weight is read
  predictor = restore_predictor(run)
  task, categories, rows = predictor.task, predictor.categories, predictor.batch_size
  task.prepare_predict(sources, categories)  # given masks: checked before any sampling
  files = task.prediction_files(output, categories)
  names = list(sources)
  written, skipped, stopped_at = 0, [], None
  try:
    for start in range(0, len(names), rows):
      if preemption.stop_requested():
        stopped_at = start
        break
      chunk = []  # (input index, name, PredictInput) of the readable inputs
      for index in range(start, min(start + rows, len(names))):
        try:
          chunk.append((index, names[index], task.load_predict_input(sources[names[index]])))
        except ValueError as error:
          logging.warning('Skipping %s', error)
          skipped.append(names[index])
      if not chunk:
        continue
      inputs = task.predict_inputs([item for _, _, item in chunk], rows)
      pred = np.asarray(
        predictor.predict_fn(
          predictor.params,
          predictor.model_state,
          sharding.make_global_batch(inputs, predictor.mesh),
          jax.random.key(config.seed + start),
        )
      )
      for row, (index, name, item) in enumerate(chunk):
        files.add(task.predict_example(index, name, pred[row], item, categories, row))
        written += 1
        logging.info('Predicted %s -> %s', name, output)
    if not written and stopped_at is None:
      raise ValueError(
        f'config.predict.input={config.predict.input}: none of its {len(names)} inputs could be '
        'read (see the warnings above).'
      )
    # On a stop too: the inputs predicted so far keep their files (a rerun predicts them all).
    result = files.close() if written else None
  finally:
    files.abort()
  if stopped_at is not None:
    kept = f'the files of the {written} predicted are written ({result})'
    if not written:
      kept = 'nothing was written'
    raise preemption.StopRequested(
      f'predicting after {stopped_at} of {len(names)} inputs: {kept}; run the same command to '
      f'predict all {len(names)}'
    )
  logging.info(
    'Predicted %d inputs with the EMA weights of step %d: %s', written, predictor.step, result
  )
  if skipped:
    logging.warning(
      '%d of %d inputs could not be read and have no prediction: %s',
      len(skipped),
      len(names),
      skipped,
    )
  return result
