"""Per-host tf.data training pipelines: TFDS source -> canonical examples -> numpy batches.

TensorFlow never takes the accelerator: importing pix2seq_d.data hides GPUs and TPUs from it.

Reading. Each process reads a disjoint, contiguous 1/N of the split (the remainder spread over the
first processes, so the union is the whole split), like clu.deterministic_data with
RemainderOptions.BALANCE_ON_PROCESSES. Training shuffles files and examples with seeds derived from
(config.seed, process index), so runs repeat exactly and processes differ. Images stay encoded in
the shuffle buffer: TFDS image features are decoded after shuffling, then the source's `decode`
makes the canonical example (source.py).

Training batches ('image' float32 (B, H, W, 3) in [0, 1], 'label' int32 (B, Hm, Wm, 2) =
[semantic, instance]; windows of clips add 'cond_label'):
- Crowd rule (config.data.train_crowd): crowd pixels become void (0, 0) for training (and in the
  mask-size eval 'label'), or, with 'segment', each crowd region is trained as a segment of its
  class (a metric that scores crowd pixels by class, as STQ's IoU, wants them predicted); only
  the original-size eval label 'orig_label' keeps the crowd flag, as PQ and STQ need it.
- Instance ids: per example, a fresh random permutation (a stateless seed from config.seed, the
  process and the example's position in the endless stream, so it changes every epoch) maps the
  segments onto distinct ids in 1..max_instances-1; 0 stays 0. With more segments than
  max_instances - 1, the largest (at mask size, after augmentation) are kept and the rest become
  void (0, 0); the iterator counts them in `dropped_segments` and logs a warning.
- Examples whose 'error' is not '' are skipped and counted in `skipped` (a warning logs the
  message each time one is met, so once per epoch); evaluation raises ValueError instead. When
  config.data.max_skips_in_a_row broken examples come in a row (no good one between them: every
  example broken, or nearly), the iterator raises TooManyBrokenExamplesError naming the last one.
- The task says what a training example is (`make_train_iterator`'s `stream`): an image
  (`image_stream`), or a window of config.data.video_window frames of a clip
  (`clip_window_stream`) whose last frame is the target and whose 'cond_label'
  (B, Hm, Wm, 2 * num_cond_frames) = [sem_{t-2}, inst_{t-2}, sem_{t-1}, inst_{t-1}] shares the
  target's spatial augmentation and instance permutation, each frame replaced by zeros with
  probability frames_dropout.

Evaluation batches: eval_pipeline.py. Per-process shares of a split: splits.py. The iterator and
its counters: iterator.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from pix2seq_d.config import checks
from pix2seq_d.data import augment, instance_ids, registry, splits
from pix2seq_d.data.iterator import POSITION_KEY, DataIterator, PipelineStats
from pix2seq_d.data.source import Source

# Independent random streams derived from config.seed (the values only tell them apart).
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1
_WINDOW_SHUFFLE_STREAM = 2


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and evaluators need to know about the configured dataset.

  Attributes:
    categories: panopticapi-style category dicts; semantic label of categories[k] is k + 1.
    num_classes: len(categories) + 1 (0 = void).
    num_train: examples (clips for video) in config.data.train_split.
    num_eval: examples (clips) evaluated: config.data.eval_split limited to
      config.eval.num_examples when that is > 0.
  """

  categories: tuple[dict, ...]
  num_classes: int
  num_train: int
  num_eval: int


def _derived_seed(config, process_index: int, stream: int, words: int = 1) -> np.ndarray:
  """uint32 words from (config.seed, process, stream): independent per process and use."""
  return np.random.SeedSequence([config.seed, process_index, stream]).generate_state(words)


def _deferred_image_features(source: Source) -> dict:
  """Top-level image (or sequence of images) features to decode after shuffling."""
  if source.decoders is not None and not isinstance(source.decoders, dict):
    return {}  # a custom decoding scheme: leave all decoding to TFDS and the source.
  taken = set(source.decoders or {})
  deferred = {}
  for key, feature in source.builder.info.features.items():
    inner = feature.feature if isinstance(feature, tfds.features.Sequence) else feature
    if key not in taken and isinstance(inner, tfds.features.Image):
      deferred[key] = feature
  return deferred


