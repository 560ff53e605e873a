"""Tests of pix2seq_d.data.augment: alignment of image and label, padding, colour, resizing."""

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
  with pytest.raises(ValueError, match="train_resize_method='area': use one of 'bilinear'"):
    augment.resample_images(tf.constant(image), geometry, (40, 40), PAD_VALUE, method='area')
