"""KITTI-STEP videos, or any folder in its layout: `--config.data.name=kitti_step
--config.data.step_root=ROOT`.

Layout (deeplab2's g3doc/setup/kitti_step.md):

  ROOT/images/<split>/<sequence>/000000.png ...          the frames, numbered from 000000
  ROOT/panoptic_maps/<split>/<sequence>/000000.png ...   R = class, G * 256 + B = instance

Classes are the 19 Cityscapes train ids (0 road ... 18 bicycle) and 255 void; only person (11) and
car (13) carry track ids, and a person or car pixel with instance 0 is crowd. A folder with other
classes says so in ROOT/categories.json: a list of {"id": class value (0..254), "name",
"isthing": 0 or 1} (the thing classes carry track ids). KITTI-STEP's splits
are train (12 sequences) and val (0002, 0006, 0007, 0008, 0010, 0013, 0014, 0016, 0018); its test
sequences have no maps and are segmented with --mode=predict on ROOT/images/test.

The folder is converted once into a TFDS dataset `step_folder/root_<hash>` under
config.data.data_dir; the hash covers the path and the name, size and modification time of every
file of the splits read, so a changed file is converted again. Conversion checks every frame and
stops with an error naming the file: a frame without its map, a frame that does not decode
(truncated or corrupt: each is decoded once, as training will), a map that is not an 8-bit RGB
PNG, a map of another size than its frame, a class outside 0..18 and 255, frames of one sequence
of different sizes, or frames not numbered 000000, 000001, ... (predictions are named by
position).

Canonical example: one whole sequence. semantic = the class's category index + 1 (void 0);
instance: every
(class, id) pair of the sequence gets one id 1..S, the same in every frame (each stuff class is
one segment, each track one, the crowd of a thing class one with crowd = 1); void pixels are
(0, 0); track = the map's own track id on the pixels of tracked things, 0 on stuff, crowd and
void (the authors' training ids start from it: config.data.instance_id_order='track'). Training
cuts windows of config.data.video_window frames (a shorter training sequence is named in a warning
and gives none; training stops at start when no sequence of its split is long enough); evaluation
streams whole sequences.
"""

import hashlib
import os

import numpy as np
import PIL.Image
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from pix2seq_d.data.source import (
  FolderConfig,
  LocalFilesBuilder,
  Source,
  add_file_stamps,
  config_name,
  prepare,
)
from pix2seq_d.formats import step_png
from pix2seq_d.runtime import image_files, json_files

BUILDER_NAME = 'step_folder'
CATEGORIES_FILE = 'categories.json'
# Cityscapes' 19 train classes with their colours; KITTI-STEP tracks person and car only.
_CLASSES = (
  ('road', (128, 64, 128)),
  ('sidewalk', (244, 35, 232)),
  ('building', (70, 70, 70)),
  ('wall', (102, 102, 156)),
  ('fence', (190, 153, 153)),
  ('pole', (153, 153, 153)),
  ('traffic light', (250, 170, 30)),
  ('traffic sign', (220, 220, 0)),
  ('vegetation', (107, 142, 35)),
  ('terrain', (152, 251, 152)),
  ('sky', (70, 130, 180)),
  ('person', (220, 20, 60)),
  ('rider', (255, 0, 0)),
  ('car', (0, 0, 142)),
  ('truck', (0, 0, 70)),
  ('bus', (0, 60, 100)),
  ('train', (0, 80, 100)),
  ('motorcycle', (0, 0, 230)),
  ('bicycle', (119, 11, 32)),
)
THINGS = (11, 13)
# Category id = the train id, which KITTI-STEP maps and the STQ command use.
CATEGORIES = tuple(
  {'id': k, 'name': name, 'isthing': int(k in THINGS), 'color': list(color)}
  for k, (name, color) in enumerate(_CLASSES)
)


