"""Evaluation batches: one pass over the eval split per process, in lockstep across processes.

Evaluation batches hold 'image' float32 (B, H, W, 3), the mask-size 'label' int32 (B, Hm, Wm, 2)
(crowd pixels void), 'orig_label' int32 (B, Ho, Wo, 3) = [semantic, instance, crowd] at the
original size zero-padded to config.data.eval_orig_size, 'orig_size' and 'unpadded_size' int32
(B, 2), 'image_id' int64 (B,) and 'valid' bool (B,). Every process yields the same number of
batches, ceil(examples / global batch); the tail is padding with valid = False so hosts stay in
lockstep. An example whose 'error' is set stops the evaluation with its message (the iterator
raises ValueError). Video evaluation batches clips the same way (`make_video_eval_iterator`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf
from absl import logging

from pix2seq_d.data import augment, instance_ids, pipeline, registry, splits
from pix2seq_d.data.iterator import DataIterator, PipelineStats
from pix2seq_d.data.source import Source

_PADDING_IMAGE_ID = -1  # image_id of eval padding examples (valid = False).


def _pixels_or_placeholder(example: dict, pixels: str, frames: tuple[int, ...]) -> tuple:
  """(example[pixels], semantic, instance, crowd) of a fine example (tf-traceable); of a broken
  one (its 'error' is set), zeros of one 1x1 image per leading dimension (`frames`: () for an
  image, (1,) for a clip): a broken example carries placeholder pixels, and these keep resizing
  from failing before the iterator raises its error. Pixels uint8 (*frames, 1, 1, 3), the label
  maps int32 (*frames, 1, 1)."""
  parts = (pixels, 'semantic', 'instance', 'crowd')
  placeholder = (tf.zeros([*frames, 1, 1, 3], tf.uint8),) + (
    tf.zeros([*frames, 1, 1], tf.int32),
  ) * 3
  return tf.cond(
    tf.equal(example['error'], ''),
    lambda: tuple(example[key] for key in parts),
    lambda: placeholder,
  )


def _fit_original(orig: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """(H, W, C) -> (Ho, Wo, C): zero-pad bottom / right (cropping only an image already in error)."""
  height, width = size
  orig = orig[:height, :width]
  shape = tf.shape(orig)
  padded = tf.pad(orig, [[0, height - shape[0]], [0, width - shape[1]], [0, 0]])
  return tf.ensure_shape(padded, [height, width, orig.shape[-1]])


def _eval_image_fn(config) -> Callable[[dict], dict]:
  kwargs = pipeline.augment_kwargs(config)
  orig_h, orig_w = (int(v) for v in config.data.eval_orig_size)
  max_instances = config.model.max_instances

  def preprocess(example):
    image, semantic, instance, crowd = _pixels_or_placeholder(example, 'image', ())
    label = pipeline.training_label(semantic, instance, crowd, config.data.train_crowd)
    images, labels, unpadded = augment.eval_resize(
      image[None],
      label[None],
      image_size=kwargs['image_size'],
      mask_size=kwargs['mask_size'],
      pad_value=kwargs['pad_value'],
    )
    labels, _ = instance_ids.assign_instance_ids(labels, max_instances, seed=None)
    orig = tf.stack([semantic, instance, crowd], axis=-1)
    orig_size = tf.shape(orig)[:2]
    fits = (orig_size[0] <= orig_h) & (orig_size[1] <= orig_w)
    too_large = tf.strings.format(
      'Image {}: original size {}x{} exceeds config.data.eval_orig_size {}x{}.',
      [example['image_id'], orig_size[0], orig_size[1], orig_h, orig_w],
    )
    fine = tf.equal(example['error'], '')
    error = tf.where(fine, tf.where(fits, tf.constant(''), too_large), example['error'])
    return {
      'image': images[0],
      'label': labels[0],
      'orig_label': _fit_original(orig, (orig_h, orig_w)),
      'orig_size': orig_size,
      'unpadded_size': unpadded,
      'image_id': tf.cast(example['image_id'], tf.int64),
      'valid': tf.constant(True),
      'error': error,
    }

  return preprocess


def _eval_padding(element_spec: dict, pad_value: float) -> tf.data.Dataset:
  """Endless invalid examples matching `element_spec` (image = pad value, labels 0)."""
  example = {key: tf.zeros(spec.shape, spec.dtype) for key, spec in element_spec.items()}
  example['image'] = tf.fill(element_spec['image'].shape, tf.constant(pad_value, tf.float32))
  example['image_id'] = tf.constant(_PADDING_IMAGE_ID, tf.int64)
  example['error'] = tf.constant('')
  return tf.data.Dataset.from_tensors(example).repeat()


def _read_share(
  config,
  source: Source,
  process_index: int | None,
  process_count: int | None,
  preprocess: Callable[[dict], dict],
  what: str,
) -> tuple[tf.data.Dataset, int, int]:
  """This process's share of the eval split, preprocessed, and its batching.

  The split is limited to config.eval.num_examples (when > 0) and cut into one contiguous part
  per process; every process gets ceil(total / global batch) batches.

  Returns:
    (dataset of preprocessed examples, local batch size, number of batches).
  """
  process_index, process_count = splits.processes(process_index, process_count)
  batch_size = splits.local_batch_size(
    config.eval.batch_size, process_count, 'config.eval.batch_size'
  )
  split = source.split(config.data.eval_split)
  total = splits.num_split_examples(source.builder, split)
  if config.eval.num_examples > 0:
    total = min(total, config.eval.num_examples)
  if total == 0:
    raise ValueError(f'config.data.eval_split {split!r} of {source.name!r} is empty.')
  num_batches = math.ceil(total / config.eval.batch_size)
  instruction, size = splits.process_read_instruction(
    source.builder, split, process_index, process_count, limit=total
  )
  logging.info(
    'Process %d/%d evaluates %d %s of %s %s in %d batches.',
    process_index,
    process_count,
    size,
    what,
    source.name,
    split,
    num_batches,
  )
  if instruction is None:
    # An empty share still needs the element structure for its padding batches: trace a dummy.
    whole, _ = splits.process_read_instruction(source.builder, split, 0, 1, 1)
    probe, finish = pipeline.read(source, whole, None)
    return probe.map(finish).map(preprocess).take(0), batch_size, num_batches
  dataset, finish = pipeline.read(source, instruction, None)
  dataset = dataset.map(finish, num_parallel_calls=config.data.num_parallel_calls)
  dataset = dataset.map(preprocess, num_parallel_calls=config.data.num_parallel_calls)
  return dataset, batch_size, num_batches


def make_eval_iterator(
  config,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
  source: Source | None = None,
) -> DataIterator:
  """One pass of evaluation batches for this process, in lockstep with the other processes.

  Args:
    config: the experiment config.
    process_index, process_count: default jax.process_index() / jax.process_count().
    source: a Source to read instead of registry.get_source(config).

  Returns:
    A DataIterator (with `num_batches`) of {'image' float32 (B, H, W, 3), 'label' int32
    (B, Hm, Wm, 2), 'orig_label' int32 (B, Ho, Wo, 3), 'orig_size' int32 (B, 2),
    'unpadded_size' int32 (B, 2), 'image_id' int64 (B,), 'valid' bool (B,)} with
    B = config.eval.batch_size // process_count. Iterating raises ValueError for an example whose
    'error' is set or whose original size exceeds config.data.eval_orig_size.
  """
  source = source or registry.get_source(config)
  pipeline.check_source(config, source)
  dataset, batch_size, num_batches = _read_share(
    config, source, process_index, process_count, _eval_image_fn(config), 'examples'
  )
  padding = _eval_padding(dataset.element_spec, config.data.image_pad_value)
  dataset = dataset.concatenate(padding).take(num_batches * batch_size)
  dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(config.data.prefetch)
  return DataIterator(dataset, PipelineStats(), check_errors=True, num_batches=num_batches)


def frames_to_read(eval_config) -> int:
  """How many frames of each evaluation clip the pipeline yields (0: all of them).

  config.eval.max_frames_per_sequence = N > 0 scores the first N frames only; the sampler is
  causal and streams frames in order, so frames after them are never needed, and dropping them
  here saves their decoding, resizing and sampling. With config.eval.score_all_frames_too every
  frame is read: the whole-sequence scores need their predictions.
  """
  if eval_config.score_all_frames_too:
    return 0
  return int(eval_config.max_frames_per_sequence)


def _video_eval_fn(config) -> Callable[[dict], dict]:
  image_size = tuple(config.model.image_size)
  mask_size = tuple(config.model.mask_size)
  pad_value = float(config.data.image_pad_value)
  max_instances = config.model.max_instances
  max_frames = frames_to_read(config.eval)

  def preprocess(clip):
    frames, semantic, instance, crowd = _pixels_or_placeholder(clip, 'frames', (1,))
    if max_frames:
      frames, semantic, instance, crowd = (
        x[:max_frames] for x in (frames, semantic, instance, crowd)
      )
    geometry = augment.eval_geometry(tf.shape(frames)[1:3], image_size)
    labels = augment.resample_labels(
      pipeline.training_label(semantic, instance, crowd, config.data.train_crowd),
      geometry,
      image_size,
      mask_size,
    )
    labels, _ = instance_ids.assign_instance_ids(labels, max_instances, seed=None)
    orig = tf.stack([semantic, instance, crowd], axis=-1)
    return {
      'frames': augment.resample_images(frames, geometry, image_size, pad_value),
      'label': labels,
      'orig_label': orig,
      'orig_size': tf.shape(orig)[1:3],
      'unpadded_size': geometry['crop_size'],
      'num_frames': tf.shape(frames)[0],
      'video_id': tf.cast(clip['video_id'], tf.int64),
      'video_name': clip['video_name'],
      'valid': tf.constant(True),
      'error': clip['error'],
    }

  return preprocess


def _padding_values(element_spec: dict, pad_value: float) -> dict:
  """padded_batch values: frames pad with the image pad value, strings with '', the rest 0."""
  values = {}
  for key, spec in element_spec.items():
    if spec.dtype == tf.string:
      values[key] = tf.constant('')
    elif key == 'frames':
      values[key] = tf.constant(pad_value, spec.dtype)
    else:
      values[key] = tf.zeros([], spec.dtype)
  return values


def make_video_eval_iterator(
  config,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
  source: Source | None = None,
) -> DataIterator:
  """One pass of batches of evaluation clips for this process, in lockstep with the others.

  Clips (their first config.eval.max_frames_per_sequence frames when set: `frames_to_read`) of a
  batch are padded to the longest one (frames with the image pad value, labels with 0); every
  process yields ceil(clips / config.eval.batch_size) batches, the tail padded with
  valid = False clips of one blank frame. The eval loop pads the frame axis further, to a length
  all processes share.

  Returns:
    A DataIterator (with `num_batches`) of {'frames' float32 (B, T, H, W, 3) resized to fit and
    padded like eval images, 'label' int32 (B, T, Hm, Wm, 2) the mask-size ground truth (crowd
    void, ids numbered 1..K in order), 'orig_label' int32 (B, T, Ho, Wo, 3) = [semantic, instance,
    crowd] at the original size (each clip's own size is 'orig_size'), 'orig_size' and
    'unpadded_size' int32 (B, 2), 'num_frames' int32 (B,), 'video_id' int64 (B,), 'video_name'
    string (B,), 'valid' bool (B,)} with B = config.eval.batch_size // process_count. Iterating
    raises ValueError for a clip whose 'error' is set.
  """
  source = source or registry.get_source(config)
  pipeline.check_source(config, source)
  dataset, batch_size, num_batches = _read_share(
    config, source, process_index, process_count, _video_eval_fn(config), 'clips'
  )
  pad_value = float(config.data.image_pad_value)
  blank = {
    key: tf.zeros([1 if dim is None else dim for dim in spec.shape], spec.dtype)
    for key, spec in dataset.element_spec.items()
  }
  blank.update(frames=tf.fill(tf.shape(blank['frames']), pad_value), valid=tf.constant(False))
  blank.update(video_id=tf.constant(_PADDING_IMAGE_ID, tf.int64), error=tf.constant(''))
  padding = tf.data.Dataset.from_tensors(blank).repeat()
  dataset = dataset.concatenate(padding).take(num_batches * batch_size)
  dataset = dataset.padded_batch(
    batch_size,
    padding_values=_padding_values(dataset.element_spec, pad_value),
    drop_remainder=True,
  )
  dataset = dataset.prefetch(config.data.prefetch)
  return DataIterator(dataset, PipelineStats(), check_errors=True, num_batches=num_batches)
