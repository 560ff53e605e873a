"""Instance ids of labels (data/instance_ids.py): random, shuffled, track and location orders, the
kept segments when there are too many, and one mapping shared by every frame of a clip."""

import numpy as np
import pytest
import tensorflow as tf

from pix2seq_d.data import instance_ids


def _fresh_rng():
  entropy = np.random.SeedSequence().entropy
  return np.random.default_rng(entropy), entropy


def _random_segments(rng, shape, num_segments):
  """A label (H, W, 2) with `num_segments` instance ids scattered over it, some void pixels."""
  instance = rng.integers(0, num_segments + 1, size=shape)
  instance.reshape(-1)[: num_segments + 1] = np.arange(num_segments + 1)  # every id occurs.
  semantic = np.where(instance > 0, rng.integers(1, 6, size=num_segments + 1)[instance], 0)
  return np.stack([semantic, instance], -1).astype(np.int32)


def _assigned_without_drops(label, max_instances, rng, order):
  """`assign_instance_ids` with a fresh seed from `rng`; asserts no segment was dropped."""
  out, dropped = instance_ids.assign_instance_ids(
    tf.constant(label), max_instances, tf.constant(rng.integers(0, 2**31, size=2)), order=order
  )
  assert int(dropped) == 0
  return out.numpy()


def test_instance_ids_are_a_fresh_permutation():
  rng, entropy = _fresh_rng()
  max_instances = 16
  label = _random_segments(rng, (2, 20, 20), num_segments=9)
  mappings = set()
  for _ in range(5):
    out, dropped = instance_ids.assign_instance_ids(
      tf.constant(label), max_instances, tf.constant(rng.integers(0, 2**31, size=2))
    )
    out = out.numpy()
    assert int(dropped) == 0
    np.testing.assert_array_equal(out[..., 0], label[..., 0])
    old_new = zip(label[..., 1].ravel().tolist(), out[..., 1].ravel().tolist(), strict=True)
    pairs = set(old_new)
    # A bijection old -> new on the present ids, 0 -> 0, new ids in 1..max_instances-1.
    assert len({old for old, _ in pairs}) == len(pairs) == len({new for _, new in pairs})
    assert (0, 0) in pairs
    assert all(1 <= new < max_instances for old, new in pairs if old)
    mappings.add(tuple(sorted(pairs)))
  assert len(mappings) > 1, f'entropy {entropy}: the permutation never changed'


def test_too_many_segments_keeps_the_largest():
  rng, entropy = _fresh_rng()
  max_instances, num_segments = 5, 9
  sizes = rng.permutation(np.arange(1, num_segments + 1) * 3)  # distinct sizes.
  instance = np.concatenate([np.full(size, k + 1) for k, size in enumerate(sizes)] + [[0] * 7])
  instance = rng.permutation(instance)
  label = np.stack([instance % 3 + (instance > 0), instance], -1).astype(np.int32)[None]
  largest = set((np.argsort(-sizes)[: max_instances - 1] + 1).tolist())
  for seed in (rng.integers(0, 2**31, size=2), None):
    out, dropped = instance_ids.assign_instance_ids(
      tf.constant(label), max_instances, None if seed is None else tf.constant(seed)
    )
    out = out.numpy()[0]
    assert int(dropped) == num_segments - (max_instances - 1), f'entropy {entropy}'
    kept = np.isin(instance, list(largest))
    assert (out[~kept] == 0).all(), f'entropy {entropy}'
    assert (out[kept, 1] > 0).all() and (out[kept, 0] == label[0][kept, 0]).all()
    assert len(np.unique(out[kept, 1])) == max_instances - 1
    if seed is None:  # kept segments numbered 1..K in their original order.
      order = sorted(largest)
      np.testing.assert_array_equal(out[kept, 1], np.searchsorted(order, instance[kept]) + 1)


def test_instance_ids_without_seed_keep_small_ids():
  label = np.array([[[1, 1], [2, 2], [0, 0], [3, 3]]], np.int32)
  out, dropped = instance_ids.assign_instance_ids(tf.constant(label), 16)
  np.testing.assert_array_equal(out.numpy(), label)
  assert int(dropped) == 0


