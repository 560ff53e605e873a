"""The video task ('video_panoptic'): streaming segmentation of clips, conditioned on past masks.

The denoiser also reads the analog bits of the masks of frames t-2 and t-1
(config.diffusion.num_cond_frames of them, 16 channels each): the ground truth in training (each
replaced by zeros with probability config.diffusion.frames_dropout), the model's own predictions
in inference, where each video streams through `models.sampling.sample_video` (frame 0 with
config.diffusion.steps sampling steps, later frames config.diffusion.steps_later_frames).
Tracking is the model copying ids from its conditioning: post-processing only starts a new track
where an id comes back after config.eval.new_track_after frames without it (it cannot have been
copied), and with config.eval.one_class_per_track gives each track one class (postprocess.py
`postprocess_clip`; without it each pixel keeps its predicted class, as the authors').

Evaluation batches clips (data/eval_pipeline.py `make_video_eval_iterator`) whose frame axis is
padded with blank frames to a multiple of config.eval.video_length_bucket, the same length on
every process (the longest clip of the batch over all processes decides): the sampler compiles
once per bucket and all hosts run the same program. The sampler is causal, so the padding frames,
sampled after the real ones, change nothing and are dropped.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from PIL import Image

from pix2seq_d.diffusion import bits
from pix2seq_d.evaluation import davis
from pix2seq_d.evaluation.base import Panoptic
from pix2seq_d.formats import coco_panoptic, davis_png, step_png
from pix2seq_d.models import layers, sampling
from pix2seq_d.parallel import hosts
from pix2seq_d.tasks import base, pictures, postprocess, predict_inputs


def padded_length(num_frames: int, bucket: int) -> int:
  """The frame count a batch is padded to: `num_frames` rounded up to a multiple of `bucket`."""
  return max(1, math.ceil(num_frames / bucket)) * bucket


def _pad_frames(array: np.ndarray, length: int, value: float) -> np.ndarray:
  """(B, T, ...) -> (B, length, ...), new frames filled with `value`."""
  pad = [(0, 0), (0, length - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
  return np.pad(array, pad, constant_values=value)


class VideoPanoptic(base.Task):
  """Clips in, a panoptic map per frame out whose instance ids persist over time."""

  name = 'video_panoptic'
  metrics = ('davis_jf', 'stq', 'pq')
  reads_clips = True
  picture_tag = 'eval/video_input_gt_prediction'

  def check_config(self) -> None:
    config = self.config
    for section, field, minimum in (
      ('diffusion', 'steps_later_frames', 1),
      ('eval', 'video_length_bucket', 1),
      ('eval', 'video_strip_frames', 1),
      ('eval', 'new_track_after', 0),
      ('eval', 'max_frames_per_sequence', 0),
    ):
      value = config[section][field]
      if not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f'config.{section}.{field}={value!r}: must be >= {minimum} (an integer).')
    needed = config.diffusion.num_cond_frames + 1
    if config.data.video_window < needed:
      # A training window holds the target frame and the frames that condition it.
      raise ValueError(
        f'config.data.video_window={config.data.video_window}: must be >= '
        f'config.diffusion.num_cond_frames + 1 = {needed} (the conditioning frames and the '
        'target).'
      )
    if config.eval.num_samples != 1:
      raise ValueError(
        f'config.eval.num_samples={config.eval.num_samples}: the video task streams one sample '
        'per frame (its next frame is conditioned on it); several samples are an image-task '
        'option. Leave it at 1.'
      )
    if config.eval.score_all_frames_too and not config.eval.max_frames_per_sequence:
      raise ValueError(
        'config.eval.score_all_frames_too=True: adds the whole-sequence STQ to the scores of the '
        'first config.eval.max_frames_per_sequence frames, which is 0 (every frame is scored '
        'already); set max_frames_per_sequence or leave score_all_frames_too False.'
      )
    if config.eval.score_all_frames_too and 'stq' not in config.eval.metrics:
      raise ValueError(
        f"config.eval.score_all_frames_too=True: only the 'stq' metric reports both protocols, "
        f'and config.eval.metrics={tuple(config.eval.metrics)!r} lacks it.'
      )
    if not config.eval.void_instance_zero:
      raise ValueError(
        'config.eval.void_instance_zero=False: is an image option; the video task decides what '
        'instance-0 pixels become with config.eval.one_class_per_track (False keeps their class).'
      )
    if config.data.instance_id_order == 'track' and config.eval.one_class_per_track:
      raise ValueError(
        "config.data.instance_id_order='track' trains stuff and crowd with instance 0, and "
        'config.eval.one_class_per_track=True makes instance-0 pixels void: set '
        "one_class_per_track=False (each pixel keeps its class, as the authors') or another id "
        'order.'
      )
    if config.eval.use_gt_cond_frames and config.eval.single_frames:
      raise ValueError(
        'config.eval.single_frames=True: conditions every frame on nothing, and '
        'config.eval.use_gt_cond_frames=True on the ground truth: set one of them.'
      )

  def check_source(self, source, *, training: bool) -> None:
    """Also, when training: a training split that gives no window of frames is refused."""
    super().check_source(source, training=training)
    if training:
      from pix2seq_d.data import pipeline  # TensorFlow only where a dataset is read.

      split = source.split(self.config.data.train_split)
      pipeline.check_train_windows(
        self.config, source, split, self.config.diffusion.num_cond_frames
      )

  def train_stream(self):
    """Windows of config.data.video_window frames, conditioned on the
    config.diffusion.num_cond_frames before the target, each dropped (zeros) with probability
    config.diffusion.frames_dropout."""
    from pix2seq_d.data import pipeline

    d = self.config.diffusion
    return pipeline.clip_window_stream(int(d.num_cond_frames), float(d.frames_dropout))

  def cond_channels(self) -> int:
    return bits.MASK_BITS * self.config.diffusion.num_cond_frames

  def train_conditioning(self, batch: dict[str, jax.Array]) -> jax.Array:
    """The analog bits of 'cond_label', the earlier frames' ids."""
    return bits.label_to_bits(batch['cond_label'].astype(np.int32), self.config.diffusion.b_scale)

  def sample_input_spec(self, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    """'frames' float32 (rows, T, H, W, 3), clips of T = config.eval.video_length_bucket."""
    height, width = self.config.model.image_size
    frames = int(self.config.eval.video_length_bucket)
    return {'frames': jax.ShapeDtypeStruct((rows, frames, height, width, 3), np.float32)}

  def train_batch_spec(self, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The image batch and 'cond_label' int32 (rows, Hm, Wm, 2 * num_cond_frames) = the ids of
    frames t-2 and t-1, oldest first."""
    spec = super().train_batch_spec(rows)
    mask_h, mask_w = self.config.model.mask_size
    channels = 2 * self.config.diffusion.num_cond_frames
    spec['cond_label'] = jax.ShapeDtypeStruct((rows, mask_h, mask_w, channels), np.int32)
    return spec

  def sample(self, graphdef, params, model_state, inputs, key) -> jax.Array:
    """{'frames': (B, T, H, W, 3)[, 'gt_cond': (B, T, Hm, Wm, 2)]} -> (B, T, Hm, Wm, 2) ids.

    Frames are conditioned on the model's own earlier masks; with config.eval.use_gt_cond_frames
    on 'gt_cond', with config.eval.single_frames on nothing.
    """
    evaluation = self.config.eval
    gt_cond = inputs.get('gt_cond')
    if evaluation.use_gt_cond_frames and gt_cond is None:
      raise ValueError('config.eval.use_gt_cond_frames is set: pass the ground-truth ids.')
    model = nnx.merge(graphdef, params, model_state, copy=True)
    return sampling.sample_video(
      model,
      inputs['frames'],
      key,
      self.config,
      first_steps=self.config.diffusion.steps,
      later_steps=self.config.diffusion.steps_later_frames,
      gt_cond=gt_cond if evaluation.use_gt_cond_frames else None,
      single_frames=evaluation.single_frames,
    )

  # -------------------------------------------------------------------------- evaluation

  def eval_iterator(self, source):
    from pix2seq_d.data import eval_pipeline  # TensorFlow only where a dataset is read.

    return eval_pipeline.make_video_eval_iterator(self.config, source=source)

  def eval_inputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Frames (and with config.eval.use_gt_cond_frames the mask-size labels) padded to the
    bucket of the longest clip of this batch on any process."""
    bucket = int(self.config.eval.video_length_bucket)
    length = padded_length(hosts.max_over_processes(batch['frames'].shape[1]), bucket)
    inputs = {
      'frames': _pad_frames(batch['frames'], length, float(self.config.data.image_pad_value))
    }
    if self.config.eval.use_gt_cond_frames:
      inputs['gt_cond'] = _pad_frames(batch['label'], length, 0)
    return inputs

  def _postprocess(self, pred, unpadded_size, orig_size, is_thing) -> Panoptic:
    return Panoptic(
      *postprocess.postprocess_clip(
        pred, unpadded_size, orig_size, self.postprocess_options, is_thing
      )
    )

  def eval_examples(self, batch, pred, categories) -> Iterator[base.Example]:
    """One Example per valid clip: its first config.eval.max_frames_per_sequence frames (all
    when 0; the eval input already stops there unless config.eval.score_all_frames_too), and
    with score_all_frames_too every frame in `all_frames`.

    The first frames are post-processed on their own, as a clip of that length: a track's one
    class is decided from the frames scored, exactly as if nothing after them had been sampled
    (the sampler is causal, so their raw ids are the same).
    """
    is_thing = coco_panoptic.is_thing_table(categories)
    limit = int(self.config.eval.max_frames_per_sequence)
    for row in np.flatnonzero(batch['valid']):
      num_frames = int(batch['num_frames'][row])
      scored = min(num_frames, limit) if limit else num_frames
      orig_h, orig_w = (int(v) for v in batch['orig_size'][row])
      name = batch['video_name'][row].decode()
      ground_truth = batch['orig_label'][row, :num_frames, :orig_h, :orig_w]
      unpadded = batch['unpadded_size'][row]
      all_frames = None
      if self.config.eval.score_all_frames_too:
        whole = self._postprocess(pred[row, :num_frames], unpadded, (orig_h, orig_w), is_thing)
        all_frames = (ground_truth, whole)
      yield base.Example(
        example_id=name,
        name=name,
        prediction=self._postprocess(pred[row, :scored], unpadded, (orig_h, orig_w), is_thing),
        ground_truth=ground_truth[:scored],
        row=int(row),
        all_frames=all_frames,
      )

  def eval_picture(self, batch, pred, row, categories) -> np.ndarray:
    """Rows of frames, ground-truth objects and predicted objects, at the mask size."""
    is_thing = coco_panoptic.is_thing_table(categories)
    num_frames = int(batch['num_frames'][row])
    mask_gt, mask_pred = batch['label'][row, :num_frames], pred[row, :num_frames]
    return pictures.video_strip(
      batch['frames'][row, :num_frames],
      davis_png.object_ids(mask_gt[..., 0], mask_gt[..., 1], is_thing, by='id'),
      davis_png.object_ids(mask_pred[..., 0], mask_pred[..., 1], is_thing, by='size'),
      max_frames=self.config.eval.video_strip_frames,
    )

  def prediction_files(self, output_dir: str, categories) -> base.PredictionFiles:
    return VideoFiles(output_dir, categories)

  # ------------------------------------------------------------------------- predict mode

  def predict_sources(self, input_path: str) -> dict[str, list[str] | str]:
    """{video name: its sorted frame paths, or a video file's path}."""
    if self.config.eval.use_gt_cond_frames:
      raise ValueError(
        'config.eval.use_gt_cond_frames=True: new videos have no ground truth to condition on.'
      )
    return predict_inputs.list_videos(input_path)

  def load_predict_input(self, source) -> base.PredictInput:
    frames, originals, unpadded = predict_inputs.load_frames(
      source,
      layers.static_tuple(self.config.model.image_size),
      float(self.config.data.image_pad_value),
    )
    return base.PredictInput(frames, np.stack(originals), unpadded)

  def predict_inputs(self, loaded: Sequence[base.PredictInput], rows: int):
    """One video per row, padded with blank frames to the bucket of the longest."""
    longest = max(len(item.model_input) for item in loaded)
    length = padded_length(longest, self.config.eval.video_length_bucket)
    frames = loaded[0].model_input
    batch = np.full(
      (rows, length) + frames.shape[1:], float(self.config.data.image_pad_value), np.float32
    )
    for row in range(rows):
      clip = loaded[row if row < len(loaded) else 0].model_input
      batch[row, : len(clip)] = clip
    return {'frames': batch}

  def postprocess_input(self, pred, loaded: base.PredictInput, categories) -> Panoptic:
    return self._postprocess(
      pred[: len(loaded.model_input)],
      loaded.unpadded_size,
      loaded.originals.shape[1:3],
      coco_panoptic.is_thing_table(categories),
    )


def panoptic_frames(semantic, instance, categories):
  """A clip's (semantic, instance) (T, H, W) -> (COCO panoptic ids (T, H, W), per-frame segment
  lists, the classes (T, H, W) they were given).

  The segment id is the instance id, so a track keeps its id in every frame (post-processing
  gave each id one class over the clip). Class 0 with an instance id is an object of a dataset
  whose semantic channel is 0 (DAVIS): it takes the dataset's category when there is only one,
  and is void otherwise.
  """
  semantic = np.asarray(semantic)
  if len(categories) == 1:
    semantic = np.where(instance > 0, np.maximum(semantic, 1), semantic)
  ids = np.where((semantic > 0) & (instance > 0), instance, 0).astype(np.int32)
  segments = []
  for k in range(len(ids)):
    present = np.unique(ids[k][ids[k] > 0])
    classes = [int(semantic[k][ids[k] == i][0]) for i in present]
    segments.append(
      [
        {'id': int(i), 'category_id': int(categories[c - 1]['id'])}
        for i, c in zip(present, classes, strict=True)
      ]
    )
  return ids, segments, semantic


def step_maps(semantic, instance, categories) -> tuple[np.ndarray, np.ndarray]:
  """(T, H, W) maps in KITTI-STEP's terms: class = the category's 'id' (void 255), instance =
  the id of thing pixels (stuff 0)."""
  ids = np.array([step_png.VOID] + [int(c['id']) for c in categories])
  if ids[1:].size and (ids[1:].min() < 0 or ids[1:].max() >= step_png.VOID):
    raise ValueError(f'category ids {ids[1:].tolist()} do not fit KITTI-STEP classes 0..254')
  is_thing = coco_panoptic.is_thing_table(categories)
  semantic = np.asarray(semantic)
  return ids[semantic], np.where(is_thing[semantic], instance, 0)


class VideoFiles(base.PredictionFiles):
  """Per video <name>, staged (`base.StagingFolder`) and moved into place whole by `close`,
  replacing an earlier output of that name (`abort` leaves output_dir as it was):

  - output_dir/<name>/<k:05d>.png: the objects as a palette PNG (the DAVIS results layout that
    `python -m pix2seq_d.evaluation.davis` reads; object ids the same in every frame, largest
    object first, at most 20);
  - output_dir/<name>/<k:06d>.png: the KITTI-STEP panoptic map (R = the category's id, 255 void;
    G * 256 + B = the track id of thing pixels, 0 on stuff) that `python -m
    pix2seq_d.evaluation.stq` reads (the frame's position names it, as KITTI-STEP numbers its
    frames from 000000);
  - output_dir/<name>/panoptic/<k:05d>.png + <name>/panoptic.json: COCO panoptic, the segment id
    of a track the same in every frame;
  - with the original frames, output_dir/<name>/overlays/<k:05d>.png: the panoptic prediction
    coloured over each frame.
  """

  def __init__(self, output_dir: str, categories):
    self.output_dir = output_dir
    self.categories = list(categories)
    self._is_thing = coco_panoptic.is_thing_table(self.categories)
    self._staging = base.StagingFolder(output_dir)
    self._names: list[str] = []

  def add(self, example: base.Example) -> None:
    if example.name in self._names:  # two videos would write one folder
      raise ValueError(f'video {example.example_id}: the name {example.name!r} is used twice')
    semantic, instance = example.prediction
    objects = davis_png.object_ids(
      semantic, instance, self._is_thing, by='size', limit=davis.MAX_PROPOSALS
    )
    ids, segments, classes = panoptic_frames(semantic, instance, self.categories)
    video_dir = os.path.join(self._staging.path, example.name)
    os.makedirs(video_dir)
    self._names.append(example.name)
    annotations = []
    step_classes, step_instances = step_maps(semantic, instance, self.categories)
    for k in range(len(ids)):
      stem = f'{k:05d}'
      davis_png.write_indexed_png(os.path.join(video_dir, f'{stem}.png'), objects[k])
      step_png.write_step_png(
        os.path.join(video_dir, f'{k:06d}.png'), step_classes[k], step_instances[k]
      )
      annotations.append((k, stem, ids[k], segments[k]))
      if example.originals is not None:
        coloured = pictures.colorize_panoptic(classes[k], instance[k], self.categories)
        os.makedirs(os.path.join(video_dir, 'overlays'), exist_ok=True)
        Image.fromarray(pictures.overlay(example.originals[k], coloured)).save(
          os.path.join(video_dir, 'overlays', f'{stem}.png')
        )
    coco_panoptic.write_panoptic_predictions(video_dir, annotations, self.categories)

  def close(self) -> str:
    try:
      for name in self._names:
        self._staging.move_into_place(name)
    finally:
      self.abort()
    return self.output_dir

  def abort(self) -> None:
    self._staging.remove()
