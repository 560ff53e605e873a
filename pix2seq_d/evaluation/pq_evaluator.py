"""The PQ evaluator plug-in ('pq'): panoptic quality, equal to panopticapi's `pq_compute`.

Each example's ground truth and prediction become COCO panoptic segments
(`coco_panoptic.segments_from_semantic_instance`, crowd pixels as iscrowd segments) and
`pq_accumulator.PQAccumulator` counts them. A clip is scored frame by frame, each frame as an image.
The same counts on files: `python -m pix2seq_d.evaluation.pq` (pq.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pix2seq_d.evaluation import base, pq_accumulator
from pix2seq_d.formats import coco_panoptic


class PQEvaluator(base.Evaluator):
  """PQ, SQ, RQ over all, thing and stuff categories, and per category."""

  name = 'pq'

  def __init__(self, categories: Sequence[dict]):
    super().__init__(categories)
    self._accumulator = pq_accumulator.PQAccumulator(self.categories)
    self._num_images = 0

  def update(self, ground_truth: np.ndarray, prediction: base.Panoptic, example_id: Any) -> None:
    """Adds an image ((H, W) maps), or each frame of a clip ((T, H, W) maps)."""
    if ground_truth.ndim == 4:
      for frame, (gt, semantic, instance) in enumerate(zip(ground_truth, *prediction, strict=True)):
        self.update(gt, base.Panoptic(semantic, instance), f'{example_id} frame {frame}')
      return
    gt_ids, gt_segments = coco_panoptic.segments_from_semantic_instance(
      ground_truth[..., 0], ground_truth[..., 1], self.categories, crowd=ground_truth[..., 2] > 0
    )
    pred_ids, pred_segments = coco_panoptic.segments_from_semantic_instance(
      prediction.semantic, prediction.instance, self.categories
    )
    self._accumulator.update(gt_ids, gt_segments, pred_ids, pred_segments, image_id=example_id)
    self._num_images += 1

  def state(self) -> dict:
    return {'counts': self._accumulator.state().tolist(), 'num_images': self._num_images}

  def merge(self, states: Sequence[dict]) -> None:
    self._accumulator = pq_accumulator.PQAccumulator(self.categories)
    for state in states:
      self._accumulator.merge_state(np.asarray(state['counts'], np.float64))
    self._num_images = sum(int(state['num_images']) for state in states)

  def results(self) -> base.Results:
    """Scalars PQ, SQ, RQ, num_categories (all), the same with _th (things) and _st (stuff),
    and num_images; details: per_class {category id: {pq, sq, rq, tp, fp, fn}}."""
    results = self._accumulator.results()
    scalars = {}
    for group, suffix in (('All', ''), ('Things', '_th'), ('Stuff', '_st')):
      for metric in ('pq', 'sq', 'rq'):
        scalars[f'{metric.upper()}{suffix}'] = float(results[group][metric])
      scalars[f'num_categories{suffix}'] = int(results[group]['n'])
    scalars['num_images'] = self._num_images
    per_class = {str(k): v for k, v in results['per_class'].items()}
    table = pq_accumulator.format_table(results, self.categories)
    return base.Results(scalars=scalars, details={'per_class': per_class}, table=table)
