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

Also a command on the official layout (ImageSets/2017/<set>.txt, Annotations_unsupervised/480p/,
predictions as indexed PNGs <results_dir>/<sequence>/<frame>.png):

  python -m pix2seq_d.evaluation.davis --davis_root=DIR --results_dir=DIR [--set=val]
    [--output_json=F]

It prints the global and per-object tables and writes {"J&F-Mean", "J-Mean", "J-Recall",
"J-Decay", "F-Mean", "F-Recall", "F-Decay", "per_sequence": {name: {"J-Mean", "F-Mean"}}}. The
evaluator plug-in of the evaluation loop is davis_evaluator.py.

Pure numpy and scipy; the PNGs are read by formats/davis_png.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage, optimize

from pix2seq_d.evaluation import base
from pix2seq_d.formats import davis_png

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
  void = gt_ids == davis_png.VOID_ID
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


# -------------------------------------------------------------------------- files and CLI


def evaluate_folder(
  davis_root: str,
  results_dir: str,
  image_set: str = 'val',
  resolution: str = '480p',
  annotations: str = 'Annotations_unsupervised',
) -> dict:
  """`summarize` over the sequences of ImageSets/2017/<image_set>.txt of a DAVIS root.

  Predictions are indexed PNGs results_dir/<sequence>/<frame>.png, one per annotated frame
  (the frame names of <annotations>/<resolution>/<sequence>/).
  """
  set_file = os.path.join(davis_root, 'ImageSets', '2017', f'{image_set}.txt')
  if not os.path.isfile(set_file):
    raise FileNotFoundError(
      f'{set_file} does not exist: is {davis_root} a DAVIS 2017 root '
      '(JPEGImages/, Annotations_unsupervised/, ImageSets/2017/)?'
    )
  with open(set_file) as f:
    sequences = [line.strip() for line in f if line.strip()]
  per_sequence = {}
  for sequence in sequences:
    folder = os.path.join(davis_root, annotations, resolution, sequence)
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'{folder} does not exist (sequence {sequence} of {set_file}).')
    frames = sorted(name for name in os.listdir(folder) if name.endswith('.png'))
    gt, pred = [], []
    for name in frames:
      gt.append(davis_png.read_indexed_png(os.path.join(folder, name)).astype(np.int64))
      path = os.path.join(results_dir, sequence, name)
      pred.append(davis_png.read_indexed_png(path).astype(np.int64))
      if pred[-1].shape != gt[-1].shape:
        raise ValueError(
          f'{path}: the prediction is {pred[-1].shape[1]}x{pred[-1].shape[0]}, its annotation '
          f'{gt[-1].shape[1]}x{gt[-1].shape[0]}'
        )
    gt, pred = np.stack(gt), np.stack(pred)
    try:
      per_sequence[sequence] = evaluate_sequence(gt, pred)
    except ValueError as e:
      raise ValueError(f'{os.path.join(results_dir, sequence)}: {e}') from None
  return summarize(per_sequence)


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


def main(argv: Sequence[str] | None = None) -> int:
  """CLI; returns the exit status (0 ok, 1 bad input with the reason on stderr)."""
  parser = argparse.ArgumentParser(
    prog='python -m pix2seq_d.evaluation.davis',
    description='DAVIS 2017 unsupervised J&F, equal to davisvideochallenge/davis2017-evaluation.',
  )
  parser.add_argument('--davis_root', required=True, help='the DAVIS 2017 folder')
  parser.add_argument(
    '--results_dir', required=True, help='indexed PNG predictions, <sequence>/<frame>.png'
  )
  parser.add_argument('--set', default='val', help='ImageSets/2017/<set>.txt')
  parser.add_argument('--resolution', default='480p')
  parser.add_argument('--output_json', default=None, help='where to write the results as JSON')
  args = parser.parse_args(argv)

  def score() -> tuple[dict, str]:
    results = evaluate_folder(args.davis_root, args.results_dir, args.set, args.resolution)
    return results, format_table(results)

  return base.run_command(score, args.output_json)


if __name__ == '__main__':
  sys.exit(main())
