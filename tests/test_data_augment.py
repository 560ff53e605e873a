"""Tests of pix2seq_d.data.augment: alignment of image and label, padding, colour, instance ids."""

import numpy as np
import pytest
import tensorflow as tf

from pix2seq_d.data import augment

IMAGE_SIZE = (64, 64)
MASK_SIZE = (32, 32)
PAD_VALUE = 0.3
NUM_COLORS = 12


def _fresh_rng():
  entropy = np.random.SeedSequence().entropy
  return np.random.default_rng(entropy), entropy


def _block_scene(rng, height, width, block=(12, 11)):
  """A palette image of constant blocks and its label = palette index (the quantised colour)."""
  palette = rng.choice(256, size=(NUM_COLORS, 3), replace=True).astype(np.uint8)
  grid = rng.integers(0, NUM_COLORS, size=(-(-height // block[0]), -(-width // block[1])))
  index = np.kron(grid, np.ones(block, int))[:height, :width]
  return palette, palette[index], index + 1  # label 0 is reserved for padding.


def _mask_inside(unpadded):
  """Mask pixels (Hm, Wm) whose nearest canvas pixel lies inside the unpadded image."""
  factor = np.array(IMAGE_SIZE) // np.array(MASK_SIZE)
  rows = np.floor((np.arange(MASK_SIZE[0]) + 0.5) * factor[0]).astype(int) < unpadded[0]
  cols = np.floor((np.arange(MASK_SIZE[1]) + 0.5) * factor[1]).astype(int) < unpadded[1]
  return rows[:, None] & cols[None, :]


def _augment(image, label, seed, scale_range, flip=True, strength=0.0):
  images, labels, unpadded = augment.train_augment(
    tf.constant(image[None]),
    tf.constant(np.stack([label, label], -1)[None], tf.int32),
    tf.constant(seed, tf.int64),
    image_size=IMAGE_SIZE,
    mask_size=MASK_SIZE,
    scale_range=scale_range,
    flip=flip,
    color_jitter_strength=strength,
    color_jitter_prob=1.0,
    grayscale_prob=0.0,
    pad_value=PAD_VALUE,
  )
  return images.numpy()[0], labels.numpy()[0], unpadded.numpy()


@pytest.mark.parametrize('source_size', [(45, 70), (80, 50)])
def test_train_augment_keeps_label_on_image(source_size):
  rng, entropy = _fresh_rng()
  palette, image, label = _block_scene(rng, *source_size)
  factor = IMAGE_SIZE[0] // MASK_SIZE[0]
  for trial in range(6):
    seed = rng.integers(0, 2**31, size=2)
    out, out_label, unpadded = _augment(image, label, seed, scale_range=(0.5, 3.0))
    msg = f'entropy {entropy}, trial {trial}, seed {seed}, unpadded {unpadded}'
    assert out_label.shape == MASK_SIZE + (2,) and out.shape == IMAGE_SIZE + (3,)
    # The image pixel that each mask pixel samples (nearest, canvas -> mask).
    sampled = out[factor // 2 :: factor, factor // 2 :: factor] * 255.0
    distance = np.abs(sampled[:, :, None, :] - palette[None, None].astype(np.float64)).max(-1)
    pure = distance.min(-1) < 0.5  # not blended with a neighbouring block by the resize.
    inside = _mask_inside(unpadded)
    assert (pure & inside).sum() > 0.2 * inside.sum(), msg  # the check below is not vacuous.
    quantised = distance.argmin(-1) + 1
    np.testing.assert_array_equal(out_label[..., 0][pure & inside], quantised[pure & inside], msg)
    np.testing.assert_array_equal(out_label[..., 0], out_label[..., 1], msg)
    # Padding: label (0, 0), image exactly the pad value, bottom / right only.
    assert (out_label[~inside] == 0).all() and (out_label[inside] > 0).all(), msg
    canvas = np.zeros(IMAGE_SIZE, bool)
    canvas[: unpadded[0], : unpadded[1]] = True
    np.testing.assert_array_equal(out[~canvas], np.float32(PAD_VALUE), msg)
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_flip_mirrors_image_and_label_together():
  rng, entropy = _fresh_rng()
  _, image, label = _block_scene(rng, *IMAGE_SIZE, block=(4, 4))
  seen = set()
  for trial in range(12):
    seed = rng.integers(0, 2**31, size=2)
    out, out_label, unpadded = _augment(image, label, seed, scale_range=(1.0, 1.0))
    assert tuple(unpadded) == IMAGE_SIZE
    flipped = bool(np.abs(out - image[:, ::-1] / 255.0).max() < 1e-4)
    if not flipped:
      np.testing.assert_allclose(out, image / 255.0, atol=1e-4, err_msg=f'entropy {entropy}')
    expected = label[1::2, 1::2] if not flipped else label[:, ::-1][1::2, 1::2]
    np.testing.assert_array_equal(out_label[..., 0], expected, f'entropy {entropy} {trial}')
    seen.add(flipped)
  assert seen == {True, False}, f'entropy {entropy}: flip never (or always) happened'


def test_color_jitter_changes_colours_but_never_the_padding():
  rng, entropy = _fresh_rng()
  _, image, label = _block_scene(rng, 40, 64)
  plain, _, unpadded = _augment(image, label, [1, 2], (1.0, 1.0), flip=False)
  jittered, _, _ = _augment(image, label, [1, 2], (1.0, 1.0), flip=False, strength=1.0)
  rows = unpadded[0]
  assert np.abs(jittered[:rows] - plain[:rows]).max() > 0.01, f'entropy {entropy}'
  np.testing.assert_array_equal(jittered[rows:], np.float32(PAD_VALUE))
  assert 0.0 <= jittered.min() and jittered.max() <= 1.0
  unchanged, _, _ = _augment(image, label, [1, 2], (1.0, 1.0), flip=False)
  np.testing.assert_array_equal(plain, unchanged)  # strength 0 is exactly no jitter.


def test_grayscale_gives_equal_channels():
  rng, _ = _fresh_rng()
  image = tf.constant(rng.random((2, 8, 8, 3)), tf.float32)
  gray = augment.color_jitter(
    image, 1.0, tf.constant([3, 4]), jitter_prob=0.0, grayscale_prob=1.0
  ).numpy()
  np.testing.assert_allclose(gray[..., 0], gray[..., 1])
  np.testing.assert_allclose(gray[..., 0], tf.image.rgb_to_grayscale(image).numpy()[..., 0])


def test_eval_resize_fits_keeping_aspect_and_pads():
  rng, entropy = _fresh_rng()
  palette, image, label = _block_scene(rng, 30, 50, block=(3, 5))
  images, labels, unpadded = augment.eval_resize(
    tf.constant(image[None]),
    tf.constant(label[None, ..., None], tf.int32),
    image_size=IMAGE_SIZE,
    mask_size=MASK_SIZE,
    pad_value=PAD_VALUE,
  )
  images, labels, unpadded = images.numpy()[0], labels.numpy()[0, ..., 0], unpadded.numpy()
  assert tuple(unpadded) == (38, 64)  # 30 * 64 / 50 = 38.4.
  expected = tf.image.resize(image[None] / 255.0, unpadded, antialias=True).numpy()[0]
  np.testing.assert_allclose(images[:38], expected, atol=1e-5, err_msg=f'entropy {entropy}')
  np.testing.assert_array_equal(images[38:], np.float32(PAD_VALUE))
  nearest = tf.image.resize(label[None, ..., None], unpadded, method='nearest').numpy()[0, ..., 0]
  np.testing.assert_array_equal(labels[:19], nearest[1::2, 1::2])
  assert (labels[19:] == 0).all()


def _random_segments(rng, shape, num_segments):
  """A label (H, W, 2) with `num_segments` instance ids scattered over it, some void pixels."""
  instance = rng.integers(0, num_segments + 1, size=shape)
  instance.reshape(-1)[: num_segments + 1] = np.arange(num_segments + 1)  # every id occurs.
  semantic = np.where(instance > 0, rng.integers(1, 6, size=num_segments + 1)[instance], 0)
  return np.stack([semantic, instance], -1).astype(np.int32)


def test_instance_ids_are_a_fresh_permutation():
  rng, entropy = _fresh_rng()
  max_instances = 16
  label = _random_segments(rng, (2, 20, 20), num_segments=9)
  mappings = set()
  for _ in range(5):
    out, dropped = augment.assign_instance_ids(
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
    out, dropped = augment.assign_instance_ids(
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
  out, dropped = augment.assign_instance_ids(tf.constant(label), 16)
  np.testing.assert_array_equal(out.numpy(), label)
  assert int(dropped) == 0


def test_shuffle_order_permutes_compact_ids_shared_by_all_frames():
  rng, entropy = _fresh_rng()
  label = _random_segments(rng, (3, 20, 20), num_segments=6)  # 3 frames of one window
  num_present = len(np.unique(label[..., 1][label[..., 1] > 0]))
  mappings = set()
  for _ in range(6):
    out, dropped = augment.assign_instance_ids(
      tf.constant(label), 16, tf.constant(rng.integers(0, 2**31, size=2)), order='shuffle'
    )
    out = out.numpy()
    assert int(dropped) == 0
    pairs = set(zip(label[..., 1].ravel().tolist(), out[..., 1].ravel().tolist(), strict=True))
    # One bijection for every frame, onto exactly 1..N (compact), 0 -> 0.
    assert len({old for old, _ in pairs}) == len(pairs) == len({new for _, new in pairs})
    assert {new for old, new in pairs if old} == set(range(1, num_present + 1)), entropy
    mappings.add(tuple(sorted(pairs)))
  assert len(mappings) > 1, f'entropy {entropy}: the permutation never changed'
  with pytest.raises(ValueError, match="instance_id_order='sorted'"):
    augment.assign_instance_ids(tf.constant(label), 16, tf.constant([1, 2]), order='sorted')


def _blob_label(boxes, shape):
  """Label (..., H, W, 2) of boxes (y0, y1, x0, x1): instance k + 1, semantic 1, else void."""
  label = np.zeros(shape + (2,), np.int32)
  for k, (y0, y1, x0, x1) in enumerate(boxes):
    label[..., y0:y1, x0:x1, :] = (1, k + 1)
  return label


def test_location_order_gives_each_segment_the_cell_of_its_centroid():
  rng, entropy = _fresh_rng()
  rows, cols = augment.location_grid(15)
  assert (rows, cols) == (3, 5) and augment.location_grid(255) == (15, 17)
  height, width = 30, 50  # cells of 10 x 10 pixels
  # One small square per chosen cell, well inside it: its id is 1 + the cell's raster index.
  cells = rng.choice(rows * cols, size=int(rng.integers(2, 8)), replace=False)
  boxes = [
    (10 * (c // cols) + 3, 10 * (c // cols) + 7, 10 * (c % cols) + 2, 10 * (c % cols) + 8)
    for c in cells
  ]
  label = _blob_label(boxes, (2, height, width))  # two frames share one mapping
  outputs = [
    augment.assign_instance_ids(
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
  mirrored = augment.assign_instance_ids(
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
  out = augment.assign_instance_ids(tf.constant(label), 16, tf.constant([3, 4]), 'location')[0]
  out = out.numpy()
  ids = [int(np.bincount(out[..., 1][label[..., 1] == k + 1]).argmax()) for k in range(3)]
  assert ids[0] == 1 * 5 + 2 + 1, entropy  # the largest: its own cell
  assert len(set(ids)) == 3, (entropy, ids)
  for i in ids[1:]:
    row, col = divmod(i - 1, 5)
    assert abs(row - 1) + abs(col - 2) == 1, (entropy, ids)  # an adjacent cell
  # More segments than cells and ids: the 15 largest of 17 get ids 1..15, the rest void.
  boxes = [(2 * k, 2 * k + 1, 0, 17 - k) for k in range(17)]
  out, dropped = augment.assign_instance_ids(
    tf.constant(_blob_label(boxes, (40, 40))), 16, tf.constant([0, 1]), 'location'
  )
  assert int(dropped) == 2
  assert sorted(set(out.numpy()[..., 1].ravel().tolist()) - {0}) == list(range(1, 16))


def test_bicubic_training_resize_is_sharper_and_stays_in_range():
  rng, entropy = _fresh_rng()
  image = np.zeros((1, 16, 16, 3), np.uint8)
  image[:, :, 8:] = 255  # a vertical edge
  image[:, :, :, 1] = rng.integers(0, 256, size=(16, 16))
  geometry = augment.eval_geometry(tf.constant([16, 16]), (40, 40))
  bilinear = augment.resample_images(tf.constant(image), geometry, (40, 40), PAD_VALUE).numpy()
  bicubic = augment.resample_images(
    tf.constant(image), geometry, (40, 40), PAD_VALUE, method='bicubic'
  ).numpy()
  assert 0.0 <= bicubic.min() and bicubic.max() <= 1.0
  assert not np.allclose(bilinear, bicubic), entropy
  # Across the edge the cubic kernel rises more steeply than the linear one.
  assert np.abs(np.diff(bicubic[0, 20, :, 0])).max() > np.abs(np.diff(bilinear[0, 20, :, 0])).max()
  with pytest.raises(ValueError, match="resize method 'area'"):
    augment.resample_images(tf.constant(image), geometry, (40, 40), PAD_VALUE, method='area')
