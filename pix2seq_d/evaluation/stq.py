"""Segmentation and Tracking Quality (STQ; Weber et al. 2021, "STEP: Segmenting and Tracking Every
Pixel", arXiv 2102.11859), and the command that scores KITTI-STEP-layout predictions.

The definitions, as the benchmark's reference (deeplab2's numpy STQ) computes them:

- Classes 0..K-1 and a void label; `things` are the classes that carry track ids. A pixel's
  panoptic id is (class, instance). Ground-truth thing pixels with instance 0 are crowd.
- AQ. Per sequence, every ground-truth tube g (the pixels of one (thing class, track id) over all
  frames, crowd excluded) and every predicted tube p (the pixels predicted as one (thing class,
  id), ground-truth crowd pixels excluded) give TPA = |p & g|, FPA = |p| - TPA, FNA = |g| - TPA;
  AQ(g) = (1 / |g|) * sum over p of TPA * TPA / (TPA + FPA + FNA). The sequence's AQ is the sum
  over its tubes divided by their number (0 without tubes); the set's AQ is the sum over every
  tube of every sequence divided by the number of all tubes.
- SQ (reported as IoU). The confusion matrix of classes, with void as one more column and row,
  summed over every frame (of the sequence, or of the set); the void row is removed; per class
  IoU = TP / (TP + FP + FN); the mean over the classes whose union is not empty. The void column
  counts as a class: a labelled pixel predicted void makes void's union non-empty and enters the
  mean with IoU 0.
- STQ = sqrt(AQ * SQ), per sequence and for the set.

Counts are exact integers here (the reference accumulates tube sizes in float32, which is exact
up to 2^24 pixels per tube).

  python -m pix2seq_d.evaluation.stq --step_root=DIR --split=val --results_dir=RES
    [--output_json=F] [--num_classes=19 --things=11,13] [--max_frames_per_sequence=100]

reads DIR/panoptic_maps/<split>/<seq>/<frame>.png and RES/<seq>/<frame>.png (R = class, 255
void; G * 256 + B = instance id), with --max_frames_per_sequence=N only the first N frames of
each sequence (the authors' protocol: N = 100; 0, the default, every frame as the benchmark
server), prints the table and writes {"STQ", "AQ", "IoU",
"per_sequence": {"0002": {"STQ", "AQ", "IoU", "num_frames"}, ...}}. The evaluator plug-in of the
evaluation loop is stq_evaluator.py. Pure numpy; the maps are read by formats/step_png.py.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from pix2seq_d.evaluation import base
from pix2seq_d.formats import step_png

# KITTI-STEP: the 19 Cityscapes train ids; person (11) and car (13) carry track ids.
KITTI_STEP_NUM_CLASSES = 19
KITTI_STEP_THINGS = (11, 13)


class SequenceSTQ:
  """The STQ statistics of one sequence, accumulated frame by frame.

  Args:
    num_classes: K; class values are 0..K-1, and `void` (any other value) is void.
    things: the thing classes.
    void: the void class value (KITTI-STEP: 255).
  """

  def __init__(self, num_classes: int, things: Sequence[int], void: int = step_png.VOID):
    self.num_classes = int(num_classes)
    self.things = np.asarray(sorted(set(int(c) for c in things)), np.int64)
    self.void = int(void)
    size = self.num_classes + 1  # the last row / column is void
    self.confusion = np.zeros((size, size), np.int64)
    self.gt_tubes: dict[int, int] = {}
    self.pred_tubes: dict[int, int] = {}
    self.intersections: dict[tuple[int, int], int] = {}
    self.num_frames = 0

  def _classes(self, semantic: np.ndarray, what: str) -> np.ndarray:
    semantic = np.asarray(semantic).astype(np.int64)
    labelled = (semantic >= 0) & (semantic < self.num_classes)
    bad = ~labelled & (semantic != self.void)
    if bad.any():
      raise ValueError(
        f'{what} class {int(semantic[bad][0])} is neither a class (0..{self.num_classes - 1}) '
        f'nor void ({self.void})'
      )
    return np.where(labelled, semantic, self.num_classes)

  def add_frame(
    self,
    gt_semantic: np.ndarray,
    gt_instance: np.ndarray,
    pred_semantic: np.ndarray,
    pred_instance: np.ndarray,
  ) -> None:
    """Adds one frame: int (H, W) class and instance maps of the ground truth and prediction."""
    gt_class = self._classes(gt_semantic, 'ground-truth').ravel()
    pred_class = self._classes(pred_semantic, 'predicted').ravel()
    gt_instance = np.asarray(gt_instance).astype(np.int64).ravel()
    pred_instance = np.asarray(pred_instance).astype(np.int64).ravel()
    if not (gt_class.shape == pred_class.shape == gt_instance.shape == pred_instance.shape):
      raise ValueError('the ground-truth and predicted maps of a frame differ in size')
    for what, instance in (('ground-truth', gt_instance), ('predicted', pred_instance)):
      if instance.size and (instance.min() < 0 or instance.max() >= step_png.INSTANCE_SPAN):
        raise ValueError(f'{what} instance ids must lie in 0..{step_png.INSTANCE_SPAN - 1}')
    size = self.num_classes + 1
    self.confusion += np.bincount(gt_class * size + pred_class, minlength=size * size).reshape(
      size, size
    )
    gt_thing = np.isin(gt_class, self.things)
    crowd = gt_thing & (gt_instance == 0)
    gt_tube = gt_thing & ~crowd
    pred_tube = np.isin(pred_class, self.things) & ~crowd
    gt_keys = gt_class * step_png.INSTANCE_SPAN + gt_instance
    pred_keys = pred_class * step_png.INSTANCE_SPAN + pred_instance
    _add_counts(self.gt_tubes, gt_keys[gt_tube])
    _add_counts(self.pred_tubes, pred_keys[pred_tube])
    both = gt_tube & pred_tube
    pairs, counts = np.unique(
      gt_keys[both] * (size * step_png.INSTANCE_SPAN) + pred_keys[both], return_counts=True
    )
    span = size * step_png.INSTANCE_SPAN
    for pair, count in zip(pairs.tolist(), counts.tolist(), strict=True):
      key = (pair // span, pair % span)
      self.intersections[key] = self.intersections.get(key, 0) + count
    self.num_frames += 1

  def summary(self) -> dict:
    """The sequence's JSON-able statistics: {'aq_sum': sum over its gt tubes of AQ(g),
    'num_tubes', 'confusion': (K+1)^2 nested lists, 'num_frames'}."""
    aq_sum = 0.0
    for gt_key, gt_size in self.gt_tubes.items():
      inner = 0.0
      for pred_key, pred_size in self.pred_tubes.items():
        tpa = self.intersections.get((gt_key, pred_key), 0)
        if tpa:
          inner += tpa * (tpa / (pred_size + gt_size - tpa))
      aq_sum += inner / gt_size
    return {
      'aq_sum': aq_sum,
      'num_tubes': len(self.gt_tubes),
      'confusion': self.confusion.tolist(),
      'num_frames': self.num_frames,
    }


def _add_counts(table: dict[int, int], keys: np.ndarray) -> None:
  values, counts = np.unique(keys, return_counts=True)
  for value, count in zip(values.tolist(), counts.tolist(), strict=True):
    table[value] = table.get(value, 0) + count


def mean_iou(confusion: np.ndarray) -> float:
  """SQ of a (K+1, K+1) confusion matrix whose last row and column are void (module docstring)."""
  confusion = np.array(confusion, np.float64)
  confusion[-1, :] = 0  # the void row: unlabelled pixels count for nothing
  true_positive = np.diag(confusion)
  union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
  present = union > 0
  if not present.any():
    return float('nan')
  return float(np.sum(true_positive[present] / union[present]) / np.count_nonzero(present))


def summarize(per_sequence: Mapping[str, dict]) -> dict:
  """The set's STQ from {sequence: `SequenceSTQ.summary()`}.

  Returns:
    {'STQ', 'AQ', 'IoU', 'per_sequence': {sequence: {'STQ', 'AQ', 'IoU', 'num_frames'}}},
    sequences in sorted order.
  """
  rows = {}
  total_confusion, aq_sum, num_tubes = None, 0.0, 0
  for name in sorted(per_sequence):
    stats = per_sequence[name]
    confusion = np.asarray(stats['confusion'], np.int64)
    total_confusion = confusion if total_confusion is None else total_confusion + confusion
    aq_sum += stats['aq_sum']
    num_tubes += stats['num_tubes']
    aq = stats['aq_sum'] / stats['num_tubes'] if stats['num_tubes'] else 0.0
    iou = mean_iou(confusion)
    rows[name] = {
      'STQ': math.sqrt(aq * iou),
      'AQ': aq,
      'IoU': iou,
      'num_frames': int(stats['num_frames']),
    }
  if total_confusion is None:
    raise ValueError('no sequence to score')
  aq = aq_sum / num_tubes if num_tubes else 0.0
  iou = mean_iou(total_confusion)
  return {'STQ': math.sqrt(aq * iou), 'AQ': aq, 'IoU': iou, 'per_sequence': rows}


def format_table(results: dict) -> str:
  """The set's STQ, AQ and IoU (in percent), then one row per sequence."""
  lines = [
    f'{"":10s} {"STQ":>6s} {"AQ":>6s} {"IoU":>6s} {"frames":>7s}',
    f'{"all":10s} {100 * results["STQ"]:6.2f} {100 * results["AQ"]:6.2f} '
    f'{100 * results["IoU"]:6.2f}',
  ]
  for name, row in results['per_sequence'].items():
    lines.append(
      f'{name:10s} {100 * row["STQ"]:6.2f} {100 * row["AQ"]:6.2f} {100 * row["IoU"]:6.2f} '
      f'{row["num_frames"]:7d}'
    )
  return '\n'.join(lines)


