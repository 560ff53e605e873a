"""Merging K samples of one image: majority per pixel, uncertainty where samples disagree, and
nothing depends on the arbitrary instance ids of a sample."""

import numpy as np
import pytest

from pix2seq_d.tasks import samples

NUM_CLASSES, MAX_INSTANCES, MATCH_IOU = 6, 16, 0.5


def _scene(rng, height=24, width=32):
  """(H, W, 2) ids: a stuff background split in two classes and 3 random rectangles (things),
  none in the top-left 6 x 6 corner, where the tests put their disagreements."""
  sample = np.zeros((height, width, 2), np.int64)
  sample[: height // 2, :, :] = (1, 1)
  sample[height // 2 :, :, :] = (2, 2)
  for k in range(3):
    top, left = rng.integers(6, height - 6), rng.integers(6, width - 6)
    h, w = rng.integers(4, 8), rng.integers(4, 8)
    sample[top : top + h, left : left + w] = (3 + k % 3, 3 + k)
  return sample


def _jitter(rng, sample):
  """The same scene with a shifted boundary: a sample that disagrees only near edges."""
  shift = rng.integers(-1, 2, size=2)
  return np.roll(sample, tuple(shift), axis=(0, 1))


def _permute_ids(rng, sample):
  """The same segmentation with other instance ids (a fresh permutation of 1..MAX - 1)."""
  table = np.concatenate([[0], rng.permutation(np.arange(1, MAX_INSTANCES))])
  return np.stack([sample[..., 0], table[sample[..., 1]]], axis=-1)


def _canonical(merged):
  """Instance ids renumbered by first appearance: equal maps up to a relabelling compare equal."""
  instance = merged[..., 1].ravel()
  ids, first = np.unique(instance, return_index=True)
  table = np.zeros(instance.max() + 1, np.int64)
  for rank, index in enumerate(np.argsort(first)):
    table[ids[index]] = rank if ids[index] else 0
  return np.stack([merged[..., 0], table[merged[..., 1]]], axis=-1)


@pytest.fixture
def rng():
  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  return np.random.default_rng(seed)


def test_identical_samples_merge_to_themselves_with_no_uncertainty(rng):
  scene = _scene(rng)
  stack = np.stack([_permute_ids(rng, scene) for _ in range(4)])
  merged, uncertainty, _, _ = samples.merge_samples(stack, NUM_CLASSES, MAX_INSTANCES, MATCH_IOU)
  np.testing.assert_array_equal(_canonical(merged), _canonical(scene))
  assert uncertainty.shape == scene.shape[:2] and not uncertainty.any()


def test_the_majority_wins_and_uncertainty_is_the_share_that_disagrees(rng):
  scene = _scene(rng)
  other = scene.copy()
  other[:4, :4] = (5, 9)  # one sample of three sees an extra object in the corner
  stack = np.stack([_permute_ids(rng, s) for s in (other, scene, scene)])
  merged, uncertainty, _, _ = samples.merge_samples(stack, NUM_CLASSES, MAX_INSTANCES, MATCH_IOU)
  np.testing.assert_array_equal(_canonical(merged), _canonical(scene))
  # 2 of 3 agree in the corner: (1 - 2/3) / (1 - 1/3) = 0.5; all agree elsewhere.
  np.testing.assert_allclose(uncertainty[:4, :4], 0.5)
  assert not uncertainty[4:].any() and not uncertainty[:, 4:].any()


def test_no_two_samples_agree_gives_uncertainty_one():
  stack = np.zeros((3, 4, 4, 2), np.int64)
  for k in range(3):
    stack[k] = (k + 1, k + 1)  # three samples, three classes over the whole image
  _, uncertainty, _, _ = samples.merge_samples(stack, NUM_CLASSES, MAX_INSTANCES, MATCH_IOU)
  np.testing.assert_allclose(uncertainty, 1.0)


@pytest.mark.parametrize('num_samples', [2, 5, 8])
def test_merge_and_uncertainty_do_not_depend_on_the_instance_ids(rng, num_samples):
  scene = _scene(rng)
  stack = np.stack([_jitter(rng, scene) for _ in range(num_samples)])
  stack[rng.integers(num_samples), :6, :6] = (4, 11)  # a disagreement of one sample
  merged, uncertainty, _, _ = samples.merge_samples(stack, NUM_CLASSES, MAX_INSTANCES, MATCH_IOU)
  assert 0.0 <= uncertainty.min() and uncertainty.max() <= 1.0 and uncertainty.any()
  for _ in range(3):
    permuted = np.stack([_permute_ids(rng, s) for s in stack])
    merged_p, uncertainty_p, _, _ = samples.merge_samples(
      permuted, NUM_CLASSES, MAX_INSTANCES, MATCH_IOU
    )
    np.testing.assert_array_equal(uncertainty_p, uncertainty)
    np.testing.assert_array_equal(_canonical(merged_p), _canonical(merged))


def test_uncertainty_at_the_original_size_rises_towards_cell_boundaries(rng):
  """K samples that agree everywhere, with one vertical boundary on the mask grid: at 4x the
  mask size the uncertainty is 0 two pixels away from the boundary, positive on the two pixels
  on either side of it and symmetric; inside cells away from boundaries it is the mask-size
  figure, and it does not depend on the instance ids."""
  num, size, scale = int(rng.integers(2, 9)), 8, 4
  border = int(rng.integers(2, size - 2))
  scene = np.zeros((size, size, 2), np.int64)
  scene[:, :border] = (1, 1)
  scene[:, border:] = (3, 4)
  stack = np.stack([_permute_ids(rng, scene) for _ in range(num)])
  merge = samples.merge_samples(stack, NUM_CLASSES, MAX_INSTANCES, MATCH_IOU)
  full = (size * scale, size * scale)
  uncertainty = samples.uncertainty_at(merge, full, full, full)
  assert uncertainty.shape == full
  row = uncertainty[int(rng.integers(full[0]))]
  edge = border * scale  # the first pixel right of the boundary
  assert (row[: edge - 2] == 0).all() and (row[edge + 2 :] == 0).all()
  assert (row[edge - 2 : edge + 2] > 0).all()
  np.testing.assert_allclose(row[edge - 2 : edge], row[edge : edge + 2][::-1])
  assert row[edge - 1] > row[edge - 2]  # closer to the boundary: more uncertain
  for _ in range(2):
    permuted = np.stack([_permute_ids(rng, s) for s in stack])
    again = samples.uncertainty_at(
      samples.merge_samples(permuted, NUM_CLASSES, MAX_INSTANCES, MATCH_IOU), full, full, full
    )
    np.testing.assert_array_equal(again, uncertainty)


def test_uncertainty_at_keeps_the_disagreement_of_the_samples(rng):
  """One sample of three sees an object in a 4 x 4 corner of a 16 x 16 mask: at 2x, the corner's
  inside keeps the mask-size 0.5, far from it the uncertainty is 0."""
  scene = _scene(rng, 16, 16)
  scene[:6, :6] = (1, 1)
  other = scene.copy()
  other[:4, :4] = (5, 9)
  stack = np.stack([_permute_ids(rng, s) for s in (other, scene, scene)])
  merge = samples.merge_samples(stack, NUM_CLASSES, MAX_INSTANCES, MATCH_IOU)
  uncertainty = samples.uncertainty_at(merge, (32, 32), (32, 32), (32, 32))
  np.testing.assert_allclose(uncertainty[:6, :6], 0.5)
  np.testing.assert_allclose(uncertainty[:6, 12:], 0.0)