def test_shuffle_order_permutes_compact_ids_shared_by_all_frames():
  rng, entropy = _fresh_rng()
  label = _random_segments(rng, (3, 20, 20), num_segments=6)  # 3 frames of one window
  num_present = len(np.unique(label[..., 1][label[..., 1] > 0]))
  mappings = set()
  for _ in range(6):
    out = _assigned_without_drops(label, 16, rng, 'shuffle')
    pairs = set(zip(label[..., 1].ravel().tolist(), out[..., 1].ravel().tolist(), strict=True))
    # One bijection for every frame, onto exactly 1..N (compact), 0 -> 0.
    assert len({old for old, _ in pairs}) == len(pairs) == len({new for _, new in pairs})
    assert {new for old, new in pairs if old} == set(range(1, num_present + 1)), entropy
    mappings.add(tuple(sorted(pairs)))
  assert len(mappings) > 1, f'entropy {entropy}: the permutation never changed'
  with pytest.raises(ValueError, match="instance_id_order='sorted'"):
    instance_ids.assign_instance_ids(tf.constant(label), 16, tf.constant([1, 2]), order='sorted')


def test_track_order_keeps_the_gaps_between_track_ids_and_leaves_id_zero_alone():
  """The authors' KITTI-STEP ids (their data/video.py `process_instance_id_map`, order 'shuffle'):
  `tf.gather([0] + shuffle(range(1, max + 1)), instance)`, so a track id i becomes p[i] for a
  permutation p of 1..max(track id), the gaps between track ids included; pixels of id 0 (stuff,
  crowd: a class and no track) keep their class and id 0."""
  rng, entropy = _fresh_rng()
  print('entropy', entropy)
  tracks = np.sort(rng.choice(np.arange(1, 60), size=3, replace=False))  # sparse track ids
  label = np.zeros((2, 12, 12, 2), np.int32)
  label[..., 0] = rng.integers(1, 4)  # a stuff class, id 0, everywhere else
  label[:, :2] = 0  # void
  for k, track in enumerate(tracks):
    label[:, 3 + 3 * k : 5 + 3 * k, 2:8] = (4 + k % 2, track)  # things of two classes, both frames
  seen = set()
  for _ in range(40):
    out = _assigned_without_drops(label, 256, rng, 'track')
    np.testing.assert_array_equal(out[..., 0], label[..., 0])
    untracked = label[..., 1] == 0
    assert (out[..., 1][untracked] == 0).all()
    new = [np.unique(out[..., 1][label[..., 1] == track]) for track in tracks]
    assert all(len(ids) == 1 for ids in new), entropy  # one id per track in every frame
    new = [int(ids[0]) for ids in new]
    assert len(set(new)) == len(tracks) and all(1 <= i <= tracks[-1] for i in new), (entropy, new)
    seen.update(new)
  # Drawn from 1..max(track id), not from 1..3 ('shuffle') nor from 1..255 ('random').
  assert max(seen) > len(tracks), (entropy, tracks, seen)


def test_track_order_falls_back_to_random_ids_when_a_track_id_is_too_large():
  """Track ids above max_instances - 1 do not fit the model's bits (the authors' code would
  overflow them): such a label takes random distinct ids in 1..max_instances-1, as 'random'."""
  rng, entropy = _fresh_rng()
  print('entropy', entropy)
  label = np.zeros((1, 8, 8, 2), np.int32)
  label[0, :4, :, :] = (1, 0)
  label[0, 4:, :4] = (2, 3)
  label[0, 4:, 4:] = (2, int(rng.integers(16, 65536)))
  out, dropped = instance_ids.assign_instance_ids(
    tf.constant(label), 16, tf.constant(rng.integers(0, 2**31, size=2)), order='track'
  )
  out = out.numpy()
  assert int(dropped) == 0
  things = [int(out[0, 4, 0, 1]), int(out[0, 4, 4, 1])]
  assert things[0] != things[1] and all(1 <= i <= 15 for i in things), (entropy, things)
  assert (out[0, :4, :, 1] == 0).all() and (out[..., 0] == label[..., 0]).all()


