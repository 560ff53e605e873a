"""COCO panoptic format: segment-id PNGs (id = R + 256 G + 256^2 B) and their JSON.

The format (cocodataset.org/#format-data, "panoptic segmentation"): one RGB PNG per image whose
pixel colour encodes a segment id (0 is void), and one JSON file whose 'annotations' list holds, per
image, {'image_id', 'file_name', 'segments_info': [{'id', 'category_id', 'iscrowd', 'area',
'bbox'}, ...]}. 'area' is the pixel count and 'bbox' is [x, y, width, height] of the tightest box
around the segment's pixels, both as COCO writes them.

The id packing (`pack_id`) is written once here: the tf.data pipeline applies it to TF tensors.
Pure numpy + Pillow: no jax, no tensorflow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from pix2seq_d.runtime import image_files, json_files

# Segment ids are 24-bit: three 8-bit colour channels.
ID_CHANNEL_BASE = 256
MAX_SEGMENT_ID = ID_CHANNEL_BASE**3 - 1


class PanopticFormatError(json_files.FileFormatError):
  """Input that breaks the COCO panoptic format (ids, segments, files); the message says where."""


def pack_id(red, green, blue):
  """Segment id = R + 256 G + 256^2 B of three integer channels of one shape (...).

  Only `+` and `*` are used, so numpy arrays, Python ints and TF int32 tensors (the input
  pipeline decodes PNGs with TF) all work; the channels must be of an integer type wide enough
  for 24 bits.
  """
  return red + ID_CHANNEL_BASE * green + ID_CHANNEL_BASE**2 * blue


def rgb2id(color):
  """COCO panoptic colour -> segment id, id = R + 256 G + 256^2 B.

  Args:
    color: array (..., 3) of any integer dtype (the channels of a panoptic PNG), or a sequence of
      three ints.

  Returns:
    int32 array (...) for an array input, a Python int for a sequence of three ints.
  """
  if isinstance(color, np.ndarray) and color.ndim >= 2:
    channels = color[..., :3].astype(np.int32)
    return pack_id(channels[..., 0], channels[..., 1], channels[..., 2])
  return pack_id(int(color[0]), int(color[1]), int(color[2]))


def id2rgb(ids):
  """Segment id -> COCO panoptic colour; the inverse of `rgb2id`.

  Args:
    ids: integer array (...) with values in [0, 2^24), or a Python int.

  Returns:
    uint8 array (..., 3) for an array input, a list [R, G, B] for an int.
  """
  if isinstance(ids, np.ndarray):
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
      raise PanopticFormatError(f'segment ids must lie in [0, {MAX_SEGMENT_ID}]')
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)
  ids = int(ids)
  return [ids & 255, (ids >> 8) & 255, (ids >> 16) & 255]


def read_panoptic_png(path: str) -> np.ndarray:
  """Reads a COCO panoptic PNG as an int32 (H, W) map of segment ids.

  Raises:
    FileNotFoundError: no such file.
    PanopticFormatError: the file cannot be decoded (corrupt, truncated, not an image) or is not
      an RGB image; the message names the file.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'panoptic PNG {path} does not exist')
  try:
    with Image.open(path) as image:
      if image.mode not in ('RGB', 'RGBA', 'P'):
        raise PanopticFormatError(
          f'{path}: a panoptic PNG must be RGB (id = R + 256 G + 256^2 B), got mode {image.mode}'
        )
      # RGBA bytes read as little-endian int32 are R + 256 G + 256^2 B + 256^3 A: one C pass.
      rgba = np.asarray(image.convert('RGBA'))
  except image_files.READ_ERRORS as e:  # PIL's errors for corrupt or truncated files.
    if isinstance(e, PanopticFormatError):
      raise
    raise PanopticFormatError(f'{path}: cannot be decoded as a PNG ({e})') from None
  return (rgba.view('<i4')[..., 0] & MAX_SEGMENT_ID).astype(np.int32, copy=False)


# Per-thread lookup table id -> segment position (-1: none), 2^24 int16 = 32 MiB, made on first
# use; each call writes its segments' entries and clears them again.
_tables = threading.local()
_TABLE_MAX_SEGMENTS = 2**15 - 1


def _lookup_table() -> np.ndarray:
  table = getattr(_tables, 'table', None)
  if table is None:
    table = _tables.table = np.full(MAX_SEGMENT_ID + 1, -1, np.int16)
  return table


