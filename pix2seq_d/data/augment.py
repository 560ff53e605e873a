"""Augmentation and resizing of images and panoptic labels: small pure, tf-traceable functions.

Conventions: images float32 in [0, 1] (uint8 on input), labels int32 with channels
[semantic, instance]; (N, H, W, C) is a stack of frames that share one geometry (a single image
is N = 1). Randomness is stateless: each random function takes `seed`, an int32 / int64 (2,)
tensor, so the pipeline controls reproducibility per example.

Geometry: an image of size (H, W) is resized by (sy, sx) = (Hs / H, Ws / W) to (Hs, Ws); a crop of
size (ch, cw) = min((Hs, Ws), (Ht, Wt)) at offset (oy, ox) is taken, optionally flipped left-right,
and placed at the top-left of the (Ht, Wt) canvas; the rest is padding (bottom / right). The image
is resampled bilinearly with antialiasing: the crop is computed directly with ScaleAndTranslate,
which equals resizing the full image with tf.image.resize(antialias=True) and then cropping, without
materialising an up-scaled image (scale jitter up to 3x on COCO). The label goes straight to the
mask size (Hm, Wm) by nearest neighbour: mask pixel j samples canvas pixel floor((j + 0.5) Ht / Hm),
which samples resized pixel floor((c + o + 0.5) H / Hs): exactly tf.image.resize(..., 'nearest') of
the nearest-resized canvas, so image and label stay aligned.
"""

from __future__ import annotations

import tensorflow as tf

from pix2seq_d.config import checks

# A flip is as likely as no flip.
_FLIP_PROBABILITY = 0.5
# SimCLR's colour jitter of strength s: brightness, contrast and saturation factors in
# [1 - 0.8 s, 1 + 0.8 s], hue shift in [-0.2 s, 0.2 s] (Chen et al. 2020, appendix A).
_SIMCLR_BCS_PER_STRENGTH = 0.8
_SIMCLR_HUE_PER_STRENGTH = 0.2
_MAX_HUE_DELTA = 0.5  # tf.image.adjust_hue accepts deltas in [-0.5, 0.5] (a full turn).
_NUM_COLOR_OPS = 4  # brightness, contrast, saturation, hue.


# tf.raw_ops.ScaleAndTranslate kernel of each resize method, in config/checks.py's order
# ('triangle' is bilinear).
_RESIZE_KERNELS = dict(zip(checks.RESIZE_METHODS, ('triangle', 'keyscubic'), strict=True))


def _as_pair(size) -> tuple[int, int]:
  height, width = (int(v) for v in size)
  return height, width


def sample_train_geometry(
  image_size: tf.Tensor,
  target_size: tuple[int, int],
  scale_range: tuple[float, float],
  flip: bool,
  seed: tf.Tensor,
) -> dict[str, tf.Tensor]:
  """Draws a scale jitter, crop and flip for an image of `image_size` (H, W).

  s ~ U(scale_range) and scale = min(Ht * s / H, Wt * s / W) keep the aspect ratio; the crop
  offset is uniform over the valid positions.

  Args:
    image_size: int32 (2,) = (H, W) of the source image.
    target_size: (Ht, Wt) of the padded canvas.
    scale_range: (min, max) of s; (1, 1) = fit the image into the canvas.
    flip: whether to flip left-right with probability 1/2.
    seed: int (2,) stateless seed.

  Returns:
    A geometry dict (see `_geometry`).
  """
  scale_seed, offset_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  checks.check_scale_range(scale_range)
  low, high = (float(v) for v in scale_range)
  s = tf.random.stateless_uniform([], scale_seed, minval=low, maxval=high)
  do_flip = tf.constant(False)
  if flip:
    do_flip = tf.random.stateless_uniform([], flip_seed) < _FLIP_PROBABILITY
  return _geometry(image_size, s, target_size, offset_seed, do_flip)


def eval_geometry(image_size: tf.Tensor, target_size: tuple[int, int]) -> dict[str, tf.Tensor]:
  """Resize to fit (Ht, Wt) keeping the aspect ratio, no crop, no flip. `image_size` int32 (2,)."""
  return _geometry(image_size, tf.constant(1.0), target_size, None, tf.constant(False))


def _geometry(image_size, s, target_size, offset_seed, do_flip) -> dict[str, tf.Tensor]:
  """Geometry dict of int32 / float32 tensors.

  'image_size' (2,) (H, W); 'resized_size' (2,) (Hs, Ws); 'crop_size' (2,) (ch, cw) = the
  unpadded size on the canvas; 'offset' (2,) (oy, ox) in resized pixels; 'flip' bool ().
  """
  target = tf.constant(_as_pair(target_size), tf.float32)
  image_size = tf.cast(image_size, tf.int32)
  source = tf.cast(image_size, tf.float32)
  scale = tf.reduce_min(target * s / source)
  resized = tf.maximum(tf.cast(tf.round(source * scale), tf.int32), 1)
  if offset_seed is None:
    # Rounding may overshoot the canvas by a pixel when the binding side is at its limit.
    resized = tf.minimum(resized, tf.cast(target, tf.int32))
  crop = tf.minimum(resized, tf.cast(target, tf.int32))
  offset = tf.zeros([2], tf.int32)
  if offset_seed is not None:
    slack = tf.cast(resized - crop + 1, tf.float32)
    offset = tf.cast(tf.floor(tf.random.stateless_uniform([2], offset_seed) * slack), tf.int32)
    offset = tf.minimum(offset, resized - crop)
  return {
    'image_size': image_size,
    'resized_size': resized,
    'crop_size': crop,
    'offset': offset,
    'flip': do_flip,
  }


