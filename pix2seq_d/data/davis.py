"""DAVIS 2017 videos: a folder in the official layout, or TFDS `davis` where prepared.

Official layout (DAVIS-2017-Unsupervised-trainval-480p.zip unpacked), selected by
`--config.data.name=davis --config.data.davis_root=ROOT`:

  ROOT/JPEGImages/<resolution>/<video>/00000.jpg ...
  ROOT/<annotations>/<resolution>/<video>/00000.png ...   palette PNGs, pixel = object id
  ROOT/ImageSets/2017/<split>.txt                          one video name per line

with <resolution> = config.data.davis_resolution ('480p'), <annotations> =
config.data.davis_annotations ('Annotations_unsupervised'; 'Annotations' for the semi-supervised
task) and <split> = config.data.train_split / eval_split ('train', 'val'). The first use prepares
the folder into config.data.data_dir under `davis_folder/<config>/`, the config name hashing the
root, resolution, annotations and the split lists.

Without davis_root, TFDS `davis/480p` (or `davis/full_resolution`) is read from data_dir; it holds
the semi-supervised 'Annotations' and the splits 'train' and 'validation'.

Canonical example: one whole video. As in the authors' DAVIS setup, the semantic channel is 0
for every pixel and the instance channel carries the objects: object pixels get instance = their
object id (consistent over the video), background is (0, 0); DAVIS void pixels
(config.data.davis_void_id in the annotations) are (0, 0) with crowd = 1, so training treats them
like crowd regions and evaluation leaves them out of J and F. The one category, 'object', only
names the objects (the class count is 2 with void). 'video_name' is the DAVIS sequence name.
"""

import collections
import functools
import hashlib
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from pix2seq_d.data.source import (
  FolderConfig,
  LocalFilesBuilder,
  Source,
  add_file_stamps,
  check_splits,
  config_name,
  inside_root,
  prepare,
)
from pix2seq_d.formats import davis_png

BUILDER_NAME = 'davis_folder'
TFDS_NAME = 'davis'
# The ImageSets sub-folder of the DAVIS 2017 release.
_IMAGE_SET = '2017'
# TFDS davis config name of each DAVIS resolution folder.
_TFDS_CONFIG_OF_RESOLUTION = {'480p': '480p', 'Full-Resolution': 'full_resolution'}
# TFDS davis has no numeric video id: the id is a hash of the video name into this many buckets.
_VIDEO_ID_BUCKETS = 2**62
_OBJECT_COLOR = [220, 20, 60]
CATEGORIES = (
  {'id': 1, 'name': 'object', 'supercategory': 'object', 'isthing': 1, 'color': _OBJECT_COLOR},
)


def folder_paths(root: str, resolution: str, annotations: str) -> dict[str, str]:
  """Returns the frame, annotation and image-set folders of a DAVIS root."""
  return {
    'frames': os.path.join(root, 'JPEGImages', resolution),
    'annotations': os.path.join(root, annotations, resolution),
    'image_sets': os.path.join(root, 'ImageSets', _IMAGE_SET),
  }


def _layout(resolution: str, annotations: str) -> str:
  return (
    'Expected the official DAVIS 2017 layout:\n'
    f'  ROOT/JPEGImages/{resolution}/<video>/00000.jpg ...\n'
    f'  ROOT/{annotations}/{resolution}/<video>/00000.png ...\n'
    f'  ROOT/ImageSets/{_IMAGE_SET}/<split>.txt\n'
    '(--config.data.davis_resolution, --config.data.davis_annotations, '
    '--config.data.train_split / eval_split choose the names).'
  )


def check_layout(root: str, resolution: str, annotations: str, splits: tuple[str, ...]) -> None:
  """Raises FileNotFoundError naming the first missing folder or split file of a DAVIS root."""
  layout = _layout(resolution, annotations)
  if not os.path.isdir(root):
    raise FileNotFoundError(f'davis_root {root!r} does not exist or is not a folder.\n{layout}')
  paths = folder_paths(root, resolution, annotations)
  for path in paths.values():
    if not os.path.isdir(path):
      raise FileNotFoundError(f'DAVIS folder {root!r}: missing {path}.\n{layout}')
  for split in splits:
    path = os.path.join(paths['image_sets'], f'{split}.txt')
    if not os.path.isfile(path):
      raise FileNotFoundError(f'DAVIS folder {root!r}: missing the split file {path}.\n{layout}')


