"""Post-processing: from the model's mask-size ids to original-size panoptic maps.

Runs on the host in numpy, one image (or one clip) at a time, because every image has its own
original size. `postprocess` is the image task's, `postprocess_clip` the video task's.
"""

import numpy as np


def resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(H, W, ...) -> (h, w, ...) by nearest neighbour with half-pixel centres (as tf.image)."""
  in_h, in_w = x.shape[:2]
  out_h, out_w = int(size[0]), int(size[1])
  rows = np.minimum(((np.arange(out_h) + 0.5) * in_h / out_h).astype(np.int64), in_h - 1)
  cols = np.minimum(((np.arange(out_w) + 0.5) * in_w / out_w).astype(np.int64), in_w - 1)
  return x[rows[:, None], cols[None, :]]


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
) -> np.ndarray:
  """(Hm, Wm, ...) mask-size map -> (Ho, Wo, ...): nearest resize to the padded input size, crop of
  the padding, nearest resize to the original size."""
  full = resize_nearest(pred, padded_size)
  full = full[: int(unpadded_size[0]), : int(unpadded_size[1])]
  return resize_nearest(full, orig_size)


def postprocess(
  pred: np.ndarray,
  padded_size: tuple[int, int],
  unpadded_size: tuple[int, int],
  orig_size: tuple[int, int],
  *,
  num_classes: int,
  max_instances: int,
  min_pixels: int,
  is_thing: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Mask-size prediction -> original-size (semantic, instance).

  Nearest resize to the padded input size, crop of the padding, nearest resize to the original
  size, majority vote of the class per instance with the min-pixel rule, and, when `is_thing` is
  given, one segment per stuff class.

  Args:
    pred: (Hm, Wm, 2) int [semantic, instance] decoded from bits.
    padded_size: (H, W) of the model input.
    unpadded_size: (h, w) of the resized image inside the padded input.
    orig_size: (Ho, Wo) of the original image.
    num_classes, max_instances: id ranges.
    min_pixels: smallest segment kept (at original size).
    is_thing: (num_classes,) bool per semantic id, or None to keep stuff segments apart.

  Returns:
    (semantic, instance), each (Ho, Wo) int32.
  """
  full = to_original_size(pred, padded_size, unpadded_size, orig_size)
  semantic, instance = majority_vote(
    full[..., 0], full[..., 1], num_classes, max_instances, min_pixels
  )
  if is_thing is not None:
    instance = merge_stuff(semantic, instance, np.asarray(is_thing, bool))
  return semantic, instance


def postprocess_clip(
  pred: np.ndarray,
  padded_size: tuple[int, int],
  unpadded_size: tuple[int, int],
  orig_size: tuple[int, int],
  *,
  num_classes: int,
  max_instances: int,
  min_pixels: int,
  is_thing: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Mask-size predictions of a clip -> original-size (semantic, instance) per frame.

  Each frame is resized as an image is (`to_original_size`), then the class vote
  (`majority_vote`) runs over the whole clip with class 0 a class like the others (DAVIS
  objects have it), so an id keeps one class over time; ids with fewer than `min_pixels` pixels
  over the clip become void. With `is_thing`, each stuff class is then one segment per frame
  (`merge_stuff`), as the image task makes it.

  Args:
    pred: (T, Hm, Wm, 2) int [semantic, instance] of the clip's real frames.
    padded_size: (H, W) of the model input; unpadded_size: (h, w) of the frames inside it.
    orig_size: (Ho, Wo) of the original frames.
    num_classes, max_instances: the id ranges; min_pixels: the smallest track kept.
    is_thing: (num_classes,) bool per semantic id, or None to keep stuff segments apart.

  Returns:
    (semantic, instance), each (T, Ho, Wo) int32.
  """
  full = np.stack(
    [to_original_size(frame, padded_size, unpadded_size, orig_size) for frame in pred]
  )
  semantic, instance = majority_vote(
    full[..., 0], full[..., 1], num_classes, max_instances, min_pixels, class_zero_is_void=False
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
