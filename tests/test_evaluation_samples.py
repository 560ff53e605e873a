"""The evaluators of several samples: which pixels are wrong (PQ's match), an exact AUROC, and
PQ of the first sample under its own names."""

import numpy as np
import pytest

from pix2seq_d.evaluation import base, samples_evaluators

CATEGORIES = [
  {'id': 1, 'name': 'square', 'isthing': 1},
  {'id': 2, 'name': 'sky', 'isthing': 0},
]


def _ground_truth():
  """4 x 6: sky (class 2) on the left half, two squares (class 1) on the right, one crowd pixel."""
  gt = np.zeros((4, 6, 3), np.int64)
  gt[:, :3] = (2, 1, 0)
  gt[:2, 3:] = (1, 2, 0)
  gt[2:, 3:] = (1, 3, 0)
  gt[3, 5] = (1, 4, 1)  # crowd: not scored
  return gt


def test_wrong_pixels_are_those_outside_their_segments_pq_match():
  gt = _ground_truth()
  semantic, instance = gt[..., 0].copy(), gt[..., 1].copy()
  instance[2, 3:] = 2  # the lower square's top row predicted as part of the upper square
  semantic[:, 0] = 1  # the sky's first column predicted as a square: a wrong class
  instance[:, 0] = 9
  scored, wrong = samples_evaluators.wrong_pixels(gt, base.Panoptic(semantic, instance), CATEGORIES)
  expected_scored = np.ones((4, 6), bool)
  expected_scored[3, 5] = False
  np.testing.assert_array_equal(scored, expected_scored)
  # Sky keeps its match (IoU 8/12 > 0.5): only its first column is wrong. The upper square
  # matches the grown one (IoU 6/9); the lower square's rest (2 pixels, IoU 2/5) matches nothing,
  # so the lower square is wrong everywhere it is scored.
  expected_wrong = np.zeros((4, 6), bool)
  expected_wrong[:, 0] = True
  expected_wrong[2:, 3:] = True
  expected_wrong[3, 5] = False
  np.testing.assert_array_equal(wrong, expected_wrong)


def test_auroc_counts_ties_half_and_equals_the_pairwise_definition():
  assert samples_evaluators.auroc([0, 2], [3, 1]) == pytest.approx((2 * 3 + 2 * 0.5) / 8)
  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  rng = np.random.default_rng(seed)
  wrong = rng.integers(0, 5, samples_evaluators.LEVELS)
  right = rng.integers(0, 5, samples_evaluators.LEVELS)
  u_wrong = np.repeat(np.arange(samples_evaluators.LEVELS), wrong)
  u_right = np.repeat(np.arange(samples_evaluators.LEVELS), right)
  pairwise = (u_wrong[:, None] > u_right[None, :]) + 0.5 * (u_wrong[:, None] == u_right[None, :])
  assert samples_evaluators.auroc(wrong, right) == pytest.approx(pairwise.mean(), abs=1e-12)
  assert np.isnan(samples_evaluators.auroc(np.zeros(4), np.ones(4)))


def test_the_auroc_evaluator_sums_processes_and_pq_single_reads_the_first_sample():
  gt = _ground_truth()
  right = base.Panoptic(gt[..., 0], gt[..., 1])
  wrong_sky = base.Panoptic(np.where(gt[..., 0] == 2, 0, gt[..., 0]), gt[..., 1])
  uncertainty = np.where(gt[..., 0] == 2, 1.0, 0.0)  # certain where right, unsure on the sky
  states = []
  for prediction in (right, wrong_sky):
    evaluator = samples_evaluators.UncertaintyAUROCEvaluator(CATEGORIES)
    evaluator.update(gt, (prediction, uncertainty), 'image')
    states.append(evaluator.state())
  merged = samples_evaluators.UncertaintyAUROCEvaluator(CATEGORIES)
  merged.merge(states)
  results = merged.results()
  # The 12 wrong pixels (the void-predicted sky of the second image) have uncertainty 1; of the
  # 34 right ones 22 (the squares of both) have 0 and 12 (the first image's sky) 1:
  # AUROC = 12 * (22 + 12 / 2) / (12 * 34).
  assert results.scalars['uncertainty_auroc'] == pytest.approx(12 * (22 + 6) / (12 * 34))
  assert results.scalars['wrong_pixel_rate'] == pytest.approx(12 / 46)

  class Example:
    prediction, single = right, wrong_sky

  single = samples_evaluators.PQSingleEvaluator(CATEGORIES)
  single.update(gt, single.read(Example), 'image')
  scalars = single.results().scalars
  assert scalars['PQ_st_single'] == 0.0 and scalars['PQ_th_single'] == 1.0
  assert 'PQ' not in scalars and 'num_images_single' not in scalars