def read(
  source: Source, instruction, shuffle_seed: int | None
) -> tuple[tf.data.Dataset, Callable[[dict], dict]]:
  """Raw examples of `instruction` with images still encoded, and the function finishing them.

  The returned function maps one raw example to the canonical example, exactly as if TFDS had
  decoded everything (the features' own decode_example is used).
  """
  deferred = _deferred_image_features(source)
  decoders = source.decoders
  if deferred:
    decoders = {**(decoders or {}), **{key: tfds.decode.SkipDecoding() for key in deferred}}
  dataset = source.builder.as_dataset(
    split=instruction,
    shuffle_files=shuffle_seed is not None,
    decoders=decoders,
    read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed),
  )

  def finish(raw):
    raw = dict(raw)
    for key, feature in deferred.items():
      raw[key] = feature.decode_example(raw[key])
    return source.decode(raw)

  return dataset, finish


def check_source(config, source: Source) -> None:
  """Raises ValueError when config.data.eval_orig_size cannot hold the largest image of the eval
  split, where the source knows the sizes (`Source.max_image_size`): original-size labels are
  padded to it; or when config.data.instance_id_order='track' reads track ids the source does not
  have. Checked before anything is built or trained."""
  if config.data.instance_id_order == 'track' and not source.track_ids:
    raise ValueError(
      f"config.data.instance_id_order='track' gives the dataset's own track ids, and "
      f'{source.name!r} has none (KITTI-STEP-layout folders have them: kitti_step, shapes_step); '
      "use 'shuffle' (ids 1..N over the segments) or 'random'."
    )
  eval_split = source.split(config.data.eval_split)
  if eval_split in source.max_image_size:
    largest = tuple(int(v) for v in source.max_image_size[eval_split])
    limit = tuple(int(v) for v in config.data.eval_orig_size)
    if largest[0] > limit[0] or largest[1] > limit[1]:
      needed = (max(largest[0], limit[0]), max(largest[1], limit[1]))
      raise ValueError(
        f'config.data.eval_orig_size={limit} is smaller than the largest image of eval split '
        f'{eval_split!r} of {source.name!r} ({largest[0]}x{largest[1]}): original-size labels '
        f'are padded to it for PQ. Set --config.data.eval_orig_size="{needed}".'
      )


def check_train_windows(config, source: Source, split: str, num_cond_frames: int) -> None:
  """Raises ValueError when no clip of the training `split` holds config.data.video_window
  frames, where the source knows the lengths (`Source.clip_lengths`): such a split gives no
  training window, and the endless stream would read it round and round for ever, waiting for
  one. Checked before anything is read."""
  lengths = source.clip_lengths.get(split)
  if not lengths:
    return
  window = int(config.data.video_window)
  longest = max(lengths.values())
  if longest < window:
    raise ValueError(
      f'config.data.train_split {split!r} of {source.name!r}: its longest sequence has '
      f'{longest} frames, fewer than config.data.video_window={window}, so it gives no training '
      f'window. Train on a split with longer sequences or lower --config.data.video_window (at '
      f'least config.diffusion.num_cond_frames + 1 = {num_cond_frames + 1}).'
    )


