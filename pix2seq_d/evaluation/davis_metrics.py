"""DAVIS 2017 unsupervised video object segmentation metrics: region J, boundary F, J&F.

The definitions and their edge cases are those of the official evaluation
(davisvideochallenge/davis2017-evaluation, task 'unsupervised'):

- Objects. Ground-truth objects are the ids 1..K of the FIRST annotated frame (K = its largest id;
  an object that appears only later is not evaluated); pixels of value 255 are void in every frame.
  Proposals are the ids 1..P over all predicted frames; more than 20 is an error; with fewer
  proposals than objects, empty ones are added.
- Per frame, for each (proposal, object): J = |p & g - void| / |p | g - void| (1 when the union
  is empty); F = the F-measure of boundary precision and recall, boundaries being the one-pixel
  maps of `_boundary_map` of the masks with void removed, matched within
  ceil(0.008 * image diagonal) pixels (a disk).
- Assignment. Over the whole video, each object gets one proposal by the Hungarian algorithm on
  the mean over frames of (J + F) / 2 (maximised).
- Per object: Mean = mean over frames, Recall = share of frames above 0.5, Decay = mean of the
  first quarter of the frames minus the last quarter (quarters as the official code cuts them,
  bin edges cast to uint8 as it does). Over the set: each statistic is the mean over all objects
  of all sequences, and J&F-Mean = (J-Mean + F-Mean) / 2. Rows are named '<sequence>_<k>'.

Object maps from panoptic maps (`object_ids`, `gt_object_ids`): int (T, H, W), 0 = background,
k > 0 = the k-th object, VOID_ID = void. A pixel belongs to an object when its instance id is
non-zero and its class is not a stuff class: thing classes (the shapes' objects) and class 0
(DAVIS, whose semantic channel is 0 for every object) both count, while stuff segments (sky,
ground) are background.

Pure numpy and scipy. The command on files is davis.py; the evaluator plug-in davis_evaluator.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage, optimize

VOID_ID = 255
MAX_PROPOSALS = 20
BOUNDARY_TOLERANCE = 0.008  # of the image diagonal.
_DECAY_BINS = 4


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None):
  """J per frame: IoU of binary masks outside void. gt, pred, void (..., H, W) -> (...)."""
  gt, pred = gt.astype(bool), pred.astype(bool)
  keep = np.ones_like(gt) if void is None else ~void.astype(bool)
  intersection = np.sum(gt & pred & keep, axis=(-2, -1))
  union = np.sum((gt | pred) & keep, axis=(-2, -1))
  with np.errstate(divide='ignore', invalid='ignore'):
    j = intersection / union
  return np.where(np.isclose(union, 0), 1.0, j)


def _boundary_map(mask: np.ndarray) -> np.ndarray:
  """One-pixel boundaries of a binary (H, W) mask, offset half a pixel towards the origin."""
  mask = mask.astype(bool)
  east, south, south_east = (np.zeros_like(mask) for _ in range(3))
  east[:, :-1] = mask[:, 1:]
  south[:-1, :] = mask[1:, :]
  south_east[:-1, :-1] = mask[1:, 1:]
  boundary = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
  boundary[-1, :] = mask[-1, :] ^ east[-1, :]
  boundary[:, -1] = mask[:, -1] ^ south[:, -1]
  boundary[-1, -1] = False
  return boundary


def _disk(radius: int) -> np.ndarray:
  """The (2r + 1)^2 disk footprint x^2 + y^2 <= r^2."""
  span = np.arange(-radius, radius + 1)
  return span[:, None] ** 2 + span[None, :] ** 2 <= radius**2


def boundary_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
  """F of one frame: boundary precision / recall of pred against gt within the tolerance disk.

  gt, pred, void: (H, W) binary.
  """
  keep = np.ones(gt.shape, bool) if void is None else ~void.astype(bool)
  radius = int(np.ceil(BOUNDARY_TOLERANCE * np.linalg.norm(gt.shape)))
  pred_boundary = _boundary_map(pred.astype(bool) & keep)
  gt_boundary = _boundary_map(gt.astype(bool) & keep)
  footprint = _disk(radius)
  pred_dilated = ndimage.binary_dilation(pred_boundary, structure=footprint)
  gt_dilated = ndimage.binary_dilation(gt_boundary, structure=footprint)
  n_pred, n_gt = int(pred_boundary.sum()), int(gt_boundary.sum())
  if n_pred == 0 and n_gt == 0:
    precision = recall = 1.0
  elif n_pred == 0:
    precision, recall = 1.0, 0.0
  elif n_gt == 0:
    precision, recall = 0.0, 1.0
  else:
    precision = float(np.sum(pred_boundary & gt_dilated)) / n_pred
    recall = float(np.sum(gt_boundary & pred_dilated)) / n_gt
  if precision + recall == 0:
    return 0.0
  return 2 * precision * recall / (precision + recall)


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
  """(Mean, Recall, Decay) of one object's per-frame values (T,), as the official code."""
  per_frame = np.asarray(per_frame, np.float64)
  mean = float(np.nanmean(per_frame))
  recall = float(np.nanmean(per_frame > 0.5))
  edges = (np.round(np.linspace(1, len(per_frame), _DECAY_BINS + 1) + 1e-10) - 1).astype(np.uint8)
  bins = [per_frame[edges[i] : edges[i + 1] + 1] for i in range(_DECAY_BINS)]
  with np.errstate(invalid='ignore'):
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[-1]))
  return mean, recall, decay


