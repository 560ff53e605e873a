"""DAVIS object-id PNG: one indexed (palette) PNG per frame whose pixel values are object ids.

The format of DAVIS 2017's Annotations_unsupervised/<resolution>/<video>/<frame>.png and of the
predictions its evaluation reads: pixel = object id 1..K, 0 background, 255 (`VOID_ID`) void in
annotations. The palette only colours the ids for viewing (DAVIS's, that of PASCAL VOC); readers
take the indices, never the colours. Grey PNGs (mode 'L') hold the same ids and are read too.

`object_ids` numbers a panoptic clip's objects as DAVIS ids: the video task writes predictions
with it and the DAVIS J&F evaluator scores with it, so both see the same objects.

Pure numpy + Pillow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pix2seq_d.runtime import image_files

VOID_ID = 255
_INDEXED_MODES = ('P', 'L')  # palette or grey: 8-bit indices that are the ids themselves


def read_indexed_png(path: str) -> np.ndarray:
  """The object ids of a palette (or grey) PNG as uint8 (H, W): the indices, not the colours.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file cannot be decoded, or is not indexed (an RGB picture, a 16-bit grey
      map); the message names the file.
  """
  try:
    with Image.open(path) as image:
      mode = image.mode
      ids = np.asarray(image, dtype=np.uint8) if mode in _INDEXED_MODES else None
  except FileNotFoundError:
    raise FileNotFoundError(f'{path} does not exist') from None
  except image_files.READ_ERRORS as e:
    raise ValueError(f'{path}: cannot be decoded as a PNG ({e})') from None
  if ids is None:
    raise ValueError(
      f'{path}: a DAVIS object-id map is an indexed (palette or grey) PNG of object ids, not an '
      f'image of mode {mode}'
    )
  return ids


def _voc_palette() -> list[int]:
  """The DAVIS / PASCAL VOC palette, [R0, G0, B0, R1, ...] (768 ints): colour of index i from
  its bits, spread over R, G, B."""
  palette = []
  for index in range(256):
    r = g = b = 0
    value = index
    for shift in range(7, -1, -1):
      r |= (value & 1) << shift
      g |= ((value >> 1) & 1) << shift
      b |= ((value >> 2) & 1) << shift
      value >>= 3
    palette += [r, g, b]
  return palette


def write_indexed_png(path: str, ids: np.ndarray) -> None:
  """Writes int (H, W) ids in 0..255 as a palette PNG (DAVIS's colours), atomically, creating
  the folder.

  Raises:
    ValueError: an id outside 0..255; the message names the file.
  """
  ids = np.asarray(ids)
  if ids.size and (ids.min() < 0 or ids.max() > 255):
    raise ValueError(f'{path}: ids must lie in 0..255, got {ids.min()}..{ids.max()}.')
  height, width = ids.shape
  image = Image.frombytes('P', (width, height), np.ascontiguousarray(ids, np.uint8).tobytes())
  image.putpalette(_voc_palette())
  image_files.save_png_atomically(image, path)


def object_ids(
  semantic: np.ndarray,
  instance: np.ndarray,
  is_thing: np.ndarray,
  *,
  by: str,
  limit: int | None = None,
) -> np.ndarray:
  """A panoptic clip's objects (its non-stuff instances) as DAVIS object ids 1..K (0 elsewhere).

  Args:
    semantic, instance: (T, H, W) int maps of a clip.
    is_thing: (num_classes,) bool per semantic id (index 0 = void).
    by: 'id' numbers the objects in the order of their instance ids (a ground truth whose ids
      are already 1..K keeps them, as DAVIS's do); 'size' numbers them largest first (pixels over
      the clip), for predictions.
    limit: keep at most this many objects (the first ones in that order); None keeps all.

  Returns:
    (T, H, W) int32 object ids.
  """
  semantic = np.asarray(semantic)
  instance = np.asarray(instance).astype(np.int64)
  is_stuff = ~np.asarray(is_thing, bool)
  is_stuff[0] = False
  is_object = (instance > 0) & ~is_stuff[np.clip(semantic, 0, len(is_stuff) - 1)]
  ids = np.where(is_object, instance, 0)
  counts = np.bincount(ids.ravel())
  counts[0] = 0
  present = np.flatnonzero(counts)
  if by == 'size':
    present = present[np.argsort(-counts[present], kind='stable')]
  elif by != 'id':
    raise ValueError(f"object_ids: by={by!r}; use 'id' or 'size'.")
  if limit is not None:
    present = present[:limit]
  table = np.zeros(len(counts), np.int32)
  table[present] = np.arange(1, len(present) + 1)
  return table[ids]