def _drop_broken(dataset: tf.data.Dataset, stats: PipelineStats, id_key: str) -> tf.data.Dataset:
  """Drops examples whose 'error' is set; counts and logs them (`stats.record_skip`).

  Elements are an example dict or a tuple ending in one. The length of the current run of broken
  examples is counted in the graph (`Dataset.scan`), so fine examples cost no Python call, and
  the limit on broken examples in a row means the same whatever the batch size and prefetching.
  """

  def count(run, element):
    parts = element if isinstance(element, tuple) else (element,)
    broken = tf.not_equal(parts[-1]['error'], '')
    run = tf.where(broken, run + 1, tf.zeros_like(run))
    return run, (*parts, run)

  def keep(*element):
    *_, example, run = element

    def reject():
      verdict = tf.py_function(
        stats.record_skip, [example['error'], example[id_key], run], Tout=tf.bool
      )
      return tf.reshape(verdict, [])

    return tf.cond(tf.equal(run, 0), lambda: tf.constant(True), reject)

  def strip(*element):
    return element[:-1] if len(element) > 2 else element[0]

  return dataset.scan(tf.constant(0, tf.int64), count).filter(keep).map(strip)


def _count_dropped(stats: PipelineStats, dropped: tf.Tensor, example_id: tf.Tensor) -> tf.Tensor:
  def record():
    return tf.reshape(
      tf.py_function(stats.record_dropped, [dropped, example_id], Tout=tf.int32), []
    )

  return tf.cond(dropped > 0, record, lambda: dropped)


CROWD_RULES = checks.CROWD_RULES


def training_label(
  semantic: tf.Tensor, instance: tf.Tensor, crowd: tf.Tensor, crowd_rule: str = 'void'
) -> tf.Tensor:
  """[semantic, instance] (..., 2) under the crowd rule (config.data.train_crowd): 'void' makes
  crowd pixels void (0, 0); 'segment' keeps each crowd region as a segment of its class."""
  checks.check_choice('data.train_crowd', crowd_rule, CROWD_RULES)
  if crowd_rule == 'segment':
    return tf.stack([semantic, instance], axis=-1)
  not_crowd = tf.cast(tf.equal(crowd, 0), tf.int32)
  return tf.stack([semantic * not_crowd, instance * not_crowd], axis=-1)


def augment_kwargs(config) -> dict:
  data = config.data
  return {
    'image_size': tuple(config.model.image_size),
    'mask_size': tuple(config.model.mask_size),
    'scale_range': tuple(data.scale_jitter),
    'flip': bool(data.flip),
    'color_jitter_strength': float(data.color_jitter_strength),
    'color_jitter_prob': float(data.color_jitter_prob),
    'grayscale_prob': float(data.grayscale_prob),
    'pad_value': float(data.image_pad_value),
    'resize_method': str(data.train_resize_method),
  }


# ------------------------------------------------------------------------------ public API


def dataset_info(config, source: Source | None = None) -> DatasetInfo:
  """Categories, class count and split sizes of config.data (prepares embedded datasets).

  Args:
    config: the experiment config.
    source: the Source to describe instead of registry.get_source(config).

  Raises:
    ValueError: the config does not fit the dataset (`check_source`).
  """
  source = source or registry.get_source(config)
  check_source(config, source)
  builder = source.builder
  num_eval = splits.num_split_examples(builder, source.split(config.data.eval_split))
  if config.eval.num_examples > 0:
    num_eval = min(num_eval, config.eval.num_examples)
  return DatasetInfo(
    categories=tuple(source.categories),
    num_classes=len(source.categories) + 1,
    num_train=splits.num_split_examples(builder, source.split(config.data.train_split)),
    num_eval=num_eval,
  )


