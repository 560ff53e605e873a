"""The evaluation loop: sample masks with the EMA weights, post-process, and accumulate PQ.

Each process evaluates its own part of the eval split; every process runs the same number of
batches (the pipeline pads the last ones with `valid=False`) so the jitted sampler stays in
lockstep, and the per-category PQ statistics are summed over processes at the end.
"""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from pix2seq_d import sharding, workdir_files
from pix2seq_d.evaluation import coco_format, pq_accumulator, visualize
from pix2seq_d.models import layers
from pix2seq_d.tasks import panoptic


def local_rows(array: jax.Array, mesh: jax.sharding.Mesh) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in the order it fed them."""
  if jax.process_count() == 1:
    return np.asarray(array)
  local = multihost_utils.global_array_to_host_local_array(
    array, mesh, PartitionSpec(sharding.BATCH_AXES)
  )
  return np.asarray(local)


def summarise(results: dict, step: int) -> dict[str, Any]:
  """The flat record written to eval_results.json and TensorBoard."""
  record = {'step': int(step)}
  for group, suffix in (('All', ''), ('Things', '_th'), ('Stuff', '_st')):
    for metric in ('pq', 'sq', 'rq'):
      record[f'{metric.upper()}{suffix}'] = float(results[group][metric])
    record[f'num_categories{suffix}'] = int(results[group]['n'])
  return record


def evaluate(
  config,
  *,
  predict_fn: Callable,
  params: Any,
  model_state: Any,
  mesh: jax.sharding.Mesh,
  categories,
  eval_iterator,
  step: int,
  workdir: str,
  writer=None,
) -> dict[str, Any]:
  """Runs the sampler over the eval split and returns the PQ record.

  Args:
    config: the experiment config.
    predict_fn: from `sharding.jit_predict`.
    params, model_state: the (EMA) weights to evaluate.
    mesh: the device mesh.
    categories: the dataset's categories (semantic s is categories[s - 1]).
    eval_iterator: the finite eval iterator of `eval_pipeline.make_eval_iterator`.
    step: the training step being evaluated (for the results and summaries).
    workdir: where eval_results.json (and predictions) are written.
    writer: a clu metric writer, or None.

  Returns:
    The flat results record (step, PQ, SQ, RQ, PQ_th, ..., num_images).
  """
  m = config.model
  accumulator = pq_accumulator.PQAccumulator(categories)
  is_thing = panoptic.is_thing_table(categories)
  image_size = layers.static_tuple(m.image_size)
  key = jax.random.key(config.seed + 1)
  predictions, pictures, num_images = [], [], 0
  for batch_index, batch in enumerate(eval_iterator):
    images = sharding.make_global_batch({'image': batch['image']}, mesh)['image']
    pred = local_rows(
      predict_fn(params, model_state, images, jax.random.fold_in(key, batch_index)), mesh
    )
    for i in np.flatnonzero(batch['valid']):
      orig_h, orig_w = (int(v) for v in batch['orig_size'][i])
      semantic, instance = panoptic.postprocess(
        pred[i],
        image_size,
        batch['unpadded_size'][i],
        (orig_h, orig_w),
        num_classes=m.num_classes,
        max_instances=m.max_instances,
        min_pixels=config.eval.min_pixels,
        is_thing=is_thing,
      )
      gt = batch['orig_label'][i, :orig_h, :orig_w]
      gt_ids, gt_segments = coco_format.segments_from_semantic_instance(
        gt[..., 0], gt[..., 1], categories, crowd=gt[..., 2] > 0
      )
      pred_ids, pred_segments = coco_format.segments_from_semantic_instance(
        semantic, instance, categories
      )
      image_id = int(batch['image_id'][i])
      accumulator.update(gt_ids, gt_segments, pred_ids, pred_segments, image_id=image_id)
      num_images += 1
      if config.eval.write_predictions:
        predictions.append((image_id, f'{image_id:012d}', pred_ids, pred_segments))
      if len(pictures) < config.eval.num_image_summaries:
        pictures.append(
          visualize.summary_image(batch['image'][i], batch['label'][i], pred[i], categories)
        )

  state = accumulator.state()
  if jax.process_count() > 1:
    state = np.asarray(multihost_utils.process_allgather(state)).sum(axis=0)
    num_images = int(np.asarray(multihost_utils.process_allgather(np.int64(num_images))).sum())
  totals = pq_accumulator.PQAccumulator(categories)
  totals.merge_state(state)
  results = totals.results()
  record = dict(summarise(results, step), num_images=num_images)
  logging.info(
    'Step %d evaluation on %d images:\n%s',
    step,
    num_images,
    pq_accumulator.format_table(results, categories),
  )

  if config.eval.write_predictions and predictions:
    out = epath.Path(workdir) / 'predictions' / f'step_{step}'
    if jax.process_count() > 1:
      out = out / f'process_{jax.process_index()}'
    coco_format.write_panoptic_predictions(str(out), predictions, categories)
  if jax.process_index() == 0:
    workdir_files.write_results(workdir, record, per_class=results['per_class'])
    if writer is not None:
      writer.write_scalars(step, {f'eval/{k}': v for k, v in record.items() if k != 'step'})
      if pictures:
        writer.write_images(step, {'eval/input_gt_prediction': np.stack(pictures)})
      writer.flush()
  return record
