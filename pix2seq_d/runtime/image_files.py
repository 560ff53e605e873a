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


def read_step_png(path: str) -> tuple[np.ndarray, np.ndarray]:
  """A KITTI-STEP panoptic map as int32 (class (H, W), instance (H, W)): R = class, G * 256 + B
  = instance (track) id.

  Raises:
    ValueError: the file cannot be decoded or is not an RGB image; the message names the file.
  """
  try:
    with Image.open(path) as image:
      mode = image.mode
      rgb = np.asarray(image).astype(np.int32) if mode == 'RGB' else None
  except READ_ERRORS as e:
    raise ValueError(f'{path}: cannot be decoded as a PNG ({e})') from None
  if rgb is None:
    raise ValueError(f'{path}: a STEP panoptic map is RGB (R class, G * 256 + B id), not {mode}')
  return rgb[..., 0], rgb[..., 1] * 256 + rgb[..., 2]