def read_categories(root: str) -> tuple[dict, ...]:
  """ROOT/categories.json when there is one (checked), else KITTI-STEP's 19 classes."""
  path = os.path.join(root, CATEGORIES_FILE)
  if not os.path.isfile(path):
    return CATEGORIES
  categories = json_files.load_json(path, 'categories')
  if not isinstance(categories, list) or not categories:
    raise json_files.FileFormatError(f'{path}: must hold a non-empty list of categories')
  seen = set()
  for k, category in enumerate(categories):
    json_files.require_keys(category, ('id', 'name', 'isthing'), f'{path} category {k}')
    category_id = category['id']
    if (
      not isinstance(category_id, int)
      or not 0 <= category_id < step_png.VOID
      or category_id in seen
    ):
      raise json_files.FileFormatError(
        f'{path} category {k}: id {category_id!r} must be a distinct class value in 0..254'
      )
    if category['isthing'] not in (0, 1, True, False):
      raise json_files.FileFormatError(f'{path} category {k}: isthing must be 0 or 1')
    seen.add(category_id)
  return tuple(
    {
      'id': c['id'],
      'name': str(c['name']),
      'isthing': int(c['isthing']),
      **({'color': c['color']} if 'color' in c else {}),
    }
    for c in categories
  )


def split_paths(root: str, split: str) -> dict[str, str]:
  """The frame and map folders of one split."""
  return {
    'images': os.path.join(root, 'images', split),
    'maps': os.path.join(root, 'panoptic_maps', split),
  }


def _layout() -> str:
  return (
    'Expected the KITTI-STEP layout:\n'
    '  ROOT/images/<split>/<sequence>/000000.png ...\n'
    '  ROOT/panoptic_maps/<split>/<sequence>/000000.png ...\n'
    '(--config.data.train_split / eval_split name the splits).'
  )


def sequences_of(root: str, split: str) -> dict[str, list[str]]:
  """{sequence: sorted frame file names} of a split, checked for the layout.

  Raises:
    FileNotFoundError: the root, the split's frame or map folder, or a sequence's maps are missing.
    ValueError: frames not numbered 000000, 000001, ..., or a split without sequences.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f'step_root {root!r} does not exist or is not a folder.\n{_layout()}')
  paths = split_paths(root, split)
  for kind, path in paths.items():
    if not os.path.isdir(path):
      what = (
        'panoptic maps (test has none: use --mode=predict on its images)'
        if kind == 'maps'
        else 'frames'
      )
      raise FileNotFoundError(
        f'KITTI-STEP folder {root!r}: missing {path}, the {what}.\n{_layout()}'
      )
  sequences = {}
  for name in sorted(os.listdir(paths['images'])):
    folder = os.path.join(paths['images'], name)
    if not os.path.isdir(folder):
      continue
    frames = sorted(f for f in os.listdir(folder) if f.lower().endswith('.png'))
    for k, frame in enumerate(frames):
      if frame != f'{k:06d}.png':
        raise ValueError(
          f'{os.path.join(folder, frame)}: frames must be numbered 000000.png, 000001.png, ... '
          f'(expected {k:06d}.png here).'
        )
    if frames:
      sequences[name] = frames
  if not sequences:
    raise ValueError(f'{paths["images"]} holds no sequence folders of .png frames.')
  return sequences


def builder_config(root: str, splits: tuple[str, ...]) -> FolderConfig:
  """The builder config of `root`, named by a hash of its path and of the name, size and
  modification time of categories.json and of every frame and map of `splits`."""
  root = os.path.abspath(root)
  digest = hashlib.sha1(root.encode())
  categories = os.path.join(root, CATEGORIES_FILE)
  if os.path.isfile(categories):
    stat = os.stat(categories)
    digest.update(f'{CATEGORIES_FILE}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
  for split in splits:
    digest.update(f'|{split}|'.encode())
    for folder in split_paths(root, split).values():
      add_file_stamps(digest, folder, root)
  return FolderConfig(
    name=config_name(digest),
    description=f'KITTI-STEP-layout folder {root}, splits {", ".join(splits)}',
    root=root,
    splits=splits,
  )


def semantic_table(categories) -> np.ndarray:
  """(256,) int32: class value -> semantic label (category index + 1), void (255) -> 0, a value
  that is no class -> -1."""
  table = np.full(step_png.VOID + 1, -1, np.int32)
  table[step_png.VOID] = 0
  for k, category in enumerate(categories):
    table[category['id']] = k + 1
  return table


def read_step_map(path: str, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(semantic label, instance) int32 (H, W) maps of a STEP PNG (`semantic_table`); ValueError
  names a bad file."""
  if not os.path.isfile(path):
    raise ValueError(f'{path}: the panoptic map of this frame is missing')
  classes, instance = step_png.read_step_png(path)
  semantic = table[classes]
  if (semantic < 0).any():
    value = int(classes[semantic < 0][0])
    valid = sorted(int(v) for v in np.flatnonzero(table > 0))
    raise ValueError(
      f'{path}: class {value} is neither a class of the folder ({valid[0]}..{valid[-1]}) nor '
      f'void ({step_png.VOID})'
    )
  return semantic, instance