def make_train_iterator(
  config,
  stream: TrainStream,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
  source: Source | None = None,
  start_position: int = 0,
) -> DataIterator:
  """Endless training batches for this process, resumable at any position of its stream.

  The stream is deterministic given (config.seed, process): a seeded file and buffer shuffle,
  repeated, then numbered; each element's augmentation seed is folded from its number, so the
  same number always gives the same example and augmentation. `start_position` continues a
  stream: the elements before it are skipped before they are decoded (images: read, not
  decoded; video: windows are cut after decoding, so skipping decodes), and the batches equal
  those an uninterrupted stream yields from there. `DataIterator.position` is the position after
  the last batch handed out: save it with a checkpoint and pass it back here on resume.

  Args:
    config: the experiment config (data, model, train, seed).
    stream: what the task trains on (`Task.train_stream`): `image_stream`, or
      `clip_window_stream(...)`'s windows of clips with their conditioning frames.
    process_index, process_count: default jax.process_index() / jax.process_count().
    source: a Source to read instead of registry.get_source(config).
    start_position: the first element of this process's stream to use (0 = from the start).

  Returns:
    A DataIterator of {'image': float32 (B, H, W, 3) in [0, 1], 'label': int32 (B, Hm, Wm, 2)}
    with B = config.train.batch_size // process_count; `clip_window_stream` adds 'cond_label'
    int32 (B, Hm, Wm, 2 * num_cond_frames).
  """
  process_index, process_count = splits.processes(process_index, process_count)
  source = source or registry.get_source(config)
  check_source(config, source)
  if start_position < 0:
    raise ValueError(f'start_position={start_position} must be >= 0.')
  batch_size = splits.local_batch_size(
    config.train.batch_size, process_count, 'config.train.batch_size'
  )
  split = source.split(config.data.train_split)
  instruction, size = splits.process_read_instruction(
    source.builder, split, process_index, process_count
  )
  if instruction is None:
    raise ValueError(
      f'config.data.train_split {split!r} of {source.name!r} has fewer examples '
      f'than processes ({process_count}).'
    )
  logging.info(
    'Process %d/%d reads %d examples of %s %s from stream position %d.',
    process_index,
    process_count,
    size,
    source.name,
    split,
    start_position,
  )
  shuffle_seed = int(_derived_seed(config, process_index, _SHUFFLE_STREAM)[0])
  stats = PipelineStats(config.data.max_skips_in_a_row)

  dataset, finish = read(source, instruction, shuffle_seed)
  dataset = dataset.shuffle(
    max(config.data.shuffle_buffer, 1), seed=shuffle_seed, reshuffle_each_iteration=True
  )
  dataset = dataset.repeat()
  context = StreamContext(
    config, source, finish, stats, split, size, process_index, process_count, start_position
  )
  dataset, preprocess = stream(dataset, context)

  # A stateless seed per element: its position in this process's endless stream, folded into a
  # base seed from (config.seed, process): reproducible, different every epoch and on every
  # process, and the same after a resume.
  base_seed = tf.constant(_derived_seed(config, process_index, _AUGMENT_STREAM, 2), tf.int64)

  def with_seed(position, example):
    seed = tf.random.experimental.stateless_fold_in(base_seed, position)
    return {**preprocess(example, seed), POSITION_KEY: position}

  dataset = dataset.map(with_seed, num_parallel_calls=config.data.num_parallel_calls)
  dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(config.data.prefetch)
  return DataIterator(dataset, stats, start_position=start_position)


@dataclasses.dataclass(frozen=True)
class StreamContext:
  """What `make_train_iterator` hands a training stream: the config, the source and its
  `finish` (raw example -> canonical, `read`), the broken-example counters, and this process's
  share of the training split (`size` examples) and stream position to start from."""

  config: Any
  source: Source
  finish: Callable[[dict], dict]
  stats: PipelineStats
  split: str
  size: int
  process_index: int
  process_count: int
  start_position: int


# A training stream: (shuffled, repeated raw examples, context) -> ((position, example) pairs from
# context.start_position on, the per-element preprocessing (example, seed) -> batch row). The task
# says which one it trains on (`Task.train_stream`).
Preprocess = Callable[[dict, tf.Tensor], dict]
TrainStream = Callable[[tf.data.Dataset, StreamContext], tuple[tf.data.Dataset, Preprocess]]


def image_stream(dataset: tf.data.Dataset, context: StreamContext):
  """Images: numbered before decoding, so that a resume skips raw records without decoding
  them; each becomes {'image', 'label'} (`TrainStream`)."""
  dataset = dataset.enumerate().skip(context.start_position)
  finish = context.finish
  dataset = dataset.map(
    lambda position, raw: (position, finish(raw)),
    num_parallel_calls=context.config.data.num_parallel_calls,
  )
  dataset = _drop_broken(dataset, context.stats, 'image_id')
  return dataset, _image_train_fn(context.config, context.stats)