def resample_images(
  images: tf.Tensor,
  geometry: dict,
  target_size: tuple[int, int],
  pad_value: float,
  color_fn=None,
  method: str = 'bilinear',
) -> tf.Tensor:
  """Resizes, crops, flips and pads images: (N, H, W, C) uint8 / float -> (N, Ht, Wt, C) float32.

  `method` 'bilinear' or 'bicubic' (Keys cubic), with antialiasing; uint8 input is divided by 255
  and the result clipped to [0, 1].
  `color_fn` ((N, ch, cw, C) -> same) is applied to the crop before padding so the padding keeps
  `pad_value` exactly.
  """
  target_h, target_w = _as_pair(target_size)
  checks.check_choice('data.train_resize_method', method, checks.RESIZE_METHODS)
  clip_to_unit = images.dtype == tf.uint8
  if clip_to_unit:
    images = tf.cast(images, tf.float32) / 255.0
  images = tf.cast(images, tf.float32)
  scale = tf.cast(geometry['resized_size'], tf.float32) / tf.cast(
    geometry['image_size'], tf.float32
  )
  crop = tf.raw_ops.ScaleAndTranslate(
    images=images,
    size=geometry['crop_size'],
    scale=scale,
    translation=-tf.cast(geometry['offset'], tf.float32),
    kernel_type=_RESIZE_KERNELS[method],
    antialias=True,
  )
  if clip_to_unit:
    # The weights sum to 1 only up to rounding, and cubic weights overshoot at edges.
    crop = tf.clip_by_value(crop, 0.0, 1.0)
  crop = tf.cond(geometry['flip'], lambda: tf.reverse(crop, axis=[2]), lambda: crop)
  if color_fn is not None:
    crop = color_fn(crop)
  pad = tf.stack(
    [
      [0, 0],
      [0, target_h - geometry['crop_size'][0]],
      [0, target_w - geometry['crop_size'][1]],
      [0, 0],
    ]
  )
  padded = tf.pad(crop, pad, constant_values=pad_value)
  return tf.ensure_shape(padded, [None, target_h, target_w, images.shape[-1]])


def _nearest_source_index(axis, geometry, target_len, mask_len, flip):
  """Source pixel (int32 (mask_len,)) and validity (bool) sampled by each mask pixel on `axis`."""
  mask_pos = tf.range(mask_len, dtype=tf.float32)
  canvas = tf.cast(tf.floor((mask_pos + 0.5) * (target_len / mask_len)), tf.int32)
  crop_len = geometry['crop_size'][axis]
  inside = canvas < crop_len
  if flip is not None:
    canvas = tf.where(flip, crop_len - 1 - canvas, canvas)
  resized_pos = tf.cast(canvas + geometry['offset'][axis], tf.float32)
  inverse_scale = tf.cast(geometry['image_size'][axis], tf.float32) / tf.cast(
    geometry['resized_size'][axis], tf.float32
  )
  source = tf.cast(tf.floor((resized_pos + 0.5) * inverse_scale), tf.int32)
  source = tf.clip_by_value(source, 0, geometry['image_size'][axis] - 1)
  return tf.where(inside, source, 0), inside


def resample_labels(
  labels: tf.Tensor, geometry: dict, target_size: tuple[int, int], mask_size: tuple[int, int]
) -> tf.Tensor:
  """Labels (N, H, W, K) int -> (N, Hm, Wm, K) at mask size by nearest neighbour, padding 0.

  Samples what `resample_images` puts on the canvas (same crop and flip), then nearest-resizes
  the (Ht, Wt) canvas to (Hm, Wm), in one gather.
  """
  target_h, target_w = _as_pair(target_size)
  mask_h, mask_w = _as_pair(mask_size)
  rows, rows_inside = _nearest_source_index(0, geometry, target_h, mask_h, None)
  cols, cols_inside = _nearest_source_index(1, geometry, target_w, mask_w, geometry['flip'])
  sampled = tf.gather(tf.gather(labels, rows, axis=1), cols, axis=2)
  inside = rows_inside[:, None] & cols_inside[None, :]
  sampled = tf.where(inside[None, :, :, None], sampled, tf.zeros_like(sampled))
  return tf.ensure_shape(sampled, [None, mask_h, mask_w, labels.shape[-1]])


