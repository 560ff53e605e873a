"""The evaluation loop, one for every task: sample with the EMA weights, post-process, score.

  batches of the task's eval iterator
    -> the task's sampler inputs (padded so that every process runs the same program)
    -> the jitted predict function -> this process's rows
    -> the task's post-processing to each example's original size
    -> every evaluator of config.eval.metrics (and the task's prediction files)
    -> evaluator states gathered over the processes -> results

Every process runs the same number of batches (the pipeline pads the last ones with
`valid=False`), so the jitted sampler stays in lockstep; each process scores its own examples and
the evaluators' statistics are combined over processes at the end, so every process returns the
results of the whole eval split. Process 0 writes eval_results.json (the flat record of every
evaluator's scalars on top, each evaluator's tables under its name, and the history of records)
and TensorBoard (eval/<scalar> and the task's pictures of the first examples); with
config.eval.write_predictions every process writes its examples' prediction files under
<workdir>/predictions/step_<N>, staged and moved into place when the pass completes: a pass that
stops (a signal, an error) leaves that folder as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from pix2seq_d.evaluation import registry
from pix2seq_d.parallel import distributed, hosts, sharding
from pix2seq_d.runtime import preemption, workdir_files
from pix2seq_d.tasks import base


def predictions_dir(workdir: str, step: int) -> str:
  """Where an evaluation of `step` writes its prediction files."""
  return str(epath.Path(workdir) / 'predictions' / f'step_{step}')


def _stack_pictures(pictures: list[np.ndarray]) -> np.ndarray:
  """(N, H, W, 3) of pictures of one height, narrower ones padded on the right with black."""
  width = max(p.shape[1] for p in pictures)
  return np.stack([np.pad(p, [(0, 0), (0, width - p.shape[1]), (0, 0)]) for p in pictures])


def evaluate(
  config,
  *,
  task: base.Task,
  predict_fn: Callable,
  params: Any,
  model_state: Any,
  mesh: jax.sharding.Mesh,
  categories,
  eval_iterator: Iterable[dict[str, np.ndarray]],
  step: int,
  workdir: str,
  writer=None,
) -> dict[str, Any]:
  """Runs the sampler over the eval split and returns the record of every configured metric.

  Args:
    config: the experiment config (config.eval.metrics names the evaluators).
    task: the task (tasks/registry.py), which reads the batches and post-processes.
    predict_fn: `loops.state.jit_predict(task, ...)`: (params, model_state, inputs, key) -> ids.
    params, model_state: the (EMA) weights to evaluate.
    mesh: the device mesh.
    categories: the dataset's categories (semantic s is categories[s - 1]).
    eval_iterator: this process's evaluation batches (`task.eval_iterator`), in lockstep.
    step: the training step being evaluated (for the results and summaries).
    workdir: where eval_results.json (and predictions) are written.
    writer: a clu metric writer, or None.

  Returns:
    {'step': step, **every evaluator's scalars} (e.g. PQ, SQ, RQ, ..., num_images; J&F-Mean,
    ..., num_videos), and with two batches or more 'examples_per_s': the eval examples (images,
    or videos) sampled, post-processed and scored per second after the first batch, which
    includes the compilation.
  """
  evaluators = registry.make_evaluators(config.eval.metrics, categories, config.eval)
  distributed.wait_for_peers('evaluation')  # before its first collective (eval padding)
  logging.info('Evaluating step %d: %s.', step, ', '.join(config.eval.metrics))
  files = None
  if config.eval.write_predictions:
    files = task.prediction_files(predictions_dir(workdir, step), categories)
  key = jax.random.key(config.seed + 1)
  pictures, num_examples = [], 0
  timed_from = None  # (time, examples) once the first batch (and its compilation) is done
  try:
    for batch_index, batch in enumerate(eval_iterator):
      if batch_index == 1:
        timed_from = (time.perf_counter(), num_examples)
      preemption.check_stop(
        f'evaluating step {step} at batch {batch_index} (no results and no prediction files '
        'written; the checkpoint is complete: run the same command to evaluate)'
      )
      inputs = sharding.make_global_batch(task.eval_inputs(batch), mesh)
      ids = predict_fn(params, model_state, inputs, jax.random.fold_in(key, batch_index))
      pred = hosts.local_rows(ids, mesh)
      for example in task.eval_examples(batch, pred, categories):
        for evaluator in evaluators:
          evaluator.update(example.ground_truth, evaluator.read(example), example.example_id)
        if files is not None:
          files.add(example)
        if len(pictures) < config.eval.num_image_summaries:
          pictures.append(task.eval_picture(batch, pred, example.row, categories))
        num_examples += 1
    if files is not None and num_examples:
      files.close()
  finally:
    if files is not None:
      files.abort()

  record = {'step': int(step)}
  if timed_from is not None and num_examples > timed_from[1]:
    # Every process samples its share at once: this process's rate times their number.
    seconds = time.perf_counter() - timed_from[0]
    rate = (num_examples - timed_from[1]) / seconds * jax.process_count()
    record['examples_per_s'] = round(rate, 3)
  details, tables = {}, []
  for evaluator in evaluators:
    evaluator.merge(hosts.gather_json(evaluator.state()))
    results = evaluator.results()
    clash = set(results.scalars) & set(record)
    if clash:
      raise ValueError(
        f'config.eval.metrics={tuple(config.eval.metrics)}: {evaluator.name!r} reports '
        f'{sorted(clash)}, which an earlier evaluator reported too.'
      )
    record.update(results.scalars)
    details[evaluator.name] = results.details
    tables.append(f'{evaluator.name}:\n{results.table}')
  logging.info(
    'Step %d evaluation (%d examples on this process):\n%s',
    step,
    num_examples,
    '\n\n'.join(tables),
  )
  if jax.process_index() == 0:
    workdir_files.write_results(workdir, record, **details)
    if writer is not None:
      writer.write_scalars(step, {f'eval/{k}': v for k, v in record.items() if k != 'step'})
      if pictures:
        writer.write_images(step, {task.picture_tag: _stack_pictures(pictures)})
      writer.flush()
  return record