class DavisFolderConfig(FolderConfig):
  """One DAVIS root, its resolution / annotation folders and the splits prepared from it."""

  def __init__(self, *, resolution: str, annotations: str, **kwargs):
    super().__init__(**kwargs)
    self.resolution = resolution
    self.annotations = annotations


def split_videos(image_sets: str, split: str, frames: str) -> list[str]:
  """The video names of ImageSets/2017/<split>.txt, each checked to name a folder inside the
  frames folder (`source.inside_root`: a line naming '../x' is refused, naming the line)."""
  path = os.path.join(image_sets, f'{split}.txt')
  with open(path) as f:
    lines = [(k, line.strip()) for k, line in enumerate(f, 1) if line.strip()]
  for k, name in lines:
    inside_root(frames, name, f'{path} line {k}')
  return [name for _, name in lines]


def builder_config(
  root: str, resolution: str, annotations: str, splits: tuple[str, ...]
) -> DavisFolderConfig:
  """Returns the builder config of a DAVIS root, named by a hash of what it reads: the split
  lists and the stamps of every frame and annotation of the listed videos."""
  root = os.path.abspath(root)
  paths = folder_paths(root, resolution, annotations)
  digest = hashlib.sha1('|'.join([root, resolution, annotations]).encode())
  for split in splits:
    videos = split_videos(paths['image_sets'], split, paths['frames'])
    digest.update(f'|{split}:{",".join(videos)}|'.encode())
    for video in videos:
      for folder in (paths['frames'], paths['annotations']):
        add_file_stamps(digest, os.path.join(folder, video), root)
  return DavisFolderConfig(
    name=config_name(digest),
    description=f'DAVIS folder {root} ({annotations}, {resolution}), splits {", ".join(splits)}',
    root=root,
    resolution=resolution,
    annotations=annotations,
    splits=splits,
  )


class DavisFolder(LocalFilesBuilder):
  """DAVIS 2017 videos read from a local folder in the official layout."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Encoded frames, object-id PNGs, errors.'}
  HAS_METADATA = False

  def _features(self) -> dict:
    """One example per video."""
    return {
      'video_id': np.int64,  # position in the sorted list of the root's videos.
      'video/name': tfds.features.Text(),
      'height': np.int64,
      'width': np.int64,
      # Per frame, the JPEG's bytes as they are, or b'' when it could not be decoded.
      'frames': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
      # Per frame, the object ids as a grayscale PNG, or b'' when missing or unreadable.
      'segmentations': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
      'error': tfds.features.Text(),
    }

  def _split_generators(self, dl_manager):
    """Reads each split's video list."""
    del dl_manager  # local files only.
    cfg = self.builder_config
    check_layout(cfg.root, cfg.resolution, cfg.annotations, cfg.splits)
    paths = folder_paths(cfg.root, cfg.resolution, cfg.annotations)
    # Ids follow the sorted videos of the whole root, so a video has one id in every split.
    all_videos = sorted(os.listdir(paths['frames']))
    video_id_of = {name: k for k, name in enumerate(all_videos)}
    generators = {}
    for split in cfg.splits:
      videos = split_videos(paths['image_sets'], split, paths['frames'])
      generators[split] = self._generate_examples(videos, video_id_of, paths)
    return generators

  def _generate_examples(self, videos: list[str], video_id_of: dict[str, int], paths: dict):
    """Yields (video name, example) for every video of the split."""
    for name in videos:
      yield name, _build_video(name, video_id_of.get(name, -1), paths)


def _read_frame(path: str) -> tuple[bytes, tuple[int, int] | None, str]:
  """Returns (JPEG bytes or b'', (H, W) or None, error or '')."""
  try:
    with open(path, 'rb') as f:
      encoded = f.read()
    shape = tf.io.decode_image(encoded, channels=3, expand_animations=False).shape
    return encoded, tuple(shape[:2]), ''
  except OSError as e:
    return b'', None, f'{path}: cannot read the frame ({e.strerror or e})'
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
    return b'', None, f'{path}: cannot decode the frame ({e.message.splitlines()[0]})'


