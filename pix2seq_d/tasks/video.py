"""Video post-processing: from the model's per-frame mask-size ids to the objects of a clip.

Runs on the host in numpy, one clip at a time. The object maps follow the DAVIS 2017
unsupervised convention (pix2seq_d/evaluation/davis.py): int (T, H, W), 0 = background, k > 0 = the
k-th object, VOID_ID = void. A pixel belongs to an object when its instance id is non-zero and its
class is not a stuff class: thing classes (the shapes' objects) and class 0 (DAVIS, whose semantic
channel is 0 for every object) both count, while stuff segments (sky, ground) are background.
"""

import numpy as np

from pix2seq_d.evaluation import davis
from pix2seq_d.tasks import panoptic


def postprocess_clip(
  pred: np.ndarray,
  padded_size: tuple[int, int],
  unpadded_size: tuple[int, int],
  orig_size: tuple[int, int],
  *,
  num_classes: int,
  max_instances: int,
  min_pixels: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Mask-size predictions of a clip -> original-size (semantic, instance) per frame.

  Each frame is resized as an image is (`panoptic.to_original_size`), then the class vote
  (`panoptic.majority_vote`) runs over the whole clip with class 0 a class like the others (DAVIS
  objects have it), so an id keeps one class over time; ids with fewer than `min_pixels` pixels
  over the clip become void.

  Args:
    pred: (T, Hm, Wm, 2) int [semantic, instance] of the clip's real frames.
    padded_size: (H, W) of the model input; unpadded_size: (h, w) of the frames inside it.
    orig_size: (Ho, Wo) of the original frames.
    num_classes, max_instances: the id ranges; min_pixels: the smallest track kept.

  Returns:
    (semantic, instance), each (T, Ho, Wo) int32.
  """
  full = np.stack(
    [panoptic.to_original_size(frame, padded_size, unpadded_size, orig_size) for frame in pred]
  )
  return panoptic.majority_vote(
    full[..., 0], full[..., 1], num_classes, max_instances, min_pixels, class_zero_is_void=False
  )


def object_ids(
  semantic: np.ndarray,
  instance: np.ndarray,
  is_thing: np.ndarray,
  *,
  by: str,
  limit: int | None = None,
) -> np.ndarray:
  """The clip's objects as DAVIS object ids 1..K (0 elsewhere).

  Args:
    semantic, instance: (T, H, W) int maps of a clip.
    is_thing: (num_classes,) bool per semantic id (index 0 = void).
    by: 'id' numbers the objects in the order of their instance ids (a ground truth whose ids
      are already 1..K keeps them, as DAVIS's do); 'size' numbers them largest first (pixels over
      the clip), for predictions.
    limit: keep at most this many objects (the first ones in that order); None keeps all.

  Returns:
    (T, H, W) int32 object ids.
  """
  semantic = np.asarray(semantic)
  instance = np.asarray(instance).astype(np.int64)
  is_stuff = ~np.asarray(is_thing, bool)
  is_stuff[0] = False
  is_object = (instance > 0) & ~is_stuff[np.clip(semantic, 0, len(is_stuff) - 1)]
  ids = np.where(is_object, instance, 0)
  counts = np.bincount(ids.ravel())
  counts[0] = 0
  present = np.flatnonzero(counts)
  if by == 'size':
    present = present[np.argsort(-counts[present], kind='stable')]
  elif by != 'id':
    raise ValueError(f"object_ids: by={by!r}; use 'id' or 'size'.")
  if limit is not None:
    present = present[:limit]
  table = np.zeros(len(counts), np.int32)
  table[present] = np.arange(1, len(present) + 1)
  return table[ids]


def gt_object_ids(orig_label: np.ndarray, is_thing: np.ndarray) -> np.ndarray:
  """The DAVIS annotation of a clip's ground truth: (T, H, W, 3) [semantic, instance, crowd] ->
  (T, H, W) int32 object ids 1..K in instance-id order, with crowd (DAVIS void) pixels VOID_ID."""
  ids = object_ids(orig_label[..., 0], orig_label[..., 1], is_thing, by='id')
  if ids.max(initial=0) >= davis.VOID_ID:
    raise ValueError(f'a clip has {ids.max()} objects; the DAVIS format holds fewer than 255.')
  return np.where(orig_label[..., 2] > 0, davis.VOID_ID, ids).astype(np.int32)


def id_consistency(gt_ids: np.ndarray, pred_ids: np.ndarray) -> tuple[int, int]:
  """How many ground-truth objects keep one predicted id from their first to their last frame.

  An object keeps its id when, in every frame where it is visible, the predicted id covering most
  of its pixels is the same non-zero id.

  Args:
    gt_ids: (T, H, W) DAVIS annotation (VOID_ID void); pred_ids: (T, H, W) predicted object ids.

  Returns:
    (objects that keep one id, objects).
  """
  kept = total = 0
  for k in range(1, int(np.where(gt_ids == davis.VOID_ID, 0, gt_ids).max(initial=0)) + 1):
    majority = set()
    for gt, pred in zip(gt_ids, pred_ids, strict=True):
      pixels = pred[gt == k]
      if pixels.size:
        majority.add(int(np.bincount(pixels).argmax()))
    if majority:
      total += 1
      kept += int(len(majority) == 1 and 0 not in majority)
  return kept, total
