"""Evaluators of several samples per image (config.eval.num_samples = K >= 2).

'pq_single'          PQ, SQ, RQ (all, things, stuff) of the first sample alone, reported as
                     PQ_single, ...: the figure one sample would have reached, beside the merged
                     map's PQ of the 'pq' evaluator in the same pass.
'uncertainty_auroc'  how well the per-pixel uncertainty finds the wrong pixels: the area under the
                     ROC curve of the uncertainty as a detector of wrong pixels. A pixel of a
                     non-crowd ground-truth segment is wrong when its predicted segment is not the
                     one PQ matched to that ground-truth segment (same category, IoU > 0.5; an
                     unmatched ground-truth segment makes all its pixels wrong), so a wrong class
                     is wrong too. Void and crowd pixels are not scored.

The AUROC is exact and sums over processes: uncertainties are counted in 256 bins (the 8-bit
levels that --mode=predict writes; K samples give K distinct levels, so no two levels share a
bin), and the area is P(u_wrong > u_right) + P(u_wrong = u_right) / 2 over all pairs of a wrong
and a right pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pix2seq_d.evaluation import base, edit_evaluators, pq_accumulator, pq_evaluator
from pix2seq_d.formats import coco_panoptic

LEVELS = 256  # uncertainty bins: the 8-bit levels of the written uncertainty pictures


class PQSingleEvaluator(pq_evaluator.PQEvaluator):
  """PQ of the first of the K samples of each image (`Example.single`), as PQ_single, ..."""

  name = 'pq_single'

  def read(self, example) -> base.Panoptic:
    return example.single

  def results(self) -> base.Results:
    return edit_evaluators.renamed(super().results(), '_single')


def wrong_pixels(
  ground_truth: np.ndarray, prediction: base.Panoptic, categories: Sequence[dict]
) -> tuple[np.ndarray, np.ndarray]:
  """Which pixels of one image are scored and which of those the prediction gets wrong.

  Args:
    ground_truth: int (H, W, 3) [semantic, instance, crowd].
    prediction: (H, W) semantic and instance maps.
    categories: the dataset's categories.

  Returns:
    (scored, wrong): bool (H, W) each; scored = pixels of non-crowd ground-truth segments,
    wrong = scored pixels whose predicted segment is not their segment's PQ match.
  """
  gt_ids, gt_segments = coco_panoptic.segments_from_semantic_instance(
    ground_truth[..., 0], ground_truth[..., 1], categories, crowd=ground_truth[..., 2] > 0
  )
  pred_ids, pred_segments = coco_panoptic.segments_from_semantic_instance(
    prediction.semantic, prediction.instance, categories
  )
  matches: dict[int, int] = {}
  pq_accumulator.PQAccumulator(categories).image_state(
    gt_ids, gt_segments, pred_ids, pred_segments, matches=matches
  )
  expected = np.full(int(gt_ids.max()) + 1, -1, np.int64)  # -1: no predicted segment is right
  for gt_id, pred_id in matches.items():
    expected[gt_id] = pred_id
  crowd = np.zeros_like(expected, dtype=bool)
  for segment in gt_segments:
    crowd[segment['id']] = bool(segment.get('iscrowd', 0))
  scored = (gt_ids > 0) & ~crowd[gt_ids]
  wrong = scored & (pred_ids != expected[gt_ids])
  return scored, wrong


def auroc(wrong_counts: np.ndarray, right_counts: np.ndarray) -> float:
  """Area under the ROC curve from per-level counts of wrong and right pixels (ties count half);
  NaN when either class has no pixel."""
  wrong_counts = np.asarray(wrong_counts, np.float64)
  right_counts = np.asarray(right_counts, np.float64)
  num_wrong, num_right = wrong_counts.sum(), right_counts.sum()
  if not num_wrong or not num_right:
    return float('nan')
  right_below = np.cumsum(right_counts) - right_counts  # right pixels at lower levels
  pairs = wrong_counts * (right_below + 0.5 * right_counts)
  return float(pairs.sum() / (num_wrong * num_right))


class UncertaintyAUROCEvaluator(base.Evaluator):
  """The AUROC of the uncertainty against wrong pixels (module docstring)."""

  name = 'uncertainty_auroc'

  def __init__(self, categories: Sequence[dict]):
    super().__init__(categories)
    self._wrong = np.zeros(LEVELS, np.int64)
    self._right = np.zeros(LEVELS, np.int64)

  def read(self, example) -> tuple[base.Panoptic, np.ndarray]:
    return example.prediction, example.uncertainty

  def update(self, ground_truth: np.ndarray, prediction: Any, example_id: Any) -> None:
    """`prediction` is (the merged Panoptic, float (H, W) uncertainty in [0, 1])."""
    panoptic, uncertainty = prediction
    if uncertainty is None or uncertainty.shape != ground_truth.shape[:2]:
      raise ValueError(
        f'{example_id}: uncertainty_auroc needs a per-pixel uncertainty of the ground truth '
        f'size {ground_truth.shape[:2]} (config.eval.num_samples >= 2).'
      )
    scored, wrong = wrong_pixels(ground_truth, panoptic, self.categories)
    level = np.round(np.clip(uncertainty, 0.0, 1.0) * (LEVELS - 1)).astype(np.int64)
    self._wrong += np.bincount(level[wrong], minlength=LEVELS)
    self._right += np.bincount(level[scored & ~wrong], minlength=LEVELS)

  def state(self) -> dict:
    return {'wrong': self._wrong.tolist(), 'right': self._right.tolist()}

  def merge(self, states: Sequence[dict]) -> None:
    self._wrong = np.sum([np.asarray(s['wrong'], np.int64) for s in states], axis=0)
    self._right = np.sum([np.asarray(s['right'], np.int64) for s in states], axis=0)

  def results(self) -> base.Results:
    """uncertainty_auroc, and the share of scored pixels that are wrong (wrong_pixel_rate)."""
    value = auroc(self._wrong, self._right)
    total = int(self._wrong.sum() + self._right.sum())
    rate = float(self._wrong.sum() / total) if total else float('nan')
    table = (
      f'uncertainty AUROC {value:.4f} over {total} scored pixels, {100 * rate:.2f}% of them wrong'
    )
    return base.Results(
      scalars={'uncertainty_auroc': value, 'wrong_pixel_rate': rate},
      details={'levels': {'wrong': self._wrong.tolist(), 'right': self._right.tolist()}},
      table=table,
    )