def _read_annotation(path: str) -> tuple[bytes, tuple[int, int] | None, str]:
  """Returns (object ids as a grayscale PNG or b'', (H, W) or None, error or '')."""
  try:
    ids = davis_png.read_indexed_png(path)
  except FileNotFoundError:
    return b'', None, f'{path}: the annotation of this frame is missing'
  except ValueError as e:  # the message names the file
    return b'', None, str(e)
  # A palette PNG's pixels are palette indices = object ids; TF's PNG decoder would return the
  # palette colours instead, so the indices are re-encoded as a grayscale PNG.
  return tf.io.encode_png(ids[:, :, None]).numpy(), ids.shape, ''


def _build_video(name: str, video_id: int, paths: dict) -> dict:
  """Returns one video example, with every problem of its files in 'error'."""
  errors = []
  frame_dir = os.path.join(paths['frames'], name)
  annotation_dir = os.path.join(paths['annotations'], name)
  if not os.path.isdir(frame_dir):
    errors.append(f'{frame_dir}: the frames of video {name!r} are missing')
    frame_names = []
  else:
    frame_names = sorted(f for f in os.listdir(frame_dir) if f.lower().endswith('.jpg'))
    if not frame_names:
      errors.append(f'{frame_dir}: video {name!r} has no .jpg frames')
  frames, segmentations = [], []
  shapes = collections.Counter()
  for frame_name in frame_names:
    frame_path = os.path.join(frame_dir, frame_name)
    annotation_path = os.path.join(annotation_dir, os.path.splitext(frame_name)[0] + '.png')
    encoded, frame_shape, frame_error = _read_frame(frame_path)
    ids_png, ids_shape, annotation_error = _read_annotation(annotation_path)
    errors += [frame_error, annotation_error]
    shapes.update(s for s in (frame_shape, ids_shape) if s)
    frames.append(encoded)
    segmentations.append(ids_png)
  height, width = shapes.most_common(1)[0][0] if shapes else (0, 0)
  if len(shapes) > 1:
    errors.append(f'{frame_dir}: frames and annotations of different sizes {sorted(shapes)}')
  return {
    'video_id': video_id,
    'video/name': name,
    'height': height,
    'width': width,
    'frames': frames,
    'segmentations': segmentations,
    'error': '; '.join(e for e in errors if e),
  }


