"""Post-processing from mask-size ids to original-size panoptic maps."""

import numpy as np

from pix2seq_d.evaluation import coco_format
from pix2seq_d.tasks import postprocess


def test_resize_nearest_integer_factor_repeats():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 9, (5, 7))
  up = postprocess.resize_nearest(x, (10, 21))
  np.testing.assert_array_equal(up, np.repeat(np.repeat(x, 2, 0), 3, 1))
  np.testing.assert_array_equal(postprocess.resize_nearest(up, (5, 7)), x)


def test_majority_vote_min_pixels_and_void():
  semantic = np.array([[1, 1, 2, 3], [1, 2, 2, 3], [0, 0, 0, 4]])
  instance = np.array([[1, 1, 2, 3], [1, 1, 2, 3], [5, 5, 0, 4]])
  sem, inst = postprocess.majority_vote(semantic, instance, 6, 8, min_pixels=2)
  # id 1: classes (1, 1, 1, 2) -> 1; id 2: (2, 2) -> 2; id 3: (3, 3) -> 3;
  # id 4 has 1 pixel -> void; id 5 is mostly void -> void; instance 0 -> void.
  np.testing.assert_array_equal(sem, [[1, 1, 2, 3], [1, 1, 2, 3], [0, 0, 0, 0]])
  np.testing.assert_array_equal(inst, [[1, 1, 2, 3], [1, 1, 2, 3], [0, 0, 0, 0]])


def test_postprocess_crops_padding_and_resizes_to_original():
  rng = np.random.default_rng(1)
  orig = (30, 45)
  # The image was resized by 2/3 to (20, 30) and padded to (32, 32); the mask is (16, 16).
  content = rng.integers(1, 4, (10, 15))
  pred = np.zeros((16, 16, 2), np.int64)
  pred[:10, :15, 0] = content
  pred[:10, :15, 1] = content + 10
  pred[10:, :, :] = (5, 1)  # garbage in the padding must not leak into the output.
  sem, inst = postprocess.postprocess(
    pred, (32, 32), (20, 30), orig, num_classes=6, max_instances=16, min_pixels=0
  )
  assert sem.shape == orig and inst.shape == orig
  expected = postprocess.resize_nearest(content, orig)
  np.testing.assert_array_equal(sem, expected)
  np.testing.assert_array_equal(inst, expected + 10)
  assert 5 not in sem


def test_postprocess_merges_each_stuff_class_into_one_segment():
  semantic = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
  instance = np.array([[3, 4, 5, 6], [3, 4, 5, 6]])
  is_thing = coco_format.is_thing_table([{'isthing': 1}, {'isthing': 0}])
  sem, inst = postprocess.postprocess(
    np.stack([semantic, instance], -1),
    (2, 4),
    (2, 4),
    (2, 4),
    num_classes=3,
    max_instances=8,
    min_pixels=0,
    is_thing=is_thing,
  )
  np.testing.assert_array_equal(sem, semantic)
  np.testing.assert_array_equal(inst, [[3, 4, 5, 5], [3, 4, 5, 5]])  # things stay apart.