def color_jitter(
  images: tf.Tensor,
  strength: float,
  seed: tf.Tensor,
  jitter_prob: float,
  grayscale_prob: float,
) -> tf.Tensor:
  """SimCLR colour distortion of float images (..., H, W, 3) in [0, 1]; one draw for all frames.

  With probability `jitter_prob`: brightness (multiplicative), contrast and saturation factors in
  [1 - 0.8 s, 1 + 0.8 s] and a hue shift in [-0.2 s, 0.2 s], applied in a random order, clipping
  to [0, 1] after each; then, with probability `grayscale_prob`, grayscale (3 equal channels).
  strength 0 returns the images unchanged.
  """
  if strength <= 0:
    return images
  bcs = _SIMCLR_BCS_PER_STRENGTH * strength
  hue = min(_SIMCLR_HUE_PER_STRENGTH * strength, _MAX_HUE_DELTA)
  seeds = tf.random.experimental.stateless_split(seed, 4)
  low = max(1.0 - bcs, 0.0)
  factors = tf.random.stateless_uniform([3], seeds[0], minval=low, maxval=1.0 + bcs)
  hue_delta = tf.random.stateless_uniform([], seeds[1], minval=-hue, maxval=hue)
  order = tf.argsort(tf.random.stateless_uniform([_NUM_COLOR_OPS], seeds[2]))
  apply_jitter, apply_gray = tf.unstack(tf.random.stateless_uniform([2], seeds[3]))

  branches = [
    lambda x: x * factors[0],
    lambda x: tf.image.adjust_contrast(x, factors[1]),
    lambda x: tf.image.adjust_saturation(x, factors[2]),
    lambda x: tf.image.adjust_hue(x, hue_delta),
  ]

  def jitter(x):
    for step in range(_NUM_COLOR_OPS):
      x = tf.switch_case(order[step], [lambda b=b, x=x: b(x) for b in branches])
      x = tf.clip_by_value(x, 0.0, 1.0)
    return x

  def gray(x):
    return tf.tile(tf.image.rgb_to_grayscale(x), [1] * (len(x.shape) - 1) + [3])

  images = tf.cond(apply_jitter < jitter_prob, lambda: jitter(images), lambda: images)
  return tf.cond(apply_gray < grayscale_prob, lambda: gray(images), lambda: images)


def _assert_same_size(images: tf.Tensor, labels: tf.Tensor) -> None:
  tf.debugging.assert_equal(
    tf.shape(images)[1:3],
    tf.shape(labels)[1:3],
    message='augment: images (N, H, W, 3) and labels (M, H, W, K) must share (H, W)',
  )


def train_augment(
  images: tf.Tensor,
  labels: tf.Tensor,
  seed: tf.Tensor,
  *,
  image_size: tuple[int, int],
  mask_size: tuple[int, int],
  scale_range: tuple[float, float],
  flip: bool,
  color_jitter_strength: float,
  color_jitter_prob: float,
  grayscale_prob: float,
  pad_value: float,
  resize_method: str = 'bilinear',
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Training augmentation with one geometry for all frames.

  Args:
    images: uint8 (N, H, W, 3) frames to augment (e.g. only the target frame of a video window).
    labels: int32 (M, H, W, K) labels of the same (H, W) (e.g. every frame of the window).
    seed: int (2,) stateless seed.
    image_size: (Ht, Wt) of the padded image; mask_size: (Hm, Wm) of the label.
    scale_range, flip: see `sample_train_geometry`.
    color_jitter_strength, color_jitter_prob, grayscale_prob: see `color_jitter`.
    pad_value: image value of the padding (labels pad with 0).
    resize_method: image resampling, 'bilinear' or 'bicubic' (labels: nearest).

  Returns:
    images float32 (N, Ht, Wt, 3) in [0, 1]; labels int32 (M, Hm, Wm, K); unpadded (ch, cw) int32
    (2,), the size of the image content on the canvas.
  """
  geometry_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  _assert_same_size(images, labels)
  geometry = sample_train_geometry(
    tf.shape(images)[1:3], image_size, scale_range, flip, geometry_seed
  )
  color_fn = lambda crop: color_jitter(
    crop, color_jitter_strength, color_seed, color_jitter_prob, grayscale_prob
  )
  out_images = resample_images(images, geometry, image_size, pad_value, color_fn, resize_method)
  out_labels = resample_labels(labels, geometry, image_size, mask_size)
  return out_images, out_labels, geometry['crop_size']


def eval_resize(
  images: tf.Tensor,
  labels: tf.Tensor,
  *,
  image_size: tuple[int, int],
  mask_size: tuple[int, int],
  pad_value: float,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Evaluation resize: fit into (Ht, Wt) keeping the aspect ratio, then pad bottom / right.

  Args:
    images: uint8 (N, H, W, 3); labels: int32 (M, H, W, K) of the same (H, W).
    image_size: (Ht, Wt); mask_size: (Hm, Wm); pad_value: image padding value (labels pad 0).

  Returns:
    images float32 (N, Ht, Wt, 3); labels int32 (M, Hm, Wm, K); unpadded int32 (2,) = size of
    the resized image inside the canvas.
  """
  _assert_same_size(images, labels)
  geometry = eval_geometry(tf.shape(images)[1:3], image_size)
  out_images = resample_images(images, geometry, image_size, pad_value)
  out_labels = resample_labels(labels, geometry, image_size, mask_size)
  return out_images, out_labels, geometry['crop_size']