def segment_index(ids: np.ndarray, segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Maps every pixel to the position of its id in `segment_ids`.

  Vectorised, no loops: one gather from a lookup table over the 24-bit ids (a binary search over
  the sorted segment ids for other maps).

  Args:
    ids: integer (H, W) map of segment ids.
    segment_ids: (S,) distinct segment ids.

  Returns:
    (index, unknown): index is an int64 (H, W) map with values in [0, S] where S marks pixels whose
    id is not in `segment_ids` (void included); unknown is the sorted array of the non-zero ids of
    the map that are not in `segment_ids`.
  """
  ids = np.asarray(ids)
  segment_ids = np.asarray(segment_ids, dtype=np.int64).reshape(-1)
  num_segments = segment_ids.size
  in_range = ids.size == 0 or (ids.min() >= 0 and ids.max() <= MAX_SEGMENT_ID)
  if in_range and num_segments <= _TABLE_MAX_SEGMENTS:
    table = _lookup_table()
    usable = (segment_ids >= 0) & (segment_ids <= MAX_SEGMENT_ID)
    table[segment_ids[usable]] = np.flatnonzero(usable)
    try:
      index = table[ids].astype(np.int64)
    finally:
      table[segment_ids[usable]] = -1
    found = index >= 0
    index[~found] = num_segments
  elif num_segments == 0:
    index = np.zeros(ids.shape, np.int64)
    found = np.zeros(ids.shape, bool)
  else:
    order = np.argsort(segment_ids, kind='stable')
    sorted_ids = segment_ids[order]
    position = np.minimum(np.searchsorted(sorted_ids, ids), num_segments - 1)
    found = sorted_ids[position] == ids
    index = np.where(found, order[position], num_segments)
  not_found = ~found & (ids != 0)
  unknown = np.unique(ids[not_found]) if not_found.any() else np.zeros((0,), np.int64)
  return index, unknown


def segment_area_bbox(ids: np.ndarray, segment_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Pixel count and COCO bbox [x, y, width, height] of each segment, vectorised.

  Args:
    ids: integer (H, W) map of segment ids.
    segment_ids: (S,) distinct segment ids.

  Returns:
    (area, bbox): int64 (S,) pixel counts and int64 (S, 4) boxes; a segment without pixels gets
    area 0 and box [0, 0, 0, 0].
  """
  ids = _as_id_map(ids, 'ids')
  height, width = ids.shape
  num_segments = len(segment_ids)
  index, _ = segment_index(ids, np.asarray(segment_ids, np.int64))
  buckets = num_segments + 1
  area = np.bincount(index.ravel(), minlength=buckets)[:num_segments]
  # Presence of each segment in each row / column: one bincount each over (row, segment) keys.
  rows = (
    np.bincount(
      (index + buckets * np.arange(height)[:, None]).ravel(), minlength=height * buckets
    ).reshape(height, buckets)[:, :num_segments]
    > 0
  )
  cols = (
    np.bincount(
      (index + buckets * np.arange(width)[None, :]).ravel(), minlength=width * buckets
    ).reshape(width, buckets)[:, :num_segments]
    > 0
  )
  y_min = np.argmax(rows, axis=0)
  y_max = height - 1 - np.argmax(rows[::-1], axis=0)
  x_min = np.argmax(cols, axis=0)
  x_max = width - 1 - np.argmax(cols[::-1], axis=0)
  bbox = np.stack([x_min, y_min, x_max - x_min + 1, y_max - y_min + 1], axis=-1).astype(np.int64)
  bbox[area == 0] = 0
  return area.astype(np.int64), bbox


def _as_id_map(ids, name: str) -> np.ndarray:
  """Checks an (H, W) integer id map and returns it as int32 or int64."""
  ids = np.asarray(ids)
  if ids.ndim != 2:
    raise PanopticFormatError(f'{name} must be an (H, W) map of segment ids, got shape {ids.shape}')
  if not np.issubdtype(ids.dtype, np.integer):
    raise PanopticFormatError(f'{name} must hold integers, got dtype {ids.dtype}')
  if ids.dtype not in (np.int32, np.int64):
    ids = ids.astype(np.int64)
  return ids


def segments_info(ids: np.ndarray, segments: Sequence[dict], where: str = 'image') -> list[dict]:
  """Validates one image's (ids, segments) and returns COCO segments_info with area and bbox.

  Checks that the map's ids lie in [0, 2^24), that segment ids are distinct and non-zero, that
  every non-zero id of the map has a segment and every segment has pixels.

  Args:
    ids: integer (H, W) map of segment ids, 0 = void.
    segments: dicts with 'id', 'category_id' and optionally 'iscrowd' (default 0).
    where: names the image in error messages.

  Returns:
    [{'id', 'category_id', 'iscrowd', 'area', 'bbox'}, ...] in the order of `segments`.
  """
  ids = _as_id_map(ids, f'{where}: ids')
  if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
    raise PanopticFormatError(f'{where}: segment ids must lie in [0, {MAX_SEGMENT_ID}]')
  segment_ids = [int(segment['id']) for segment in segments]
  check_segment_ids(segment_ids, where)
  for segment in segments:
    if 'category_id' not in segment:
      raise PanopticFormatError(f'{where}: segment {segment["id"]} has no category_id')
  _, unknown = segment_index(ids, np.asarray(segment_ids, np.int64))
  if unknown.size:
    raise PanopticFormatError(
      f'{where}: segment ids {unknown[:10].tolist()} are in the map and not in the segments'
    )
  area, bbox = segment_area_bbox(ids, segment_ids)
  empty = [segment_id for segment_id, count in zip(segment_ids, area, strict=True) if count == 0]
  if empty:
    raise PanopticFormatError(
      f'{where}: segments {empty[:10]} are in the segments and have no pixels'
    )
  return [
    {
      'id': segment_id,
      'category_id': int(segment['category_id']),
      'iscrowd': int(segment.get('iscrowd', 0)),
      'area': int(count),
      'bbox': [int(v) for v in box],
    }
    for segment_id, segment, count, box in zip(segment_ids, segments, area, bbox, strict=True)
  ]


def check_segment_ids(segment_ids: Sequence[int], where: str) -> None:
  """Segment ids must be distinct and in [1, 2^24)."""
  if len(set(segment_ids)) != len(segment_ids):
    seen, repeated = set(), []
    for segment_id in segment_ids:
      if segment_id in seen:
        repeated.append(segment_id)
      seen.add(segment_id)
    raise PanopticFormatError(f'{where}: segment ids {repeated[:10]} occur more than once')
  bad = [segment_id for segment_id in segment_ids if not 0 < segment_id <= MAX_SEGMENT_ID]
  if bad:
    raise PanopticFormatError(
      f'{where}: segment ids {bad[:10]} are outside [1, {MAX_SEGMENT_ID}] (0 is void)'
    )


class PanopticWriter:
  """Writes predictions in COCO panoptic format, all or nothing, one image at a time.

  `add` writes each image's PNG into a staging folder inside output_dir (created at the first
  image), so nothing is held in memory; `commit` writes the JSON, moves every PNG to
  output_dir/panoptic/<file_stem>.png and then the JSON to output_dir/panoptic.json =
  {'annotations': [{'image_id', 'file_name', 'segments_info'}], 'categories': categories}. On
  `abort` (or any error before the commit) the staging folder is removed and the previous
  contents of output_dir are left as they were.
  """

  def __init__(self, output_dir: str, categories: Sequence[dict] = ()):
    self.output_dir = output_dir
    self.categories = list(categories)
    self._staging: str | None = None
    self._records: list[dict] = []
    self._stems: set[str] = set()

  def add(self, image_id: Any, file_stem: str, ids: np.ndarray, segments: Sequence[dict]) -> None:
    """Stages one image: ids (H, W) int segment ids, segments dicts {'id', 'category_id',
    'iscrowd' (optional)}; 'area' and 'bbox' are computed here.

    Raises:
      PanopticFormatError: a file stem that is not a plain name or is used twice, or segments
        that do not match the ids.
    """
    where = f'image {image_id}'
    file_stem = str(file_stem)
    if not file_stem or os.sep in file_stem or (os.altsep and os.altsep in file_stem):
      raise PanopticFormatError(f'{where}: file stem {file_stem!r} must be a plain file name')
    if file_stem in self._stems:
      raise PanopticFormatError(f'{where}: file stem {file_stem!r} is used twice')
    info = segments_info(ids, segments, where)
    if self._staging is None:
      os.makedirs(self.output_dir, exist_ok=True)
      self._staging = tempfile.mkdtemp(prefix='.panoptic-tmp-', dir=self.output_dir)
    self._stems.add(file_stem)
    Image.fromarray(id2rgb(np.asarray(ids))).save(os.path.join(self._staging, file_stem + '.png'))
    self._records.append(
      {'image_id': image_id, 'file_name': file_stem + '.png', 'segments_info': info}
    )

  def commit(self) -> str:
    """Moves the staged images and the JSON into place; returns the JSON's path."""
    if self._staging is None:
      os.makedirs(self.output_dir, exist_ok=True)
      self._staging = tempfile.mkdtemp(prefix='.panoptic-tmp-', dir=self.output_dir)
    try:
      json_tmp = os.path.join(self._staging, 'panoptic.json')
      with open(json_tmp, 'w') as f:
        json.dump({'annotations': self._records, 'categories': self.categories}, f)
      png_dir = os.path.join(self.output_dir, 'panoptic')
      os.makedirs(png_dir, exist_ok=True)
      for record in self._records:
        os.replace(
          os.path.join(self._staging, record['file_name']),
          os.path.join(png_dir, record['file_name']),
        )
      json_path = os.path.join(self.output_dir, 'panoptic.json')
      os.replace(json_tmp, json_path)
    finally:
      self.abort()
    return json_path

  def abort(self) -> None:
    """Removes the staging folder (nothing of this writer is committed after it)."""
    if self._staging is not None:
      shutil.rmtree(self._staging, ignore_errors=True)
      self._staging = None


def write_panoptic_predictions(
  output_dir: str,
  annotations: Iterable[tuple[Any, str, np.ndarray, Sequence[dict]]],
  categories: Sequence[dict] = (),
) -> str:
  """Writes (image_id, file_stem, ids (H, W), segments) annotations in COCO panoptic format, all
  or nothing (`PanopticWriter`); returns the path of the JSON file."""
  writer = PanopticWriter(output_dir, categories)
  try:
    for annotation in annotations:
      writer.add(*annotation)
    return writer.commit()
  finally:
    writer.abort()


def segments_from_semantic_instance(
  semantic: np.ndarray,
  instance: np.ndarray,
  categories: Sequence[dict],
  crowd: np.ndarray | None = None,
) -> tuple[np.ndarray, list[dict]]:
  """(semantic, instance) label maps -> a panoptic id map and its segments.

  Our label convention: semantic = category index + 1 (0 void), instance ids with 0 void. Every
  distinct (semantic > 0, instance > 0) pair becomes one segment with a fresh id 1..S (in the
  order of (semantic, instance)); pixels with semantic 0 or instance 0 are void. Crowd pixels make
  iscrowd = 1 segments; a pair whose pixels are partly crowd is split into a crowd and a non-crowd
  segment.

  Args:
    semantic: integer (H, W), category index + 1.
    instance: integer (H, W), instance ids.
    categories: the categories; semantic s is categories[s - 1].
    crowd: optional bool (H, W) crowd flags.

  Returns:
    ids: int32 (H, W) segment ids (0 void).
    segments: [{'id', 'category_id', 'iscrowd', 'area'}] for ids 1..S.
  """
  semantic = np.asarray(semantic).astype(np.int64)
  instance = np.asarray(instance).astype(np.int64)
  if semantic.shape != instance.shape or semantic.ndim != 2:
    raise ValueError(f'semantic {semantic.shape} and instance {instance.shape} must be one (H, W)')
  if semantic.size and (semantic.min() < 0 or semantic.max() > len(categories)):
    raise ValueError(
      f'semantic values must lie in [0, {len(categories)}] (category index + 1), got '
      f'[{semantic.min()}, {semantic.max()}]'
    )
  if instance.size and instance.min() < 0:
    raise ValueError('instance ids must be >= 0')
  is_crowd = np.zeros(semantic.shape, bool) if crowd is None else np.asarray(crowd, bool)
  if is_crowd.shape != semantic.shape:
    raise ValueError(f'crowd {is_crowd.shape} must have the shape of semantic {semantic.shape}')
  valid = (semantic > 0) & (instance > 0)
  instance_span = int(instance.max()) + 1 if instance.size else 1
  key = (semantic[valid] * instance_span + instance[valid]) * 2 + is_crowd[valid]
  keys, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
  if keys.size > MAX_SEGMENT_ID:
    raise ValueError(f'{keys.size} segments do not fit 24-bit segment ids')
  ids = np.zeros(semantic.shape, np.int32)
  ids[valid] = inverse.reshape(-1) + 1
  category_ids = [int(category['id']) for category in categories]
  segments = [
    {
      'id': k + 1,
      'category_id': category_ids[int(k_key // 2 // instance_span) - 1],
      'iscrowd': int(k_key % 2),
      'area': int(count),
    }
    for k, (k_key, count) in enumerate(zip(keys, counts, strict=True))
  ]
  return ids, segments


def is_thing_table(categories) -> np.ndarray:
  """(len(categories) + 1,) bool: entry k + 1 tells whether categories[k] is a thing; 0 = void."""
  return np.array([False] + [bool(c['isthing']) for c in categories])
