"""The video evaluation loop: stream clips through the sampler and score DAVIS 2017 J&F.

Batches of clips come from `eval_pipeline.make_video_eval_iterator` (the same number of batches on
every process). Each batch's frame axis is padded with blank frames to a multiple of
config.eval.video_length_bucket, the same length on every process (the longest clip of the batch
over all processes decides), so the jitted sampler compiles once per bucket length and all hosts
run the same program in lockstep. The sampler is causal, so the padding frames, sampled after the
real ones, change nothing and are dropped.

Each clip's prediction is post-processed at the original size (`tasks.video_panoptic`), its
objects matched to the ground truth's by the DAVIS 2017 unsupervised rules
(`evaluation.davis.evaluate_sequence`); the per-sequence J and F of all processes are gathered and
summarised on every process. Process 0 writes eval_results.json and TensorBoard (the J&F scalars
and image strips of the first clips); with config.eval.write_predictions every process writes its
clips in the DAVIS results layout, <workdir>/predictions/step_<N>/<video>/<frame>.png, which
`python -m pix2seq_d.evaluation.davis --results_dir=...` reads.
"""

import json
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from pix2seq_d import eval_loop, sharding, workdir_files
from pix2seq_d.evaluation import davis, visualize
from pix2seq_d.models import layers
from pix2seq_d.tasks import panoptic, video


def padded_length(num_frames: int, bucket: int) -> int:
  """The frame count a batch is padded to: `num_frames` rounded up to a multiple of `bucket`."""
  return max(1, math.ceil(num_frames / bucket)) * bucket


def _shared_length(local_frames: int, bucket: int) -> int:
  """The padded length of this batch on every process: the bucket of the longest clip of all."""
  longest = local_frames
  if jax.process_count() > 1:
    longest = int(np.max(multihost_utils.process_allgather(np.int64(local_frames))))
  return padded_length(longest, bucket)


def _pad_frames(array: np.ndarray, length: int, value: float) -> np.ndarray:
  """(B, T, ...) -> (B, length, ...), new frames filled with `value`."""
  pad = [(0, 0), (0, length - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
  return np.pad(array, pad, constant_values=value)


def _gather_rows(rows: dict[str, Any]) -> dict[str, Any]:
  """The union of every process's {name: JSON-able value} (a no-op with one process)."""
  if jax.process_count() == 1:
    return rows
  encoded = np.frombuffer(json.dumps(rows).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int64(len(encoded))))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[: len(encoded)] = encoded
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  merged = {}
  for size, data in zip(sizes, gathered, strict=True):
    merged.update(json.loads(bytes(data[: int(size)]).decode()))
  return merged


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
  """Streams the eval clips through the sampler and returns the J&F record.

  Args:
    config: the experiment config (a video task).
    predict_fn: from `sharding.jit_predict` for the video task.
    params, model_state: the (EMA) weights to evaluate.
    mesh: the device mesh.
    categories: the dataset's categories (which classes are things).
    eval_iterator: from `eval_pipeline.make_video_eval_iterator`.
    step: the training step being evaluated.
    workdir: where eval_results.json (and predictions) are written.
    writer: a clu metric writer, or None.

  Returns:
    {'step', 'J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay',
     'id_consistency', 'num_objects', 'num_videos'}; id_consistency is the share of ground-truth
    objects that keep one predicted id from their first to their last frame.
  """
  m = config.model
  is_thing = panoptic.is_thing_table(categories)
  image_size = layers.static_tuple(m.image_size)
  bucket = int(config.eval.video_length_bucket)
  pad_value = float(config.data.image_pad_value)
  key = jax.random.key(config.seed + 1)
  out = epath.Path(workdir) / 'predictions' / f'step_{step}'
  rows, pictures = {}, []
  for batch_index, batch in enumerate(eval_iterator):
    length = _shared_length(batch['frames'].shape[1], bucket)
    inputs = {'frames': _pad_frames(batch['frames'], length, pad_value)}
    if config.eval.use_gt_cond_frames:
      inputs['gt_cond'] = _pad_frames(batch['label'], length, 0)
    inputs = sharding.make_global_batch(inputs, mesh)
    ids = predict_fn(
      params,
      model_state,
      inputs['frames'],
      inputs.get('gt_cond'),
      jax.random.fold_in(key, batch_index),
    )
    pred = eval_loop.local_rows(ids, mesh)
    for i in np.flatnonzero(batch['valid']):
      num_frames = int(batch['num_frames'][i])
      orig_h, orig_w = (int(v) for v in batch['orig_size'][i])
      semantic, instance = video.postprocess_clip(
        pred[i, :num_frames],
        image_size,
        batch['unpadded_size'][i],
        (orig_h, orig_w),
        num_classes=m.num_classes,
        max_instances=m.max_instances,
        min_pixels=config.eval.min_pixels,
      )
      pred_ids = video.object_ids(
        semantic, instance, is_thing, by='size', limit=davis.MAX_PROPOSALS
      )
      gt_ids = video.gt_object_ids(batch['orig_label'][i, :num_frames, :orig_h, :orig_w], is_thing)
      name = batch['video_name'][i].decode()
      j, f = davis.evaluate_sequence(gt_ids, pred_ids)
      kept, objects = video.id_consistency(gt_ids, pred_ids)
      rows[name] = {'J': j.tolist(), 'F': f.tolist(), 'kept': kept, 'objects': objects}
      if config.eval.write_predictions:
        for t, frame_ids in enumerate(pred_ids):
          davis.write_indexed_png(str(out / name / f'{t:05d}.png'), frame_ids)
      if len(pictures) < config.eval.num_image_summaries:
        mask_gt = batch['label'][i, :num_frames]
        mask_pred = pred[i, :num_frames]
        pictures.append(
          visualize.video_strip(
            batch['frames'][i, :num_frames],
            video.object_ids(mask_gt[..., 0], mask_gt[..., 1], is_thing, by='id'),
            video.object_ids(mask_pred[..., 0], mask_pred[..., 1], is_thing, by='size'),
            max_frames=config.eval.video_strip_frames,
          )
        )

  rows = _gather_rows(rows)
  results = davis.summarize(
    {name: (np.asarray(r['J']), np.asarray(r['F'])) for name, r in sorted(rows.items())}
  )
  kept = sum(r['kept'] for r in rows.values())
  objects = sum(r['objects'] for r in rows.values())
  record = {'step': int(step)}
  record.update({k: v for k, v in results.items() if k != 'per_sequence'})
  record.update(
    id_consistency=kept / objects if objects else 0.0, num_objects=objects, num_videos=len(rows)
  )
  logging.info(
    'Step %d video evaluation on %d clips (%d of %d objects keep one id):\n%s',
    step,
    len(rows),
    kept,
    objects,
    davis.format_table(results),
  )
  if jax.process_index() == 0:
    workdir_files.write_results(workdir, record, per_sequence=results['per_sequence'])
    if writer is not None:
      writer.write_scalars(step, {f'eval/{k}': v for k, v in record.items() if k != 'step'})
      if pictures:
        width = max(p.shape[1] for p in pictures)
        strips = [np.pad(p, [(0, 0), (0, width - p.shape[1]), (0, 0)]) for p in pictures]
        writer.write_images(step, {'eval/video_input_gt_prediction': np.stack(strips)})
      writer.flush()
  return record