def clip_window_stream(num_cond_frames: int, frames_dropout: float) -> TrainStream:
  """Clips cut into windows of config.data.video_window frames: each window becomes the last
  frame's {'image', 'label'} and 'cond_label', the ids of the `num_cond_frames` frames before
  it, each replaced by zeros with probability `frames_dropout` (`TrainStream`)."""

  def stream(dataset: tf.data.Dataset, context: StreamContext):
    config, source, finish = context.config, context.source, context.finish
    check_train_windows(config, source, context.split, num_cond_frames)
    parallel = config.data.num_parallel_calls
    # A source that keeps its frames encoded (`Source.frame_keys`) is cut into windows first,
    # so only a window's frames are decoded and a resume skips windows without decoding them.
    frame_keys = source.frame_keys or _CLIP_FRAME_KEYS + (('track',) if source.track_ids else ())
    if not source.frame_keys:
      dataset = dataset.map(finish, num_parallel_calls=parallel)
    dataset = _drop_broken(dataset, context.stats, 'video_id')
    where = (
      f'training split {context.split} of {source.name}, the {context.size} clips of process '
      f'{context.process_index}/{context.process_count}'
    )
    dataset = _refuse_windowless(dataset, config, frame_keys[0], context.size, where)
    window_seed = int(_derived_seed(config, context.process_index, _WINDOW_SHUFFLE_STREAM)[0])
    dataset = _video_windows(dataset, config, window_seed, frame_keys)
    dataset = dataset.enumerate().skip(context.start_position)
    if source.frame_keys:
      dataset = dataset.map(
        lambda position, window: (position, finish(window)), num_parallel_calls=parallel
      )
    return dataset, _video_train_fn(config, context.stats, num_cond_frames, frames_dropout)

  return stream


# The per-frame features of a decoded (canonical) clip.
_CLIP_FRAME_KEYS = ('frames', 'semantic', 'instance', 'crowd')


def _image_train_fn(config, stats: PipelineStats) -> Callable[[dict, tf.Tensor], dict]:
  kwargs = augment_kwargs(config)
  crowd_rule = config.data.train_crowd
  max_instances = config.model.max_instances
  id_order = config.data.instance_id_order

  def preprocess(example, seed):
    augment_seed, id_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    label = training_label(example['semantic'], example['instance'], example['crowd'], crowd_rule)
    images, labels, _ = augment.train_augment(
      example['image'][None], label[None], augment_seed, **kwargs
    )
    labels, dropped = instance_ids.assign_instance_ids(labels, max_instances, id_seed, id_order)
    counted = _count_dropped(stats, dropped, example['image_id'])
    with tf.control_dependencies([counted]):  # keeps the logging op in the graph.
      return {'image': images[0], 'label': tf.identity(labels[0])}

  return preprocess


def _refuse_windowless(
  dataset: tf.data.Dataset, config, frame_key: str, clips_per_epoch: int, where: str
) -> tf.data.Dataset:
  """Clips as they are, but raises (InvalidArgumentError, in the graph) once so many clips in a
  row are shorter than config.data.video_window that none of this process's clips can be longer.

  `check_train_windows` refuses such a split before reading where the source knows its lengths;
  this covers the rest (a process whose share of the split holds only short clips, a source
  without lengths), where the endless stream would otherwise wait for a window for ever. Each
  epoch is a permutation of the `clips_per_epoch` clips, so a long clip ends every run of short
  ones within 2 * clips_per_epoch - 2 clips.
  """
  window = tf.constant(int(config.data.video_window), tf.int64)
  limit = 2 * max(clips_per_epoch, 1) - 1
  message = (
    f'{where}: none holds config.data.video_window={int(config.data.video_window)} frames '
    f'({limit} read in a row without a window), so there is no training window; train on longer '
    'sequences or lower --config.data.video_window. Frames in the longest:'
  )

  def count(state, clip):
    run, longest = state
    length = tf.shape(clip[frame_key], out_type=tf.int64)[0]
    run = tf.where(length >= window, tf.zeros_like(run), run + 1)
    longest = tf.maximum(longest, length)
    check = tf.debugging.Assert(run < limit, [message, longest])
    with tf.control_dependencies([check]):
      return (tf.identity(run), longest), clip

  zero = tf.constant(0, tf.int64)
  return dataset.scan((zero, zero), count)