# -------------------------------------------------------------------------- files and CLI


def evaluate_folder(
  step_root: str,
  results_dir: str,
  split: str = 'val',
  num_classes: int = KITTI_STEP_NUM_CLASSES,
  things: Sequence[int] = KITTI_STEP_THINGS,
  max_frames: int = 0,
) -> dict:
  """`summarize` of the predictions in results_dir/<seq>/<frame>.png for every ground-truth frame
  step_root/panoptic_maps/<split>/<seq>/<frame>.png, or with `max_frames` > 0 for the first
  `max_frames` of each sequence (in frame order; later frames need no prediction).

  Raises:
    FileNotFoundError: the split's folder, or a prediction frame, is missing (named).
    ValueError: a frame that cannot be read, or of another size than its ground truth (named).
  """
  maps = os.path.join(step_root, 'panoptic_maps', split)
  if not os.path.isdir(maps):
    raise FileNotFoundError(
      f'{maps} does not exist: is {step_root} a KITTI-STEP root (images/, panoptic_maps/)?'
    )
  sequences = sorted(name for name in os.listdir(maps) if os.path.isdir(os.path.join(maps, name)))
  if not sequences:
    raise FileNotFoundError(f'{maps} holds no sequence folders')
  per_sequence = {}
  for sequence in sequences:
    stq = SequenceSTQ(num_classes, things)
    frames = sorted(
      name for name in os.listdir(os.path.join(maps, sequence)) if name.endswith('.png')
    )
    if max_frames:
      frames = frames[:max_frames]
    for frame in frames:
      gt_path = os.path.join(maps, sequence, frame)
      pred_path = os.path.join(results_dir, sequence, frame)
      if not os.path.isfile(pred_path):
        raise FileNotFoundError(f'{pred_path}: no prediction for the ground-truth frame {gt_path}')
      gt, pred = step_png.read_step_png(gt_path), step_png.read_step_png(pred_path)
      if gt[0].shape != pred[0].shape:
        raise ValueError(
          f'{pred_path}: the prediction is {pred[0].shape[1]}x{pred[0].shape[0]}, its ground '
          f'truth {gt[0].shape[1]}x{gt[0].shape[0]}'
        )
      try:
        stq.add_frame(*gt, *pred)
      except ValueError as e:
        raise ValueError(f'{pred_path}: {e}') from None
    per_sequence[sequence] = stq.summary()
  return summarize(per_sequence)


