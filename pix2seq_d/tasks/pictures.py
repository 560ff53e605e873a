"""Colour pictures of panoptic maps, for TensorBoard summaries and for looking at predictions.

Our label convention: semantic = category index + 1 (0 void), instance ids (0 void). A pixel is
drawn in its category's colour (the categories' 'color' field, else a fixed palette); thing
categories get a per-instance shade so that two instances of one class differ; void is black.
Every function takes any leading batch dimensions: (H, W) or (B, H, W) maps, (..., H, W, 3)
images.

Pure numpy: no jax, no tensorflow.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pix2seq_d.tasks.postprocess import resize_nearest

_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def default_palette(num_colors: int = 256) -> np.ndarray:
  """A fixed palette of distinct bright colours: uint8 (num_colors, 3), never black.

  Hues step by the golden ratio (neighbouring indices get far-apart hues), with saturation and
  value cycling over a few levels so that colours stay distinct past the first dozen.
  """
  index = np.arange(num_colors)
  hue = (index * _GOLDEN_RATIO_CONJUGATE) % 1.0
  saturation = 0.55 + 0.15 * (index % 3)
  value = 0.95 - 0.15 * ((index // 3) % 3)
  return _hsv_to_rgb(hue, saturation, value)


def _hsv_to_rgb(hue, saturation, value) -> np.ndarray:
  """Vectorised HSV (all in [0, 1]) -> uint8 RGB (..., 3)."""
  sector = np.floor(hue * 6.0)
  fraction = hue * 6.0 - sector
  p = value * (1.0 - saturation)
  q = value * (1.0 - saturation * fraction)
  t = value * (1.0 - saturation * (1.0 - fraction))
  sector = sector.astype(int) % 6
  choices = [
    np.stack(c, axis=-1)
    for c in (
      (value, t, p),
      (q, value, p),
      (p, value, t),
      (p, q, value),
      (t, p, value),
      (value, p, q),
    )
  ]
  rgb = np.choose(sector[..., None], choices)
  return np.round(rgb * 255).astype(np.uint8)


def instance_palette() -> np.ndarray:
  """256 colours, pairwise at least 32 apart in some channel: uint8 (256, 3).

  The PASCAL VOC colour map: the bits of the index are spread over the high bits of R, G, B.
  """
  index = np.arange(256)
  palette = np.zeros((256, 3), np.int64)
  bits = index.copy()
  for shift in range(7, -1, -1):
    for channel in range(3):
      palette[:, channel] |= ((bits >> channel) & 1) << shift
    bits >>= 3
  return palette.astype(np.uint8)


def category_colors(categories: Sequence[dict], num_colors: int | None = None) -> np.ndarray:
  """Colour of each semantic value: uint8 (max(len(categories) + 1, num_colors), 3).

  Row 0 (void) is black; row s is categories[s - 1]['color'] when given, else the fixed palette;
  rows past the categories (values a model may emit beyond them) take the fixed palette too.
  """
  size = max(len(categories) + 1, num_colors or 0)
  colors = default_palette(size + 1)[1:].copy()  # Palette entry 0 is red; start the cycle at 1.
  colors[0] = 0
  for s, category in enumerate(categories, start=1):
    if category.get('color') is not None:
      colors[s] = np.asarray(category['color'], np.int64)[:3]
  return colors


def colorize_panoptic(
  semantic: np.ndarray,
  instance: np.ndarray,
  categories: Sequence[dict],
  instance_shade: float = 0.35,
) -> np.ndarray:
  """Panoptic maps -> colour picture.

  Args:
    semantic: integer (..., H, W), category index + 1, 0 void.
    instance: integer (..., H, W), instance ids, 0 void.
    categories: the categories; categories[s - 1] is semantic value s; a 'color' field ([R, G, B])
      is used when present, 'isthing' == 0 turns the instance shade off (default: a thing).
    instance_shade: how far a thing pixel moves from its category colour towards its instance's
      colour (a fixed 256-colour palette indexed by instance id mod 256). With the default, two
      instance ids of one class that differ mod 256 always get different colours.

  Returns:
    uint8 (..., H, W, 3); black where semantic == 0 or instance == 0.
  """
  semantic = np.asarray(semantic).astype(np.int64)
  instance = np.asarray(instance).astype(np.int64)
  if semantic.shape != instance.shape:
    raise ValueError(f'semantic {semantic.shape} and instance {instance.shape} must match')
  if semantic.size and (semantic.min() < 0 or instance.min() < 0):
    raise ValueError('semantic and instance values must be >= 0')
  max_semantic = int(semantic.max()) if semantic.size else 0
  colors = category_colors(categories, max_semantic + 1).astype(np.float64)
  shaded = np.ones(len(colors), bool)
  shaded[0] = False
  for s, category in enumerate(categories, start=1):
    shaded[s] = category.get('isthing', 1) == 1
  base = colors[semantic]
  shade = np.where(shaded[semantic], instance_shade, 0.0)[..., None]
  mixed = (1.0 - shade) * base + shade * instance_palette()[instance % 256]
  picture = np.round(mixed).astype(np.uint8)
  picture[(semantic == 0) | (instance == 0)] = 0
  return picture


def overlay(image: np.ndarray, colored: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """Blends a colour picture over an image: (1 - alpha) image + alpha colored, uint8 (..., H, W, 3).

  Args:
    image: float in [0, 1] or uint8, (..., H, W, 3) or (..., H, W, 1) (grey).
    colored: uint8 (..., H, W, 3), e.g. from `colorize_panoptic`.
    alpha: weight of `colored`, in [0, 1].
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'alpha must lie in [0, 1], got {alpha}')
  image = np.asarray(image)
  if image.dtype == np.uint8:
    image = image.astype(np.float64)
  else:
    image = np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  colored = np.asarray(colored).astype(np.float64)
  if image.shape[-3:] != colored.shape[-3:]:
    raise ValueError(f'image {image.shape} and colored {colored.shape} must have one (H, W, 3)')
  blended = (1.0 - alpha) * image + alpha * colored
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def uncertainty_picture(uncertainty: np.ndarray) -> np.ndarray:
  """Uncertainty (..., H, W) in [0, 1] -> uint8 (..., H, W): 0 certain (black), 255 where no two
  samples agree (white); the 8-bit picture --mode=predict writes beside each prediction."""
  return np.round(np.clip(uncertainty, 0.0, 1.0) * 255).astype(np.uint8)


