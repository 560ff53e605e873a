"""What reading an image file with Pillow can raise, in one place.

Pillow reports a corrupt, truncated or unknown file as OSError, SyntaxError or ValueError, and an
image whose header declares more pixels than its safety limit (twice `Image.MAX_IMAGE_PIXELS`)
as `DecompressionBombError`, which derives from none of them. Readers catch `READ_ERRORS` and
name the file, so one such file is skipped or reported instead of ending a whole run. The
KITTI-STEP map reader is here too: the data source and the STQ command read the same files.
"""

import numpy as np
from PIL import Image

READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


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
    ValueError: the file cannot be decoded, is not a PNG, is not RGB or not 8 bits per channel;
      the message names the file.
  """
  try:
    with Image.open(path) as image:
      mode, image_format = image.mode, image.format
      bits = _png_bit_depth(path) if image_format == 'PNG' else None
      readable = image_format == 'PNG' and mode == 'RGB' and bits == 8
      rgb = np.asarray(image).astype(np.int32) if readable else None
  except READ_ERRORS as e:
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