def _thing_classes(text: str, num_classes: int) -> list[int]:
  """The classes of --things ('11,13'); ValueError naming the flag and the value otherwise."""
  things = []
  for value in (v.strip() for v in text.split(',')):
    if not value:
      continue
    try:
      things.append(int(value))
    except ValueError:
      raise ValueError(f'--things={text}: {value!r} is not an integer class id') from None
    if not 0 <= things[-1] < num_classes:
      raise ValueError(
        f'--things={text}: {things[-1]} is not a class of 0..{num_classes - 1} '
        f'(--num_classes={num_classes})'
      )
  return things


def main(argv: Sequence[str] | None = None) -> int:
  """CLI; returns the exit status (0 ok, 1 bad input with the reason on stderr)."""
  parser = argparse.ArgumentParser(
    prog='python -m pix2seq_d.evaluation.stq',
    description='STQ (segmentation and tracking quality) of KITTI-STEP-layout predictions.',
  )
  parser.add_argument('--step_root', required=True, help='folder with panoptic_maps/<split>/')
  parser.add_argument('--split', default='val')
  parser.add_argument('--results_dir', required=True, help='predictions <seq>/<frame>.png')
  parser.add_argument('--num_classes', type=int, default=KITTI_STEP_NUM_CLASSES)
  parser.add_argument(
    '--things', default=','.join(map(str, KITTI_STEP_THINGS)), help='thing classes, e.g. 11,13'
  )
  parser.add_argument('--output_json', default=None, help='where to write the results as JSON')
  parser.add_argument(
    '--max_frames_per_sequence',
    type=int,
    default=0,
    help='score the first N frames of each sequence (the authors: 100); 0 scores every frame',
  )
  args = parser.parse_args(argv)

  def score() -> tuple[dict, str]:
    things = _thing_classes(args.things, args.num_classes)
    if args.max_frames_per_sequence < 0:
      raise ValueError(
        f'--max_frames_per_sequence={args.max_frames_per_sequence}: must be >= 0 (0 scores '
        'every frame)'
      )
    results = evaluate_folder(
      args.step_root,
      args.results_dir,
      args.split,
      args.num_classes,
      things,
      max_frames=args.max_frames_per_sequence,
    )
    return results, format_table(results)

  return base.run_command(score, args.output_json)


if __name__ == '__main__':
  sys.exit(main())