def object_maps(ids: tf.Tensor, void_id: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Returns semantic (all 0), instance and crowd (T, H, W) int32 of DAVIS object ids (T, H, W)."""
  ids = tf.cast(ids, tf.int32)
  void = tf.equal(ids, void_id)
  is_object = (ids > 0) & ~void
  instance = tf.where(is_object, ids, tf.zeros_like(ids))
  return tf.zeros_like(ids), instance, tf.cast(void, tf.int32)


def decode_folder_example(example: dict, void_id: int) -> dict:
  """Maps one `davis_folder` example to the canonical video example (tf-traceable).

  Args:
    example: the builder's features: encoded 'frames' and 'segmentations' (T,), 'height',
      'width', 'video_id', 'error'.
    void_id: the annotation value of DAVIS void pixels.

  Returns:
    {'frames' (T, H, W, 3) uint8, 'semantic', 'instance', 'crowd' (T, H, W) int32, 'video_id'
    int64, 'video_name' and 'error' tf.string}. A video with an error is all zeros of its
    (T, H, W): its files may be missing or of different sizes, and the pipeline skips or rejects
    it anyway.
  """
  error = example['error']

  def decode_files():
    frames = tf.map_fn(
      lambda encoded: tf.io.decode_image(encoded, channels=3, expand_animations=False),
      example['frames'],
      fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )
    ids = tf.map_fn(
      lambda encoded: tf.io.decode_png(encoded, channels=1),
      example['segmentations'],
      fn_output_signature=tf.TensorSpec([None, None, 1], tf.uint8),
    )
    return frames, ids[..., 0]

  def placeholders():
    size = tf.stack(
      [
        tf.size(example['frames']),
        tf.cast(example['height'], tf.int32),
        tf.cast(example['width'], tf.int32),
      ]
    )
    return tf.zeros(tf.concat([size, [3]], 0), tf.uint8), tf.zeros(size, tf.uint8)

  frames, ids = tf.cond(tf.equal(error, ''), decode_files, placeholders)
  frames = tf.ensure_shape(frames, [None, None, None, 3])
  semantic, instance, crowd = object_maps(ids, void_id)
  return {
    'frames': frames,
    'semantic': semantic,
    'instance': instance,
    'crowd': crowd,
    'video_id': tf.cast(example['video_id'], tf.int64),
    'video_name': example['video/name'],
    'error': error,
  }


def decode_tfds_example(example: dict, void_id: int) -> dict:
  """Maps one decoded TFDS `davis` example to the canonical video example (tf-traceable).

  Args:
    example: TFDS davis features: 'video' {'frames' (T, H, W, 3) uint8, 'segmentations'
      (T, H, W, 1) uint8 object ids}, 'metadata' {'video_name', 'num_frames'}.
    void_id: the annotation value of DAVIS void pixels.

  Returns:
    The canonical video example; 'video_id' is a hash of the video name (TFDS davis has no id).
  """
  semantic, instance, crowd = object_maps(example['video']['segmentations'][..., 0], void_id)
  name = example['metadata']['video_name']
  return {
    'frames': example['video']['frames'],
    'semantic': semantic,
    'instance': instance,
    'crowd': crowd,
    'video_id': tf.strings.to_hash_bucket_fast(name, _VIDEO_ID_BUCKETS),
    'video_name': name,
    'error': tf.constant(''),
  }


def check_resolution(config) -> None:
  """Raises ValueError naming config.data.davis_resolution when TFDS davis (read without
  config.data.davis_root) has no such resolution; a folder of one's own may have any."""
  data = config.data
  if not data.davis_root and data.davis_resolution not in _TFDS_CONFIG_OF_RESOLUTION:
    raise ValueError(
      f'config.data.davis_resolution={data.davis_resolution!r}: TFDS davis has no such '
      f'resolution; use one of {", ".join(map(repr, _TFDS_CONFIG_OF_RESOLUTION))} or a folder '
      '(--config.data.davis_root=ROOT).'
    )


def _tfds_source(config) -> Source:
  data = config.data
  check_resolution(config)
  name = f'{TFDS_NAME}/{_TFDS_CONFIG_OF_RESOLUTION[data.davis_resolution]}'
  builder = tfds.builder(name, data_dir=data.data_dir or None)
  if not builder.is_prepared():
    root = str(builder.data_dir_root)
    raise FileNotFoundError(
      f'DAVIS (TFDS {name}:{builder.version}) is not prepared in data_dir {root!r} '
      f'(no {builder.data_dir}), and --config.data.davis_root is empty.\n'
      'Either point davis_root at an unpacked DAVIS 2017 folder (prepared automatically):\n'
      '  --config.data.davis_root=ROOT   (ROOT/JPEGImages/480p, '
      'ROOT/Annotations_unsupervised/480p, ROOT/ImageSets/2017)\n'
      f'or prepare TFDS davis (downloads the semi-supervised release) with\n'
      f'  tfds build {name} --data_dir={data.data_dir or root}'
    )
  check_splits(builder, (data.train_split, data.eval_split))
  return _source(builder, decode_tfds_example, data.davis_void_id)


def _source(builder, decode, void_id: int, **fields) -> Source:
  """The DAVIS source of `builder` (TFDS davis or a davis_root folder): one object category,
  clips decoded by `decode` with DAVIS's void pixels (value `void_id`) as crowd; `fields`: more
  of the Source's fields."""
  return Source(
    name=TFDS_NAME,
    builder=builder,
    categories=CATEGORIES,
    decode=functools.partial(decode, void_id=void_id),
    clips=True,
    **fields,
  )


def make_builder(config) -> DavisFolder:
  """Returns the (not necessarily prepared) builder of config.data.davis_root."""
  data = config.data
  splits = tuple(dict.fromkeys((data.train_split, data.eval_split)))
  check_layout(data.davis_root, data.davis_resolution, data.davis_annotations, splits)
  cfg = builder_config(data.davis_root, data.davis_resolution, data.davis_annotations, splits)
  return DavisFolder(config=cfg, data_dir=data.data_dir or None)


def make_source(config) -> Source:
  """Returns the DAVIS source: config.data.davis_root if set (prepared on first use), else TFDS.

  Args:
    config: the whole experiment config; reads config.data.davis_root, davis_resolution,
      davis_annotations, davis_void_id, train_split, eval_split and data_dir.

  Raises:
    FileNotFoundError: a folder or split file of davis_root is missing, or (without davis_root)
      TFDS davis is not prepared in data_dir.
  """
  data = config.data
  if not data.davis_root:
    return _tfds_source(config)
  builder = prepare(make_builder(config))
  return _source(
    builder, decode_folder_example, data.davis_void_id, frame_keys=('frames', 'segmentations')
  )
