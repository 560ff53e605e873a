"""Post-processing: from the model's mask-size ids to original-size panoptic maps.

Runs on the host in numpy, one image (or one clip) at a time, because every image has its own
original size. `postprocess` is the image task's, `postprocess_clip` the video task's; both take
the experiment's `Options`.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(H, W, ...) -> (h, w, ...) by nearest neighbour with half-pixel centres (as tf.image)."""
  in_h, in_w = x.shape[:2]
  out_h, out_w = int(size[0]), int(size[1])
  rows = np.minimum(((np.arange(out_h) + 0.5) * in_h / out_h).astype(np.int64), in_h - 1)
  cols = np.minimum(((np.arange(out_w) + 0.5) * in_w / out_w).astype(np.int64), in_w - 1)
  return x[rows[:, None], cols[None, :]]


def _bilinear_axis(in_n: int, out_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(low, high, weight of high) source indices of each output position on one axis, with
  half-pixel centres (as tf.image's bilinear resize without antialiasing)."""
  src = np.clip((np.arange(out_n) + 0.5) * in_n / out_n - 0.5, 0.0, in_n - 1)
  low = np.floor(src).astype(np.int64)
  return low, np.minimum(low + 1, in_n - 1), src - low


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(H, W, ...) float -> (h, w, ...) by bilinear interpolation with half-pixel centres (float64
  stays float64, anything else becomes float32)."""
  x = np.asarray(x)
  x = x.astype(np.float64 if x.dtype == np.float64 else np.float32, copy=False)
  top, bottom, dy = _bilinear_axis(x.shape[0], int(size[0]))
  left, right, dx = _bilinear_axis(x.shape[1], int(size[1]))
  extra = (1,) * (x.ndim - 2)
  dy = dy.reshape((-1, 1) + extra).astype(x.dtype)
  dx = dx.reshape((1, -1) + extra).astype(x.dtype)
  rows = x[top] * (1 - dy) + x[bottom] * dy
  return rows[:, left] * (1 - dx) + rows[:, right] * dx


def majority_vote(
  semantic: np.ndarray,
  instance: np.ndarray,
  num_classes: int,
  max_instances: int,
  min_pixels: int,
  class_zero_is_void: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Every instance id takes the most frequent class among its pixels (over all of the maps).

  Ids with fewer than `min_pixels` pixels and instance 0 become void (0, 0), and so do ids whose
  majority is class 0 unless `class_zero_is_void` is False (DAVIS objects have class 0).

  Args:
    semantic, instance: int maps of one shape, (H, W) for an image or (T, H, W) for a clip (an id
      then takes one class in every frame).
    num_classes, max_instances: the id ranges (semantic < num_classes, instance < max_instances).
    min_pixels: the smallest segment kept.
    class_zero_is_void: whether class 0 voids the ids it wins.

  Returns:
    (semantic, instance), int32 each, of the input shape.
  """
  semantic = np.clip(semantic, 0, num_classes - 1).astype(np.int64)
  instance = np.clip(instance, 0, max_instances - 1).astype(np.int64)
  joint = np.bincount(
    (instance * num_classes + semantic).ravel(), minlength=max_instances * num_classes
  ).reshape(max_instances, num_classes)
  votes = joint.argmax(axis=1)
  keep = joint.sum(axis=1) >= min_pixels
  keep[0] = False
  if class_zero_is_void:
    keep &= votes > 0
  kept = keep[instance]
  new_semantic = np.where(kept, votes[instance], 0)
  return new_semantic.astype(np.int32), np.where(kept, instance, 0).astype(np.int32)


def vote_instance_zero(
  pred_semantic: np.ndarray,
  pred_instance: np.ndarray,
  semantic: np.ndarray,
  instance: np.ndarray,
  num_classes: int,
  min_pixels: int,
) -> tuple[np.ndarray, np.ndarray]:
  """The pixels predicted with instance 0 take the class most of them have and become one segment
  of it, under an id above every other (`majority_vote` leaves them void).

  The authors' image post-processing votes over id 0 as over any id (their
  `majority_vote_postprocess`) and keeps the voted class with instance 0; a fresh id makes that
  (class, 0) region a segment our PQ and COCO panoptic files can carry. Nothing changes when the
  vote is void (class 0) or when there are fewer than `min_pixels` such pixels.

  Args:
    pred_semantic, pred_instance: (H, W) int maps as predicted (before the vote).
    semantic, instance: (H, W) int32 maps after `majority_vote`.
    num_classes: the class range; min_pixels: the smallest segment kept.

  Returns:
    (semantic, instance), int32 each, of the input shape.
  """
  zero = np.asarray(pred_instance) <= 0
  classes = np.clip(np.asarray(pred_semantic)[zero], 0, num_classes - 1).astype(np.int64)
  if classes.size < max(min_pixels, 1):
    return semantic, instance
  vote = int(np.bincount(classes, minlength=num_classes).argmax())
  if vote == 0:
    return semantic, instance
  fresh = int(instance.max(initial=0)) + 1
  return (
    np.where(zero, vote, semantic).astype(np.int32),
    np.where(zero, fresh, instance).astype(np.int32),
  )


def merge_stuff(semantic: np.ndarray, instance: np.ndarray, is_thing: np.ndarray) -> np.ndarray:
  """Gives all pixels of each stuff class one instance id (the smallest one it used).

  Args:
    semantic, instance: (H, W) int maps after `majority_vote`.
    is_thing: (num_classes,) bool, True where a semantic id is a thing class (index 0 = void).

  Returns:
    (H, W) int32 instance map in which each stuff class is a single segment.
  """
  instance = instance.astype(np.int32).copy()
  stuff = (~is_thing[semantic]) & (semantic > 0)
  for cls in np.unique(semantic[stuff]):
    pixels = stuff & (semantic == cls)
    instance[pixels] = instance[pixels].min()
  return instance


def to_original_size(
  pred: np.ndarray,
  padded_size: tuple[int, int],
  unpadded_size: tuple[int, int],
  orig_size: tuple[int, int],
  method: str = 'nearest',
) -> np.ndarray:
  """(Hm, Wm, ...) mask-size map -> (Ho, Wo, ...): resize to the padded input size, crop of the
  padding, resize to the original size; `method` 'nearest' (ids) or 'bilinear' (float maps)."""
  resize = {'nearest': resize_nearest, 'bilinear': resize_bilinear}[method]
  full = resize(pred, padded_size)
  full = full[: int(unpadded_size[0]), : int(unpadded_size[1])]
  return resize(full, orig_size)


@dataclasses.dataclass(frozen=True)
class Options:
  """The settings of an experiment's post-processing, read once from its config.

  Attributes:
    padded_size: (H, W) of the model input (config.model.image_size).
    num_classes, max_instances: the id ranges (config.model).
    min_pixels: the smallest segment (image) or track (clip) kept (config.eval).
    void_instance_zero: images: whether instance-0 pixels become void (ours) or one voted
      segment (config.eval; see `postprocess`).
    new_track_after: clips: see `split_tracks` (config.eval; 0: an id is one track over a clip).
    one_class_per_track: clips: vote one class per track (ours) or keep each pixel's class
      (config.eval; see `postprocess_clip`).
  """

  padded_size: tuple[int, int]
  num_classes: int
  max_instances: int
  min_pixels: int
  void_instance_zero: bool = True
  new_track_after: int = 0
  one_class_per_track: bool = True

  @classmethod
  def from_config(cls, config) -> Options:
    """The options of an experiment config (its model and eval sections)."""
    model, evaluation = config.model, config.eval
    return cls(
      padded_size=tuple(int(v) for v in model.image_size),
      num_classes=model.num_classes,
      max_instances=model.max_instances,
      min_pixels=evaluation.min_pixels,
      void_instance_zero=evaluation.void_instance_zero,
      new_track_after=evaluation.new_track_after,
      one_class_per_track=evaluation.one_class_per_track,
    )


def postprocess(
  pred: np.ndarray,
  unpadded_size: tuple[int, int],
  orig_size: tuple[int, int],
  options: Options,
  is_thing: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Mask-size prediction -> original-size (semantic, instance).

  Nearest resize to the padded input size, crop of the padding, nearest resize to the original
  size, majority vote of the class per instance with the min-pixel rule, and, when `is_thing` is
  given, one segment per stuff class. Pixels predicted with instance 0 become void, or, without
  `options.void_instance_zero`, vote one class among themselves as the authors' post-processing
  does (their `majority_vote_postprocess` counts id 0 like any id) and form one segment of it
  under a fresh id (`vote_instance_zero`).

  Args:
    pred: (Hm, Wm, 2) int [semantic, instance] decoded from bits.
    unpadded_size: (h, w) of the resized image inside the padded input.
    orig_size: (Ho, Wo) of the original image.
    options: padded_size, the id ranges, min_pixels (at original size) and void_instance_zero.
    is_thing: (num_classes,) bool per semantic id, or None to keep stuff segments apart.

  Returns:
    (semantic, instance), each (Ho, Wo) int32.
  """
  num_classes, min_pixels = options.num_classes, options.min_pixels
  full = to_original_size(pred, options.padded_size, unpadded_size, orig_size)
  semantic, instance = majority_vote(
    full[..., 0], full[..., 1], num_classes, options.max_instances, min_pixels
  )
  if not options.void_instance_zero:
    semantic, instance = vote_instance_zero(
      full[..., 0], full[..., 1], semantic, instance, num_classes, min_pixels
    )
  if is_thing is not None:
    instance = merge_stuff(semantic, instance, np.asarray(is_thing, bool))
  return semantic, instance


def split_tracks(instance: np.ndarray, absent_frames: int) -> np.ndarray:
  """Gives an id that comes back after `absent_frames` or more frames without it a fresh id.

  The model tracks by copying ids from the masks of the last few frames it is conditioned on;
  an id absent from all of them cannot have been copied, so where it appears again it is a new
  object that drew a used id (the authors' KITTI-STEP evaluation gives it a fresh id too).

  Args:
    instance: int (T, H, W) ids of a clip, 0 void.
    absent_frames: frames an id must be missing to start a new track when it reappears; 0 keeps
      every id one track over the whole clip.

  Returns:
    int64 (T, H, W): the same ids, each later life of a reused id renumbered to an id above all
    ids of the clip (in order of appearance).
  """
  instance = np.asarray(instance).astype(np.int64)
  if absent_frames <= 0 or instance.size == 0:
    return instance
  next_id = int(instance.max()) + 1
  current = np.arange(next_id)  # original id -> its id in the current life
  last_seen = np.full(next_id, -1, np.int64)
  out = np.empty_like(instance)
  for t, frame in enumerate(instance):
    present = np.unique(frame)
    present = present[present > 0]
    returning = present[(last_seen[present] >= 0) & (t - last_seen[present] > absent_frames)]
    current[returning] = np.arange(next_id, next_id + len(returning))
    next_id += len(returning)
    last_seen[present] = t
    out[t] = current[frame]
  return out


def split_ids_by_class(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
  """Gives each (class, id) pair of a clip its own id: an id predicted with several classes keeps
  it for the class with the most pixels (the smaller class on a tie), every other pair gets a
  fresh id above all ids of the clip (in the order of id, then most pixels, then class).

  The authors' STQ keys a predicted segment by class * divisor + id, so a pair is a segment and
  renumbering pairs one to one changes no score; it keeps our segment ids (the COCO panoptic
  files use the instance id) meaning one class each.

  Args:
    semantic, instance: int maps of one shape, (T, H, W) for a clip; instance 0 is no segment and
      stays 0.

  Returns:
    int64 instance map of the input shape.
  """
  semantic = np.asarray(semantic).astype(np.int64)
  instance = np.asarray(instance).astype(np.int64)
  labelled = instance > 0
  if not labelled.any():
    return instance
  span = int(semantic.max()) + 1
  pairs, inverse, counts = np.unique(
    instance[labelled] * span + semantic[labelled], return_inverse=True, return_counts=True
  )
  ids, classes = pairs // span, pairs % span
  order = np.lexsort((classes, -counts, ids))
  keeps = np.ones(len(order), bool)
  keeps[1:] = ids[order][1:] != ids[order][:-1]
  new_ids = ids.copy()
  fresh = order[~keeps]
  new_ids[fresh] = int(instance.max()) + 1 + np.arange(len(fresh))
  out = np.zeros_like(instance)
  out[labelled] = new_ids[inverse.reshape(-1)]
  return out


def keep_pixel_classes(
  semantic: np.ndarray,
  instance: np.ndarray,
  num_classes: int,
  min_pixels: int,
  is_thing: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """The authors' video post-processing: each pixel keeps its predicted class, instance id as
  predicted (their evaluation writes both channels of the sampled map unchanged).

  Where our ids must differ for our outputs, they are renumbered one to one, which changes no STQ:
  - a stuff pixel with instance 0 keeps its class and takes one fresh id per stuff class, so the
    stuff class is one segment of the frame once `merge_stuff` runs (STQ reads no stuff ids);
  - a thing pixel with instance 0 keeps its class and instance 0, as in the authors' files: STQ
    scores it by class (IoU) and all of a class's instance-0 pixels as one predicted tube (AQ),
    as theirs; PQ, COCO panoptic and DAVIS outputs treat it as no segment, since making all of
    them one object would invent a segment over every unidentified object of the class;
  - an id predicted with several classes becomes one id per class (`split_ids_by_class`).
  Segments with fewer than `min_pixels` pixels over the clip become void (0, 0).

  Args:
    semantic, instance: int (T, H, W) maps of a clip, at the original size.
    num_classes: the class range (semantic < num_classes).
    min_pixels: the smallest (class, id) segment kept.
    is_thing: (num_classes,) bool per semantic id (index 0 = void), or None: no class is stuff.

  Returns:
    (semantic, instance), int32 each, of the input shape.
  """
  semantic = np.clip(semantic, 0, num_classes - 1).astype(np.int64)
  instance = np.maximum(np.asarray(instance).astype(np.int64), 0)
  if is_thing is not None:
    stuff = (~np.asarray(is_thing, bool)[semantic]) & (semantic > 0)
    first_free = int(instance.max(initial=0)) + 1
    instance = np.where(stuff & (instance == 0), first_free + semantic, instance)
  instance = split_ids_by_class(semantic, instance)
  sizes = np.bincount(instance.ravel())
  small = (instance > 0) & (sizes[instance] < min_pixels)
  semantic = np.where(small, 0, semantic)
  instance = np.where(small, 0, instance)
  return semantic.astype(np.int32), instance.astype(np.int32)


def postprocess_clip(
  pred: np.ndarray,
  unpadded_size: tuple[int, int],
  orig_size: tuple[int, int],
  options: Options,
  is_thing: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Mask-size predictions of a clip -> original-size (semantic, instance) per frame.

  An id that reappears after `options.new_track_after` frames without it becomes a new track
  (`split_tracks`). Each frame is resized as an image is (`to_original_size`). With
  `options.one_class_per_track`, the class vote (`majority_vote`) then runs over each track's
  frames with class 0 a class like the others (DAVIS objects have it), so a track keeps one class
  over time, and instance-0 pixels become void; without it, each pixel keeps its predicted class,
  instance id as predicted, as the authors' evaluation (`keep_pixel_classes`). Tracks with fewer
  than `options.min_pixels` pixels over the clip become void. With `is_thing`, each stuff class is
  then one segment per frame (`merge_stuff`), as the image task makes it.

  Args:
    pred: (T, Hm, Wm, 2) int [semantic, instance] of the clip's real frames.
    unpadded_size: (h, w) of the frames inside the padded input.
    orig_size: (Ho, Wo) of the original frames.
    options: padded_size, the id ranges, min_pixels (the smallest track kept), new_track_after
      and one_class_per_track.
    is_thing: (num_classes,) bool per semantic id, or None to keep stuff segments apart.

  Returns:
    (semantic, instance), each (T, Ho, Wo) int32; instance ids of split tracks (and, without
    `one_class_per_track`, of split ids and stuff) may exceed options.max_instances - 1.
  """
  num_classes, min_pixels = options.num_classes, options.min_pixels
  pred = np.asarray(pred).astype(np.int64)
  instance = np.clip(pred[..., 1], 0, options.max_instances - 1)
  tracks = np.stack([pred[..., 0], split_tracks(instance, options.new_track_after)], axis=-1)
  full = np.stack(
    [to_original_size(frame, options.padded_size, unpadded_size, orig_size) for frame in tracks]
  )
  if options.one_class_per_track:
    num_ids = max(options.max_instances, int(full[..., 1].max(initial=0)) + 1)
    semantic, instance = majority_vote(
      full[..., 0], full[..., 1], num_classes, num_ids, min_pixels, class_zero_is_void=False
    )
  else:
    semantic, instance = keep_pixel_classes(
      full[..., 0], full[..., 1], num_classes, min_pixels, is_thing
    )
  if is_thing is not None:
    is_thing = np.asarray(is_thing, bool)
    frames = zip(semantic, instance, strict=True)
    instance = np.stack(
      [
        merge_stuff(frame_semantic, frame_instance, is_thing)
        for frame_semantic, frame_instance in frames
      ]
    )
  return semantic, instance