def summary_image(
  image: np.ndarray,
  gt: np.ndarray,
  pred: np.ndarray,
  categories,
  uncertainty: np.ndarray | None = None,
) -> np.ndarray:
  """[input | ground truth | prediction (| uncertainty)] side by side: (H, 3 W, 3) uint8 at the
  input size, (H, 4 W, 3) with a (h, w) `uncertainty` in [0, 1] (white: the samples disagree)."""
  size = image.shape[:2]
  colour = lambda label: colorize_panoptic(
    resize_nearest(label[..., 0], size),
    resize_nearest(label[..., 1], size),
    categories,
  )
  picture = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
  panels = [picture, colour(gt), colour(pred)]
  if uncertainty is not None:
    grey = uncertainty_picture(resize_nearest(uncertainty, size))
    panels.append(np.repeat(grey[..., None], 3, axis=-1))
  return np.concatenate(panels, axis=1)


def colorize_objects(ids: np.ndarray) -> np.ndarray:
  """Object ids (..., H, W) -> uint8 (..., H, W, 3): one palette colour per id, 0 (and DAVIS
  void, 255) black."""
  ids = np.asarray(ids).astype(np.int64)
  picture = instance_palette()[ids % 256].astype(np.uint8)
  picture[(ids == 0) | (ids == 255)] = 0
  return picture


def video_strip(
  frames: np.ndarray, gt_ids: np.ndarray, pred_ids: np.ndarray, max_frames: int
) -> np.ndarray:
  """Frames side by side over three rows: input, ground-truth objects, predicted objects.

  Every tile has the size of the id maps (the mask size), so a strip of large frames stays small.

  Args:
    frames: float (T, H, W, 3) in [0, 1]; gt_ids, pred_ids: int (T, h, w) object ids.
    max_frames: at most this many frames, evenly spaced over the clip, first and last included.

  Returns:
    uint8 (3 h, n w, 3) with n = min(T, max_frames).
  """
  num = len(frames)
  chosen = np.unique(np.round(np.linspace(0, num - 1, min(num, max_frames))).astype(int))
  size = gt_ids.shape[1:3]
  rows = [
    [(np.clip(resize_nearest(frames[t], size), 0, 1) * 255).astype(np.uint8) for t in chosen],
    [colorize_objects(resize_nearest(gt_ids[t], size)) for t in chosen],
    [colorize_objects(resize_nearest(pred_ids[t], size)) for t in chosen],
  ]
  return np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