def _video_windows(
  dataset: tf.data.Dataset, config, shuffle_seed: int, frame_keys: tuple[str, ...]
) -> tf.data.Dataset:
  """Clips -> windows of config.data.video_window consecutive frames (target = last).

  `frame_keys` are the clip's features with a leading frame axis (encoded or decoded); the others
  are copied into every window. Windows are drawn round-robin from
  config.data.video_clips_interleaved clips and then shuffled in a buffer of
  config.data.video_window_shuffle_buffer, so a batch mixes many clips.
  """
  window = config.data.video_window  # > the conditioning frames: the video task's check_config

  def windows_of(clip):
    num_frames = tf.shape(clip[frame_keys[0]], out_type=tf.int64)[0]
    starts = tf.data.Dataset.range(tf.maximum(num_frames - window + 1, 0))

    def cut(start):
      cut_clip = {
        key: tf.ensure_shape(
          clip[key][start : start + window], [window] + clip[key].shape[1:].as_list()
        )
        for key in frame_keys
      }
      return {**clip, **cut_clip}

    return starts.map(cut)

  dataset = dataset.interleave(
    windows_of,
    cycle_length=config.data.video_clips_interleaved,
    block_length=1,
    num_parallel_calls=config.data.num_parallel_calls,
    deterministic=True,
  )
  return dataset.shuffle(
    max(config.data.video_window_shuffle_buffer, 1),
    seed=shuffle_seed,
    reshuffle_each_iteration=True,
  )


def _video_train_fn(
  config, stats: PipelineStats, num_cond: int, frames_dropout: float
) -> Callable[[dict, tf.Tensor], dict]:
  kwargs = augment_kwargs(config)
  crowd_rule = config.data.train_crowd
  max_instances = config.model.max_instances
  id_order = config.data.instance_id_order
  # The authors' KITTI-STEP ids start from the dataset's track ids, stuff and crowd without one.
  instance_key = 'track' if id_order == 'track' else 'instance'
  frames_dropout = float(frames_dropout)
  mask_h, mask_w = (int(v) for v in config.model.mask_size)

  def preprocess(window, seed):
    augment_seed, id_seed, dropout_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3)
    )
    labels = training_label(window['semantic'], window[instance_key], window['crowd'], crowd_rule)
    # One geometry for the window; the encoder only sees the target (last) frame.
    images, labels, _ = augment.train_augment(window['frames'][-1:], labels, augment_seed, **kwargs)
    labels, dropped = instance_ids.assign_instance_ids(labels, max_instances, id_seed, id_order)
    cond = labels[-1 - num_cond : -1]  # (num_cond, Hm, Wm, 2), oldest first.
    keep = tf.random.stateless_uniform([num_cond], dropout_seed) >= frames_dropout
    # Per-frame select + concat (a broadcast multiply + transpose trips a grappler remapper bug).
    cond_label = tf.concat(
      [tf.where(keep[k], cond[k], tf.zeros_like(cond[k])) for k in range(num_cond)], axis=-1
    )
    cond_label = tf.ensure_shape(cond_label, [mask_h, mask_w, 2 * num_cond])
    counted = _count_dropped(stats, dropped, window['video_id'])
    with tf.control_dependencies([counted]):  # keeps the logging op in the graph.
      return {'image': images[0], 'label': tf.identity(labels[-1]), 'cond_label': cond_label}

  return preprocess
