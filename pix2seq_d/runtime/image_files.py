"""Reading and writing image files with Pillow: what reading can raise, and an atomic save.

Pillow reports a corrupt, truncated or unknown file as OSError, SyntaxError or ValueError, and an
image whose header declares more pixels than its safety limit (twice `Image.MAX_IMAGE_PIXELS`)
as `DecompressionBombError`, which derives from none of them. Readers catch `READ_ERRORS` and
name the file, so one such file is skipped or reported instead of ending a whole run. The file
formats themselves (KITTI-STEP maps, DAVIS and COCO panoptic PNGs) live in pix2seq_d/formats/.
"""

import os

from PIL import Image

READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def save_png_atomically(image: Image.Image, path: str) -> None:
  """Saves `image` as a PNG at `path`, creating its folder: written beside it as <path>.partial
  and renamed, so a reader never meets a half-written file (a killed run leaves the old one)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  partial = f'{path}.partial'
  image.save(partial, format='PNG')
  os.replace(partial, path)
