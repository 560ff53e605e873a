"""KITTI-STEP panoptic map PNG: one 8-bit RGB PNG per frame, R = class, G * 256 + B = instance.

The format of KITTI-STEP's panoptic_maps/<split>/<sequence>/<frame>.png: R holds the class value
(255 = void) and G * 256 + B the instance (track) id, 0 on stuff and crowd. The data source reads
these maps, the STQ command reads ground truth and predictions, and the video task writes its
predictions in it; all go through `read_step_png` and `write_step_png`.

Pure numpy + Pillow.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from pix2seq_d.runtime import image_files

VOID = 255  # the class value of void pixels
INSTANCE_SPAN = 2**16  # instance ids are G * 256 + B < 2^16


def _png_bit_depth(path: str) -> int:
  """Bits per sample of a PNG: byte 24 of the file (after the 8-byte signature, the IHDR chunk's
  length, type, width and height), which Pillow has already checked to be an IHDR."""
  with open(path, 'rb') as f:
    return f.read(25)[24]


def read_step_png(path: str) -> tuple[np.ndarray, np.ndarray]:
  """A KITTI-STEP panoptic map as int32 (class (H, W), instance (H, W)): R = class, G * 256 + B
  = instance (track) id.

  Only 8-bit RGB PNGs are read. Pillow opens a 16-bit RGB PNG as mode 'RGB' too, keeping the high
  byte of each sample, so class 13 stored as 13 would read as 0; and a 16-bit file has no one
  meaning (13 widened as it is, or scaled to 13 * 257 as image converters do), so it is refused
  rather than guessed.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file cannot be decoded, is not a PNG, is not RGB or not 8 bits per channel;
      the message names the file.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist')
  try:
    with Image.open(path) as image:
      mode, image_format = image.mode, image.format
      bits = _png_bit_depth(path) if image_format == 'PNG' else None
      readable = image_format == 'PNG' and mode == 'RGB' and bits == 8
      rgb = np.asarray(image).astype(np.int32) if readable else None
  except image_files.READ_ERRORS as e:
    raise ValueError(f'{path}: cannot be decoded as a PNG ({e})') from None
  if image_format != 'PNG':
    raise ValueError(f'{path}: a STEP panoptic map is a PNG, this file is {image_format}')
  if mode != 'RGB':
    raise ValueError(f'{path}: a STEP panoptic map is RGB (R class, G * 256 + B id), not {mode}')
  if bits != 8:
    raise ValueError(
      f'{path}: a STEP panoptic map has 8 bits per channel (R class, G * 256 + B id); this file '
      f'has {bits}. Write it with 8 bits per channel (uint8 RGB).'
    )
  return rgb[..., 0], rgb[..., 1] * 256 + rgb[..., 2]


def write_step_png(path: str, semantic: np.ndarray, instance: np.ndarray) -> None:
  """Writes int (H, W) class (0..254, or 255 void) and instance (< 2^16) maps as an 8-bit RGB
  STEP PNG, atomically, creating the folder.

  Raises:
    ValueError: a class or instance id the format cannot hold; the message names the file.
  """
  semantic = np.asarray(semantic).astype(np.int64)
  instance = np.asarray(instance).astype(np.int64)
  if semantic.size and (semantic.min() < 0 or semantic.max() > VOID):
    raise ValueError(f'{path}: classes must lie in 0..255')
  if instance.size and (instance.min() < 0 or instance.max() >= INSTANCE_SPAN):
    raise ValueError(f'{path}: instance ids must lie in 0..65535')
  rgb = np.stack([semantic, instance // 256, instance % 256], axis=-1).astype(np.uint8)
  image_files.save_png_atomically(Image.fromarray(rgb, 'RGB'), path)
