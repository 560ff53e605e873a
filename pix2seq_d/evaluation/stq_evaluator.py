"""The STQ evaluator plug-in ('stq'): segmentation and tracking quality of clips (stq.py).

Our maps hold semantic = category index + 1 (0 void) and instance ids, the ground truth also a
crowd flag; STQ's classes are the category indices (void apart), its thing classes the
categories with `isthing`, and a crowd pixel is a ground-truth thing pixel whose instance is 0.
Each clip is one sequence; each process scores its own clips and the per-sequence statistics are
united over processes. The same figures on files: `python -m pix2seq_d.evaluation.stq`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pix2seq_d.evaluation import base, stq

_VOID = -1  # the class of void pixels once semantic s becomes category index s - 1


def stq_maps(semantic: np.ndarray, instance: np.ndarray, crowd: np.ndarray | None = None):
  """(class, instance) maps in STQ's terms: class = semantic - 1 (void -1); crowd pixels get
  instance 0."""
  classes = np.asarray(semantic).astype(np.int64) - 1
  instance = np.asarray(instance).astype(np.int64)
  if crowd is not None:
    instance = np.where(np.asarray(crowd) > 0, 0, instance)
  return classes, instance


class STQEvaluator(base.Evaluator):
  """STQ, AQ and IoU (SQ) over all sequences, and per sequence."""

  name = 'stq'

  def __init__(self, categories: Sequence[dict]):
    super().__init__(categories)
    self._things = [k for k, category in enumerate(self.categories) if category['isthing']]
    self._sequences: dict[str, dict] = {}

  def update(self, ground_truth: np.ndarray, prediction: base.Panoptic, example_id: Any) -> None:
    """Adds a clip: (T, H, W, 3) ground truth and (T, H, W) maps; `example_id` is its name."""
    if ground_truth.ndim != 4:
      raise ValueError(
        f'{example_id}: the STQ evaluator scores clips (T, H, W) of a video task, got ground '
        f'truth {ground_truth.shape}.'
      )
    sequence = stq.SequenceSTQ(len(self.categories), self._things, void=_VOID)
    gt_class, gt_instance = stq_maps(*np.moveaxis(ground_truth, -1, 0))
    pred_class, pred_instance = stq_maps(*prediction)
    for t in range(len(ground_truth)):
      try:
        sequence.add_frame(gt_class[t], gt_instance[t], pred_class[t], pred_instance[t])
      except ValueError as e:
        raise ValueError(f'{example_id} frame {t}: {e}') from None
    self._sequences[str(example_id)] = sequence.summary()

  def state(self) -> dict:
    return dict(self._sequences)

  def merge(self, states: Sequence[dict]) -> None:
    self._sequences = {}
    for state in states:
      self._sequences.update(state)

  def results(self) -> base.Results:
    """Scalars STQ, AQ, IoU, num_sequences; details: per_sequence {name: {STQ, AQ, IoU,
    num_frames}}."""
    results = stq.summarize(self._sequences)
    scalars = {key: results[key] for key in ('STQ', 'AQ', 'IoU')}
    scalars['num_sequences'] = len(self._sequences)
    return base.Results(
      scalars=scalars,
      details={'per_sequence': results['per_sequence']},
      table=stq.format_table(results),
    )