def _frame_size(path: str) -> tuple[int, int]:
  """(height, width) from the image's header only."""
  try:
    with PIL.Image.open(path) as image:
      return image.height, image.width
  except image_files.READ_ERRORS as e:
    raise ValueError(f'{path}: cannot be read as an image ({e})') from None


def _checked_frame(path: str) -> tuple[bytes, tuple[int, int]]:
  """A frame's PNG bytes, as stored, and its (height, width), decoded once in full here as
  training decodes it (`decode_example`): a truncated or corrupt frame is refused at preparation,
  naming it, instead of failing inside tf.data mid-training where no file is named.

  Raises:
    ValueError: the frame cannot be decoded as a PNG; the message names it.
  """
  with open(path, 'rb') as f:
    encoded = f.read()
  try:
    shape = tf.io.decode_png(encoded, channels=3).shape
  except tf.errors.OpError as e:
    raise ValueError(f'{path}: cannot be decoded as a PNG ({e.message})') from None
  return encoded, (int(shape[0]), int(shape[1]))


class StepFolder(LocalFilesBuilder):
  """KITTI-STEP-layout sequences read from a local folder."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Encoded frames, [semantic, compact instance, crowd] label PNGs.',
    '1.1.0': 'A fourth label channel: the track id of thing pixels as the map gives it.',
  }

  def _features(self) -> dict:
    """One example per sequence; metadata: per split the sequence lengths and largest frame."""
    return {
      'video_id': np.int64,  # position in the sorted sequences of the split
      'video/name': tfds.features.Text(),
      # Per frame, the PNG's bytes as they are.
      'frames': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
      # Per frame, a 16-bit PNG of [semantic, instance, crowd, track].
      'labels': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
      'error': tfds.features.Text(),
    }

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only.
    root = self.builder_config.root
    categories = read_categories(root)
    generators, lengths, max_size = {}, {}, {}
    for split in self.builder_config.splits:
      sequences = sequences_of(root, split)
      paths = split_paths(root, split)
      lengths[split] = {name: len(frames) for name, frames in sequences.items()}
      sizes = [
        _frame_size(os.path.join(paths['images'], name, frames[0]))
        for name, frames in sequences.items()
      ]
      max_size[split] = [max(h for h, _ in sizes), max(w for _, w in sizes)]
      generators[split] = self._generate_examples(sequences, paths, categories)
    self.info.metadata['categories'] = list(categories)
    self.info.metadata['lengths'] = lengths
    self.info.metadata['max_image_size'] = max_size
    return generators

  def _generate_examples(self, sequences: dict[str, list[str]], paths: dict[str, str], categories):
    for video_id, (name, frames) in enumerate(sequences.items()):
      yield name, _build_sequence(name, video_id, frames, paths, categories)


def _build_sequence(
  name: str, video_id: int, frames: list[str], paths: dict[str, str], categories
) -> dict:
  """One sequence's example; raises ValueError naming the first bad file."""
  table = semantic_table(categories)
  is_thing = np.array([False] + [bool(c['isthing']) for c in categories])
  frame_paths = [os.path.join(paths['images'], name, f) for f in frames]
  map_paths = [os.path.join(paths['maps'], name, f) for f in frames]
  size = _frame_size(frame_paths[0])
  keys = set()
  encoded_frames = []
  for frame_path, map_path in zip(frame_paths, map_paths, strict=True):
    encoded, frame_size = _checked_frame(frame_path)
    if frame_size != size:
      raise ValueError(
        f'{frame_path}: its size {frame_size} differs from the first frame of sequence {name} '
        f'{size}'
      )
    encoded_frames.append(encoded)
    semantic, instance = read_step_map(map_path, table)
    if semantic.shape != size:
      raise ValueError(f'{map_path}: the map is {semantic.shape}, its frame {frame_path} {size}')
    labelled = semantic > 0
    keys.update(
      np.unique(semantic[labelled] * step_png.INSTANCE_SPAN + instance[labelled]).tolist()
    )
  if len(keys) >= step_png.INSTANCE_SPAN:
    raise ValueError(f'sequence {name}: {len(keys)} segments do not fit 16-bit ids')
  table_keys = np.array(sorted(keys), np.int64)
  labels = []
  for map_path in map_paths:
    semantic, instance = read_step_map(map_path, table)
    labelled = semantic > 0
    ids = (
      np.searchsorted(table_keys, semantic.astype(np.int64) * step_png.INSTANCE_SPAN + instance) + 1
    )
    tracked = labelled & is_thing[semantic]
    crowd = tracked & (instance == 0)
    track = np.where(tracked, instance, 0)
    label = np.stack([semantic, np.where(labelled, ids, 0), crowd, track], axis=-1)
    labels.append(tf.io.encode_png(label.astype(np.uint16)).numpy())
  return {
    'video_id': video_id,
    'video/name': name,
    'frames': encoded_frames,
    'labels': labels,
    'error': '',
  }


