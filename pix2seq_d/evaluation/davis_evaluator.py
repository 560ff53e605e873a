"""The DAVIS 2017 J&F evaluator plug-in ('davis_jf'): video object segmentation of clips.

Each clip's panoptic maps become DAVIS object maps (`davis_metrics.object_ids`: the non-stuff
instances; predictions numbered largest first, at most 20, the ground truth in instance-id order
with crowd pixels void), which are matched and scored as the official unsupervised evaluation
does (`davis_metrics.evaluate_sequence`). The same scores on files:
`python -m pix2seq_d.evaluation.davis` (davis.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pix2seq_d.evaluation import base, coco_format, davis_metrics


class DavisJFEvaluator(base.Evaluator):
  """J&F, J and F (Mean, Recall, Decay) per object and over the set, and id consistency: the
  share of ground-truth objects that keep one predicted id from their first to their last frame.
  """

  name = 'davis_jf'

  def __init__(self, categories: Sequence[dict]):
    super().__init__(categories)
    self._is_thing = coco_format.is_thing_table(self.categories)
    self._rows: dict[str, dict] = {}

  def update(self, ground_truth: np.ndarray, prediction: base.Panoptic, example_id: Any) -> None:
    """Adds a clip: (T, H, W, 3) ground truth and (T, H, W) maps; `example_id` is its name."""
    if ground_truth.ndim != 4:
      raise ValueError(
        f'{example_id}: the DAVIS J&F evaluator scores clips (T, H, W) of a video task, got '
        f'ground truth {ground_truth.shape}.'
      )
    pred_ids = davis_metrics.object_ids(
      *prediction, self._is_thing, by='size', limit=davis_metrics.MAX_PROPOSALS
    )
    gt_ids = davis_metrics.gt_object_ids(ground_truth, self._is_thing)
    j, f = davis_metrics.evaluate_sequence(gt_ids, pred_ids)
    kept, objects = davis_metrics.id_consistency(gt_ids, pred_ids)
    self._rows[str(example_id)] = {
      'J': j.tolist(),
      'F': f.tolist(),
      'kept': kept,
      'objects': objects,
    }

  def state(self) -> dict:
    return dict(self._rows)

  def merge(self, states: Sequence[dict]) -> None:
    self._rows = {}
    for state in states:
      self._rows.update(state)

  def results(self) -> base.Results:
    """Scalars J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay, id_consistency,
    num_objects, num_videos; details: per_sequence {'<clip>_<k>': {J-Mean, F-Mean}}."""
    rows = self._rows
    results = davis_metrics.summarize(
      {name: (np.asarray(r['J']), np.asarray(r['F'])) for name, r in sorted(rows.items())}
    )
    kept = sum(r['kept'] for r in rows.values())
    objects = sum(r['objects'] for r in rows.values())
    scalars = {k: v for k, v in results.items() if k != 'per_sequence'}
    scalars.update(
      id_consistency=kept / objects if objects else 0.0, num_objects=objects, num_videos=len(rows)
    )
    table = (
      f'{kept} of {objects} objects keep one id from their first to their last frame.\n'
      + davis_metrics.format_table(results)
    )
    return base.Results(
      scalars=scalars, details={'per_sequence': results['per_sequence']}, table=table
    )
