"""The degraded ground truth that refinement is measured on: seeded, worse with severity, and a
prediction file that the evaluation loop reads through config.eval.refine_from."""

import numpy as np

from pix2seq_d.evaluation import base, pq_evaluator
from pix2seq_d.tools import degrade_masks

CATEGORIES = [
  {'id': 1, 'name': 'circle', 'isthing': 1},
  {'id': 2, 'name': 'sky', 'isthing': 0},
]
IS_THING = np.array([False, True, False])


def _scene(rng):
  semantic = np.full((40, 48), 2, np.int64)
  instance = np.ones((40, 48), np.int64)
  for k in range(5):
    top, left = rng.integers(0, 32), rng.integers(0, 40)
    semantic[top : top + 8, left : left + 8] = 1
    instance[top : top + 8, left : left + 8] = 2 + k
  return semantic, instance


def test_faults_are_seeded_and_grow_with_severity():
  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  rng = np.random.default_rng(seed)
  scores = {}
  for severity in (1, 3):
    evaluator = pq_evaluator.PQEvaluator(CATEGORIES)
    for image in range(30):
      semantic, instance = _scene(rng)
      first = degrade_masks.degrade(semantic, instance, IS_THING, severity, seed + image)
      again = degrade_masks.degrade(semantic, instance, IS_THING, severity, seed + image)
      np.testing.assert_array_equal(first[1], again[1])
      assert set(np.unique(first[0])) <= {0, 1, 2}
      ground_truth = np.stack([semantic, instance, np.zeros_like(semantic)], axis=-1)
      evaluator.update(ground_truth, base.Panoptic(*first), image)
    scores[severity] = evaluator.results().scalars['PQ']
  assert 1.0 > scores[1] > scores[3], scores
