"""Evaluators of masks the model edits: refined predictions and completed partial masks.

'pq_input'           PQ of the predictions a refinement pass started from (config.eval
                     refine_from), reported as PQ_input, ..., beside the refined PQ of 'pq'.
'pq_rest'            PQ of a completion pass over the segments that were not given: the given
                     pixels are void in the ground truth, and the given segments are ignored in
                     the prediction (their pixels, and the model's continuation of them under
                     their ids, are void), so only what the model had to find counts. Reported
                     as PQ_rest, ...
'pq_rest_unaided'    the same figure for a plain sample of the same images from the same noise
                     (its ids mean nothing to the given ones: only the given pixels are void), so
                     that every completion pass carries its own comparison.
'given_pixels_kept'  the share of given pixels whose output class and segment id are the given
                     ones (1.0 when the given segments come out exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pix2seq_d.evaluation import base, pq_evaluator


def renamed(results: base.Results, suffix: str) -> base.Results:
  """PQ results of another prediction of the examples: each scalar name with `suffix` appended
  (PQ -> PQ_input), the counts (num_*) dropped as the 'pq' evaluator of the pass reports them."""
  scalars = {
    f'{name}{suffix}': value
    for name, value in results.scalars.items()
    if not name.startswith('num_')
  }
  return base.Results(scalars=scalars, details=results.details, table=results.table)


class _RenamedPQ(pq_evaluator.PQEvaluator):
  """PQ of another prediction of the example (`read`), its names ending in `suffix`."""

  suffix: str

  def results(self) -> base.Results:
    return renamed(super().results(), self.suffix)


class PQInputEvaluator(_RenamedPQ):
  """PQ of the input predictions of a refinement pass (`Example.refined_from`)."""

  name = 'pq_input'
  suffix = '_input'

  def read(self, example) -> base.Panoptic:
    return example.refined_from


def without_given(
  ground_truth: np.ndarray, prediction: base.Panoptic, given: base.Panoptic, given_ids: bool
) -> tuple[np.ndarray, base.Panoptic]:
  """Ground truth (H, W, 3) with the given pixels void, and the prediction with them void too
  (with `given_ids`, also every other pixel of a given segment's id)."""
  known = given.instance > 0
  ignored = known
  if given_ids:
    ignored = known | np.isin(prediction.instance, np.unique(given.instance[known]))
  ground_truth = np.where(known[..., None], 0, ground_truth)
  return ground_truth, base.Panoptic(
    np.where(ignored, 0, prediction.semantic), np.where(ignored, 0, prediction.instance)
  )


class PQRestEvaluator(_RenamedPQ):
  """PQ over the segments not given, of the completed prediction (`Example.prediction`)."""

  name = 'pq_rest'
  suffix = '_rest'
  given_ids = True  # the completed prediction carries the given ids

  def read(self, example) -> tuple[base.Panoptic, base.Panoptic]:
    return example.prediction, example.given

  def update(self, ground_truth: np.ndarray, prediction: Any, example_id: Any) -> None:
    """`prediction` is (the prediction, the given partial mask), both (H, W) maps."""
    super().update(*without_given(ground_truth, *prediction, self.given_ids), example_id)


class PQRestUnaidedEvaluator(PQRestEvaluator):
  """The same figure for a plain sample of the same image (`Example.unaided`)."""

  name = 'pq_rest_unaided'
  suffix = '_rest_unaided'
  given_ids = False

  def read(self, example) -> tuple[base.Panoptic, base.Panoptic]:
    return example.unaided, example.given


class GivenPixelsKeptEvaluator(base.Evaluator):
  """The share of given pixels that keep their class and id in the completed prediction."""

  name = 'given_pixels_kept'

  def __init__(self, categories: Sequence[dict]):
    super().__init__(categories)
    self._kept = self._given = 0

  def read(self, example) -> tuple[base.Panoptic, base.Panoptic]:
    return example.prediction, example.given

  def update(self, ground_truth: np.ndarray, prediction: Any, example_id: Any) -> None:
    output, given = prediction
    known = given.instance > 0
    same = (output.semantic == given.semantic) & (output.instance == given.instance)
    self._kept += int((same & known).sum())
    self._given += int(known.sum())

  def state(self) -> dict:
    return {'kept': self._kept, 'given': self._given}

  def merge(self, states: Sequence[dict]) -> None:
    self._kept = sum(int(s['kept']) for s in states)
    self._given = sum(int(s['given']) for s in states)

  def results(self) -> base.Results:
    value = self._kept / self._given if self._given else float('nan')
    return base.Results(
      scalars={'given_pixels_kept': value, 'given_pixels': self._given},
      details={},
      table=f'given pixels kept: {self._kept} of {self._given}',
    )
