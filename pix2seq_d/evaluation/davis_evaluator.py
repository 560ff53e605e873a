"""The DAVIS 2017 J&F evaluator plug-in ('davis_jf'): video object segmentation of clips.

Each clip's panoptic maps become DAVIS object maps (`davis_png.object_ids`: the non-stuff
instances; predictions numbered largest first, at most 20, the ground truth in instance-id order
with crowd pixels void), which are matched and scored as the official unsupervised evaluation
does (`davis.evaluate_sequence`). The same scores on files:
`python -m pix2seq_d.evaluation.davis` (davis.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pix2seq_d.evaluation import base, davis
from pix2seq_d.formats import coco_panoptic, davis_png


class DavisJFEvaluator(base.Evaluator):
  """J&F, J and F (Mean, Recall, Decay) per object and over the set, and id consistency: the
  share of ground-truth objects that keep one predicted id from their first to their last frame.
  """

  name = 'davis_jf'

  def __init__(self, categories: Sequence[dict]):
    super().__init__(categories)
    self._is_thing = coco_panoptic.is_thing_table(self.categories)
    self._rows: dict[str, dict] = {}

  def update(self, ground_truth: np.ndarray, prediction: base.Panoptic, example_id: Any) -> None:
    """Adds a clip: (T, H, W, 3) ground truth and (T, H, W) maps; `example_id` is its name."""
    if ground_truth.ndim != 4:
      raise ValueError(
        f'{example_id}: the DAVIS J&F evaluator scores clips (T, H, W) of a video task, got '
        f'ground truth {ground_truth.shape}.'
      )
    pred_ids = davis_png.object_ids(
      *prediction, self._is_thing, by='size', limit=davis.MAX_PROPOSALS
    )
    gt_ids = gt_object_ids(ground_truth, self._is_thing)
    j, f = davis.evaluate_sequence(gt_ids, pred_ids)
    kept, objects = id_consistency(gt_ids, pred_ids)
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
    results = davis.summarize(
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
      + davis.format_table(results)
    )
    return base.Results(
      scalars=scalars, details={'per_sequence': results['per_sequence']}, table=table
    )


def gt_object_ids(orig_label: np.ndarray, is_thing: np.ndarray) -> np.ndarray:
  """The DAVIS annotation of a clip's ground truth: (T, H, W, 3) [semantic, instance, crowd] ->
  (T, H, W) int32 object ids 1..K in instance-id order, crowd pixels void (davis_png.VOID_ID)."""
  ids = davis_png.object_ids(orig_label[..., 0], orig_label[..., 1], is_thing, by='id')
  if ids.max(initial=0) >= davis_png.VOID_ID:
    raise ValueError(f'a clip has {ids.max()} objects; the DAVIS format holds fewer than 255.')
  return np.where(orig_label[..., 2] > 0, davis_png.VOID_ID, ids).astype(np.int32)


def id_consistency(gt_ids: np.ndarray, pred_ids: np.ndarray) -> tuple[int, int]:
  """How many ground-truth objects keep one predicted id from their first to their last frame.

  An object keeps its id when, in every frame where it is visible, the predicted id covering most
  of its pixels is the same non-zero id.

  Args:
    gt_ids: (T, H, W) DAVIS annotation (davis_png.VOID_ID void).
    pred_ids: (T, H, W) predicted object ids.

  Returns:
    (objects that keep one id, objects).
  """
  kept = total = 0
  for k in range(1, int(np.where(gt_ids == davis_png.VOID_ID, 0, gt_ids).max(initial=0)) + 1):
    majority = set()
    for gt, pred in zip(gt_ids, pred_ids, strict=True):
      pixels = pred[gt == k]
      if pixels.size:
        majority.add(int(np.bincount(pixels).argmax()))
    if majority:
      total += 1
      kept += int(len(majority) == 1 and 0 not in majority)
  return kept, total