def _object_masks(ids: np.ndarray, count: int) -> np.ndarray:
  """(T, H, W) ids -> (count, T, H, W) bool, object k + 1 in row k."""
  return ids[None] == np.arange(1, count + 1)[:, None, None, None]


def evaluate_sequence(gt_ids: np.ndarray, pred_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-frame J and F of each ground-truth object with its assigned proposal.

  Args:
    gt_ids: int (T, H, W) annotation: object ids, 0 background, 255 void.
    pred_ids: int (T, H, W) prediction: proposal ids, 0 background.

  Returns:
    j, f: float64 (K, T) for the K objects of the first frame.

  Raises:
    ValueError: shapes differ, or more than 20 proposals.
  """
  gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
  if gt_ids.shape != pred_ids.shape or gt_ids.ndim != 3:
    raise ValueError(
      f'annotation {gt_ids.shape} and prediction {pred_ids.shape} must be one (T, H, W).'
    )
  void = gt_ids == VOID_ID
  gt_ids = np.where(void, 0, gt_ids)
  num_objects = int(gt_ids[0].max())
  num_proposals = int(pred_ids.max()) if pred_ids.size else 0
  if num_proposals > MAX_PROPOSALS:
    raise ValueError(
      f'the prediction holds id {num_proposals}: at most {MAX_PROPOSALS} proposals are allowed.'
    )
  gt = _object_masks(gt_ids, num_objects)
  pred = _object_masks(pred_ids, max(num_proposals, num_objects))
  frames = gt_ids.shape[0]
  j = np.zeros((len(pred), num_objects, frames))
  f = np.zeros((len(pred), num_objects, frames))
  for k in range(num_objects):
    for p in range(len(pred)):
      j[p, k] = region_similarity(gt[k], pred[p], void)
      f[p, k] = [boundary_f(gt[k, t], pred[p, t], void[t]) for t in range(frames)]
  rows, cols = optimize.linear_sum_assignment(-(j.mean(axis=2) + f.mean(axis=2)) / 2)
  return j[rows, cols], f[rows, cols]


def summarize(per_sequence: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict:
  """The set's results from {sequence: (j, f) of `evaluate_sequence`}.

  Returns:
    {'J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay',
     'per_sequence': {'<sequence>_<k>': {'J-Mean', 'F-Mean'}}}.
  """
  rows = {'J': [], 'F': []}
  per_object = {}
  for sequence, (j, f) in per_sequence.items():
    for k in range(len(j)):
      j_stats, f_stats = statistics(j[k]), statistics(f[k])
      rows['J'].append(j_stats)
      rows['F'].append(f_stats)
      per_object[f'{sequence}_{k + 1}'] = {'J-Mean': j_stats[0], 'F-Mean': f_stats[0]}
  result = {}
  for metric in ('J', 'F'):
    values = np.asarray(rows[metric], np.float64).reshape(-1, 3)
    for column, name in enumerate(('Mean', 'Recall', 'Decay')):
      result[f'{metric}-{name}'] = float(np.mean(values[:, column])) if len(values) else 0.0
  result = {'J&F-Mean': (result['J-Mean'] + result['F-Mean']) / 2, **result}
  result['per_sequence'] = per_object
  return result


def format_table(results: dict) -> str:
  """The official printout: the global row, then J-Mean and F-Mean per object."""
  names = ('J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay')
  lines = [
    ' '.join(f'{name:>9s}' for name in names),
    ' '.join(f'{results[name]:9.3f}' for name in names),
    '',
    f'{"Sequence":24s} {"J-Mean":>7s} {"F-Mean":>7s}',
  ]
  for name, row in results['per_sequence'].items():
    lines.append(f'{name:24s} {row["J-Mean"]:7.3f} {row["F-Mean"]:7.3f}')
  return '\n'.join(lines)


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
  if ids.max(initial=0) >= VOID_ID:
    raise ValueError(f'a clip has {ids.max()} objects; the DAVIS format holds fewer than 255.')
  return np.where(orig_label[..., 2] > 0, VOID_ID, ids).astype(np.int32)


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
  for k in range(1, int(np.where(gt_ids == VOID_ID, 0, gt_ids).max(initial=0)) + 1):
    majority = set()
    for gt, pred in zip(gt_ids, pred_ids, strict=True):
      pixels = pred[gt == k]
      if pixels.size:
        majority.add(int(np.bincount(pixels).argmax()))
    if majority:
      total += 1
      kept += int(len(majority) == 1 and 0 not in majority)
  return kept, total
