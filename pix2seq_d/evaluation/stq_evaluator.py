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


def first_frames(clip: np.ndarray, max_frames: int) -> np.ndarray:
  """(T, ...) -> (min(T, max_frames), ...): the frames a protocol of `max_frames` per sequence
  scores (the authors' truncate_or_pad_to_max_frames keeps the first ones); 0 keeps all."""
  return clip[:max_frames] if max_frames else clip


class STQEvaluator(base.Evaluator):
  """STQ, AQ and IoU (SQ) over all sequences, and per sequence.

  Args:
    categories: the dataset's categories.
    max_frames: score only the first this many frames of each sequence (config.eval
      .max_frames_per_sequence, the authors' max_num_frames = 100 on KITTI-STEP); 0 scores all.
    all_frames_too: also score every frame of each sequence (config.eval.score_all_frames_too),
      reported as STQ_all_frames, AQ_all_frames, IoU_all_frames beside the first-frames figures.
      The task passes the whole clip as the example's `all_frames`; one pass of sampling gives
      both protocols, the truncated one from the first frames of the same predictions.
  """

  name = 'stq'

  def __init__(self, categories: Sequence[dict], max_frames: int = 0, all_frames_too: bool = False):
    super().__init__(categories)
    self._things = [k for k, category in enumerate(self.categories) if category['isthing']]
    self.max_frames = int(max_frames)
    self.all_frames_too = bool(all_frames_too)
    self._sequences: dict[str, dict] = {}
    self._all_frames: dict[str, dict] = {}

  @classmethod
  def from_config(cls, categories: Sequence[dict], eval_config) -> STQEvaluator:
    return cls(
      categories,
      max_frames=eval_config.max_frames_per_sequence,
      all_frames_too=eval_config.score_all_frames_too,
    )

  def read(self, example) -> Any:
    """The prediction, with `all_frames_too` paired with the example's whole clip."""
    if self.all_frames_too:
      return example.prediction, example.all_frames
    return example.prediction

  def _score(self, ground_truth: np.ndarray, prediction: base.Panoptic, example_id: Any) -> dict:
    """`stq.SequenceSTQ.summary()` of a (T, H, W, 3) ground truth and (T, H, W) maps."""
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
    return sequence.summary()

  def update(self, ground_truth: np.ndarray, prediction: Any, example_id: Any) -> None:
    """Adds a clip: (T, H, W, 3) ground truth and (T, H, W) maps, scored on their first
    `max_frames`; with `all_frames_too`, `prediction` is (maps, (whole ground truth, whole
    maps)) as `read` gives it. `example_id` is the sequence's name."""
    if self.all_frames_too:
      prediction, whole = prediction
      if whole is None:
        raise ValueError(
          f'{example_id}: config.eval.score_all_frames_too needs the whole clip beside its first '
          "frames (the video task gives it as the example's all_frames)."
        )
      self._all_frames[str(example_id)] = self._score(*whole, example_id)
    prediction = base.Panoptic(*(first_frames(m, self.max_frames) for m in prediction))
    ground_truth = first_frames(np.asarray(ground_truth), self.max_frames)
    self._sequences[str(example_id)] = self._score(ground_truth, prediction, example_id)

  def state(self) -> dict:
    return {'sequences': dict(self._sequences), 'all_frames': dict(self._all_frames)}

  def merge(self, states: Sequence[dict]) -> None:
    self._sequences, self._all_frames = {}, {}
    for state in states:
      self._sequences.update(state['sequences'])
      self._all_frames.update(state['all_frames'])

  def results(self) -> base.Results:
    """Scalars STQ, AQ, IoU, num_sequences (of the first `max_frames` frames of each sequence)
    and with `all_frames_too` STQ_all_frames, AQ_all_frames, IoU_all_frames; details:
    per_sequence {name: {STQ, AQ, IoU, num_frames}} (and per_sequence_all_frames)."""
    results = stq.summarize(self._sequences)
    scalars = {key: results[key] for key in ('STQ', 'AQ', 'IoU')}
    scalars['num_sequences'] = len(self._sequences)
    details = {'per_sequence': results['per_sequence']}
    table = stq.format_table(results)
    if self.max_frames:
      table = f'the first {self.max_frames} frames of each sequence:\n{table}'
    if self.all_frames_too:
      whole = stq.summarize(self._all_frames)
      scalars.update({f'{key}_all_frames': whole[key] for key in ('STQ', 'AQ', 'IoU')})
      details['per_sequence_all_frames'] = whole['per_sequence']
      table += f'\n\nevery frame:\n{stq.format_table(whole)}'
    return base.Results(scalars=scalars, details=details, table=table)