def decode_example(example: dict) -> dict:
  """One `step_folder` example -> the canonical video example (tf-traceable)."""
  frames = tf.map_fn(
    lambda encoded: tf.io.decode_png(encoded, channels=3),
    example['frames'],
    fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
  )
  labels = tf.map_fn(
    lambda encoded: tf.cast(tf.io.decode_png(encoded, channels=4, dtype=tf.uint16), tf.int32),
    example['labels'],
    fn_output_signature=tf.TensorSpec([None, None, 4], tf.int32),
  )
  return {
    'frames': tf.ensure_shape(frames, [None, None, None, 3]),
    'semantic': labels[..., 0],
    'instance': labels[..., 1],
    'crowd': labels[..., 2],
    'track': labels[..., 3],
    'video_id': tf.cast(example['video_id'], tf.int64),
    'video_name': example['video/name'],
    'error': example['error'],
  }


def make_builder(config) -> StepFolder:
  """The (not necessarily prepared) builder of config.data.step_root."""
  data = config.data
  if not data.step_root:
    raise ValueError(
      "config.data.name='kitti_step' reads a folder: set --config.data.step_root=ROOT "
      '(ROOT/images/<split>/..., ROOT/panoptic_maps/<split>/...).'
    )
  splits = tuple(dict.fromkeys((data.train_split, data.eval_split)))
  for split in splits:
    sequences_of(data.step_root, split)
  return StepFolder(config=builder_config(data.step_root, splits), data_dir=data.data_dir or None)


def make_source(config) -> Source:
  """The source of config.data.step_root, converted on first use.

  Training sequences shorter than config.data.video_window are named in a warning (they give no
  training window); when all are, training refuses the split at start (`Source.clip_lengths`).

  Raises:
    FileNotFoundError, ValueError: the layout or a file is wrong (the message names it).
  """
  builder = prepare(make_builder(config))
  metadata = builder.info.metadata
  train = config.data.train_split
  window = int(config.data.video_window)
  for name, length in sorted(metadata['lengths'].get(train, {}).items()):
    if length < window:
      logging.warning(
        'KITTI-STEP sequence %s of split %s has %d frames, fewer than config.data.video_window=%d:'
        ' it is skipped in training.',
        name,
        train,
        length,
        window,
      )
  return Source(
    name='kitti_step',
    builder=builder,
    categories=tuple(metadata['categories']),
    decode=decode_example,
    clips=True,
    max_image_size={split: tuple(size) for split, size in metadata['max_image_size'].items()},
    frame_keys=('frames', 'labels'),
    clip_lengths={split: dict(lengths) for split, lengths in metadata['lengths'].items()},
    track_ids=True,
  )
