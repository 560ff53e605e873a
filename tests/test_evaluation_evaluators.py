"""The evaluator plug-ins (evaluation/registry.py): each equals its metric computed directly, and
statistics gathered from several processes (as JSON) equal one evaluator that saw everything."""

import json

import numpy as np
import pytest

from pix2seq_d.evaluation import base, davis, davis_evaluator, pq_accumulator, registry
from pix2seq_d.formats import coco_panoptic, davis_png

CATEGORIES = [
  {'id': 1, 'name': 'circle', 'isthing': 1},
  {'id': 2, 'name': 'square', 'isthing': 1},
  {'id': 7, 'name': 'sky', 'isthing': 0},
]


def _rng():
  seed = int(np.random.SeedSequence().entropy % 2**32)
  print('seed', seed)
  return np.random.default_rng(seed)


def _panoptic(rng, shape):
  """(semantic, instance) int maps of random 4x4 blocks: classes 0..3, instance ids 0..5."""
  *lead, height, width = shape
  coarse = (*lead, -(-height // 4), -(-width // 4))
  blocks = lambda x: x.repeat(4, axis=-2).repeat(4, axis=-1)[..., :height, :width]
  semantic = blocks(rng.integers(0, len(CATEGORIES) + 1, coarse))
  instance = blocks(rng.integers(0, 6, coarse))
  return semantic, instance


def _ground_truth(rng, shape):
  semantic, instance = _panoptic(rng, shape)
  crowd = (rng.uniform(size=shape) < 0.05).astype(np.int64)
  return np.stack([semantic, instance, crowd], axis=-1)


def _gather(evaluators):
  """What the loop does across processes: every state through JSON, merged into a fresh one."""
  states = [json.loads(json.dumps(e.state())) for e in evaluators]
  merged = registry.make_evaluators([evaluators[0].name], CATEGORIES)[0]
  merged.merge(states)
  return merged


def test_pq_evaluator_equals_the_accumulator_and_merges_exactly():
  rng = _rng()
  images = [
    (_ground_truth(rng, (24, 32)), base.Panoptic(*_panoptic(rng, (24, 32)))) for _ in range(9)
  ]
  accumulator = pq_accumulator.PQAccumulator(CATEGORIES)
  for k, (gt, pred) in enumerate(images):
    gt_ids, gt_segments = coco_panoptic.segments_from_semantic_instance(
      gt[..., 0], gt[..., 1], CATEGORIES, crowd=gt[..., 2] > 0
    )
    pred_ids, pred_segments = coco_panoptic.segments_from_semantic_instance(*pred, CATEGORIES)
    accumulator.update(gt_ids, gt_segments, pred_ids, pred_segments, image_id=k)
  expected = accumulator.results()

  (whole,) = registry.make_evaluators(['pq'], CATEGORIES)
  shards = registry.make_evaluators(['pq'], CATEGORIES) + registry.make_evaluators(
    ['pq'], CATEGORIES
  )
  for k, (gt, pred) in enumerate(images):
    whole.update(gt, pred, k)
    shards[k % 2].update(gt, pred, k)
  for results in (whole.results(), _gather(shards).results()):
    assert results.scalars['PQ'] == expected['All']['pq']
    assert results.scalars['PQ_th'] == expected['Things']['pq']
    assert results.scalars['RQ_st'] == expected['Stuff']['rq']
    assert results.scalars['num_images'] == 9
    assert results.details['per_class'] == {str(k): v for k, v in expected['per_class'].items()}
  assert 'PQ' in whole.results().table


def test_pq_evaluator_scores_a_clip_frame_by_frame():
  rng = _rng()
  gt = _ground_truth(rng, (3, 16, 20))
  pred = base.Panoptic(*_panoptic(rng, (3, 16, 20)))
  (clip,) = registry.make_evaluators(['pq'], CATEGORIES)
  clip.update(gt, pred, 'clip')
  (frames,) = registry.make_evaluators(['pq'], CATEGORIES)
  for t in range(3):
    frames.update(gt[t], base.Panoptic(pred.semantic[t], pred.instance[t]), f'clip {t}')
  assert clip.results().scalars == frames.results().scalars
  assert clip.results().scalars['num_images'] == 3


def test_davis_evaluator_equals_the_davis_definitions_and_merges_exactly():
  rng = _rng()
  is_thing = coco_panoptic.is_thing_table(CATEGORIES)
  clips = {}
  for name in ('a', 'b', 'c'):
    gt = _ground_truth(rng, (4, 16, 20))
    gt[..., 0] = np.where(gt[..., 1] > 0, 1, gt[..., 0])  # circles: every instance an object
    clips[name] = (gt, base.Panoptic(*_panoptic(rng, (4, 16, 20))))
  per_sequence = {}
  for name, (gt, pred) in clips.items():
    gt_ids = davis_evaluator.gt_object_ids(gt, is_thing)
    pred_ids = davis_png.object_ids(*pred, is_thing, by='size', limit=davis.MAX_PROPOSALS)
    per_sequence[name] = davis.evaluate_sequence(gt_ids, pred_ids)
  expected = davis.summarize(per_sequence)

  (whole,) = registry.make_evaluators(['davis_jf'], CATEGORIES)
  shards = [registry.make_evaluators(['davis_jf'], CATEGORIES)[0] for _ in range(2)]
  for k, (name, (gt, pred)) in enumerate(clips.items()):
    whole.update(gt, pred, name)
    shards[k % 2].update(gt, pred, name)
  for results in (whole.results(), _gather(shards).results()):
    for key in ('J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay'):
      assert results.scalars[key] == expected[key], key
    assert results.scalars['num_videos'] == 3
    assert results.details['per_sequence'] == expected['per_sequence']
  with pytest.raises(ValueError, match='scores clips'):
    whole.update(clips['a'][0][0], base.Panoptic(*_panoptic(rng, (16, 20))), 'an image')


def test_unknown_evaluator_is_named():
  with pytest.raises(ValueError, match="no evaluator is named 'vpq'; the evaluators are 'pq', "):
    registry.make_evaluators(['pq', 'vpq'], CATEGORIES)