def _blob_label(boxes, shape):
  """Label (..., H, W, 2) of boxes (y0, y1, x0, x1): instance k + 1, semantic 1, else void."""
  label = np.zeros(shape + (2,), np.int32)
  for k, (y0, y1, x0, x1) in enumerate(boxes):
    label[..., y0:y1, x0:x1, :] = (1, k + 1)
  return label


def test_location_order_gives_each_segment_the_cell_of_its_centroid():
  rng, entropy = _fresh_rng()
  rows, cols = instance_ids.location_grid(15)
  assert (rows, cols) == (3, 5) and instance_ids.location_grid(255) == (15, 17)
  height, width = 30, 50  # cells of 10 x 10 pixels
  # One small square per chosen cell, well inside it: its id is 1 + the cell's raster index.
  cells = rng.choice(rows * cols, size=int(rng.integers(2, 8)), replace=False)
  boxes = [
    (10 * (c // cols) + 3, 10 * (c // cols) + 7, 10 * (c % cols) + 2, 10 * (c % cols) + 8)
    for c in cells
  ]
  label = _blob_label(boxes, (2, height, width))  # two frames share one mapping
  outputs = [
    instance_ids.assign_instance_ids(
      tf.constant(label), 16, tf.constant(rng.integers(0, 2**31, size=2)), order='location'
    )[0].numpy()
    for _ in range(3)
  ]
  for out in outputs[1:]:
    np.testing.assert_array_equal(out, outputs[0], err_msg=f'entropy {entropy}: seed changed ids')
  for k, c in enumerate(cells):
    y0, _, x0, _ = boxes[k]
    assert (outputs[0][:, y0, x0, 1] == c + 1).all(), (entropy, k, c)
  # Mirrored left-right, each square moves to the mirrored cell.
  mirrored = instance_ids.assign_instance_ids(
    tf.constant(label[:, :, ::-1]), 16, tf.constant([0, 0]), order='location'
  )[0].numpy()
  for k, c in enumerate(cells):
    y0, _, x0, _ = boxes[k]
    assert mirrored[0, y0, width - x0 - 1, 1] == 1 + (c // cols) * cols + cols - 1 - c % cols


def test_location_order_gives_a_crowded_cell_s_smaller_segments_the_nearest_free_cells():
  rng, entropy = _fresh_rng()
  # Three segments centred in the middle cell (1, 2) of the 3 x 5 grid, of distinct sizes; the
  # largest keeps it, the others take free cells next to it (distance 1 cell), all distinct.
  sizes = rng.permutation([6, 4, 2])
  boxes = [(15 - s // 2, 15 + s // 2, 25 - s // 2, 25 + s // 2) for s in sizes]
  boxes = [boxes[k] for k in np.argsort(-sizes)]  # paint the largest first, the others on top
  label = _blob_label(boxes, (30, 50))
  out = instance_ids.assign_instance_ids(tf.constant(label), 16, tf.constant([3, 4]), 'location')[0]
  out = out.numpy()
  ids = [int(np.bincount(out[..., 1][label[..., 1] == k + 1]).argmax()) for k in range(3)]
  assert ids[0] == 1 * 5 + 2 + 1, entropy  # the largest: its own cell
  assert len(set(ids)) == 3, (entropy, ids)
  for i in ids[1:]:
    row, col = divmod(i - 1, 5)
    assert abs(row - 1) + abs(col - 2) == 1, (entropy, ids)  # an adjacent cell
  # More segments than cells and ids: the 15 largest of 17 get ids 1..15, the rest void.
  boxes = [(2 * k, 2 * k + 1, 0, 17 - k) for k in range(17)]
  out, dropped = instance_ids.assign_instance_ids(
    tf.constant(_blob_label(boxes, (40, 40))), 16, tf.constant([0, 1]), 'location'
  )
  assert int(dropped) == 2
  assert sorted(set(out.numpy()[..., 1].ravel().tolist()) - {0}) == list(range(1, 16))
