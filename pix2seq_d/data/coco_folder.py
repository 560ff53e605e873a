"""Any folder in the official COCO panoptic layout, through a TFDS builder of the project's own.

  ROOT/annotations/panoptic_<split>.json    images, annotations (segments_info), categories
  ROOT/annotations/panoptic_<split>/*.png   panoptic PNGs, id = R + 256 G + 256^2 B (0 = void)
  ROOT/<split>/*.jpg                        the images

Selected by `--config.data.name=coco_folder --config.data.coco_root=ROOT
--config.data.train_split=NAME --config.data.eval_split=NAME`. The categories, their number and
thing / stuff flags come from the JSON. The first use prepares the two splits (local files only)
into config.data.data_dir ('' = TFDS default) under `coco_panoptic_folder/<config>/`, where the
config name hashes the root path and the name, size and modification time of every file of the
splits (JSON, PNGs, images): two roots never share a prepared copy, and a fixed or replaced file
makes the next run prepare the folder again (an unchanged folder costs one directory scan, about a
second per 100k files on a local disk). A preparation that fails (e.g. invalid JSON) leaves no
empty folders behind in data_dir.

Image ids are the JSON's integers; a JSON whose ids are not all integers (Cityscapes' converter
names images by their file stem) numbers its images 0, 1, ... in the order of their ids.

Examples keep the encoded JPEG and panoptic PNG bytes with the segment lists; `decode` decodes
them in tf.data, so shuffle buffers hold compressed bytes. Preparation decodes every image and PNG
once to check it: a file that cannot be decoded, has the wrong size, or a PNG holding a segment id
the JSON lacks is recorded in the example's 'error' (naming the file), never a failed preparation.
A JSON segment whose id is absent from the PNG is fine (area 0). The JSON itself must be valid and
hold the fields above: anything else stops the preparation with an error naming the file and the
record.
"""

import collections
import concurrent.futures
import hashlib
import os
import shutil

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from pix2seq_d.data import coco
from pix2seq_d.data.source import (
  FolderConfig,
  LocalFilesBuilder,
  Source,
  add_file_stamps,
  config_name,
  inside_root,
  prepare,
)
from pix2seq_d.formats import coco_panoptic
from pix2seq_d.runtime import json_files

BUILDER_NAME = 'coco_panoptic_folder'
_LAYOUT = (
  'Expected the official COCO panoptic layout:\n'
  '  ROOT/annotations/panoptic_<split>.json\n'
  '  ROOT/annotations/panoptic_<split>/*.png\n'
  '  ROOT/<split>/*.jpg\n'
  'with <split> = --config.data.train_split / --config.data.eval_split '
  '(e.g. train2017, val2017).'
)
# Every channel of a colour is drawn below this, to keep generated category colours visible.
_COLOR_LEVELS = 256


def split_paths(root: str, split: str) -> dict[str, str]:
  """Returns the JSON, PNG folder and image folder paths of one split of a COCO panoptic root."""
  return {
    'json': os.path.join(root, 'annotations', f'panoptic_{split}.json'),
    'png_dir': os.path.join(root, 'annotations', f'panoptic_{split}'),
    'image_dir': os.path.join(root, split),
  }


def check_layout(root: str, splits: tuple[str, ...]) -> None:
  """Raises FileNotFoundError naming the first missing path of `root` for `splits`."""
  if not root:
    raise FileNotFoundError(
      'data.name=coco_folder needs --config.data.coco_root=ROOT, a folder in the COCO panoptic '
      'layout.\n' + _LAYOUT
    )
  if not os.path.isdir(root):
    raise FileNotFoundError(f'coco_root {root!r} does not exist or is not a folder.\n{_LAYOUT}')
  for split in splits:
    paths = split_paths(root, split)
    for key, is_present in (
      ('json', os.path.isfile),
      ('png_dir', os.path.isdir),
      ('image_dir', os.path.isdir),
    ):
      if not is_present(paths[key]):
        raise FileNotFoundError(
          f'COCO panoptic folder {root!r}, split {split!r}: missing {paths[key]}.\n{_LAYOUT}'
        )


def _category_color(category_id: int) -> list[int]:
  """Returns a fixed pseudo-random colour for a category whose JSON gives none."""
  rng = np.random.default_rng(category_id)
  return [int(c) for c in rng.integers(0, _COLOR_LEVELS, size=3)]


def categories_from_json(categories: list[dict], json_path: str) -> tuple[dict, ...]:
  """Returns panopticapi-style categories ('id', 'name', 'isthing', 'color') in the JSON order."""
  result = []
  for category in categories:
    missing = [key for key in ('id', 'name', 'isthing') if key not in category]
    if missing:
      raise ValueError(f'{json_path}: category {category} lacks {missing}.')
    if not _is_int(category['id']) or not 0 <= category['id'] < 2**31:
      raise ValueError(
        f'{json_path}: category {category} has id {category["id"]!r}: use 0..2^31-1.'
      )
    if category['isthing'] not in (0, 1) or isinstance(category['isthing'], float):
      raise ValueError(
        f'{json_path}: category {category["id"]} ({category["name"]}) has isthing '
        f'{category["isthing"]!r}: use 1 (things) or 0 (stuff).'
      )
    result.append(
      {
        'id': int(category['id']),
        'name': str(category['name']),
        'supercategory': str(category.get('supercategory', '')),
        'isthing': int(category['isthing']),
        'color': [int(c) for c in category.get('color', _category_color(category['id']))],
      }
    )
  return tuple(result)


def builder_config(root: str, splits: tuple[str, ...]) -> FolderConfig:
  """Returns the builder config of `root`, named by a hash of the path, splits and file stamps.

  The stamps are the name, size and modification time of each split's JSON and of every file
  under its PNG and image folders (`source.add_file_stamps`; the JSON's file names must lie
  there), so any change to the data makes a new config (a fresh preparation).
  """
  root = os.path.abspath(root)
  digest = hashlib.sha1(root.encode())
  for split in splits:
    paths = split_paths(root, split)
    stat = os.stat(paths['json'])
    digest.update(f'|{split}:{stat.st_size}:{stat.st_mtime_ns}|'.encode())
    add_file_stamps(digest, paths['png_dir'], root)
    add_file_stamps(digest, paths['image_dir'], root)
  return FolderConfig(
    name=config_name(digest),
    description=f'COCO panoptic folder {root}, splits {", ".join(splits)}',
    root=root,
    splits=splits,
  )


class CocoPanopticFolder(LocalFilesBuilder):
  """COCO panoptic annotations read from a local folder in the official layout."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Encoded image and panoptic PNG bytes, segment lists, errors.',
    '1.1.0': "Metadata 'max_image_size' per split; config names hash every file's stamps.",
  }

  def _features(self) -> dict:
    """One example per image; categories are stored in the metadata at preparation."""
    return {
      'image_id': np.int64,
      'height': np.int64,
      'width': np.int64,
      # The image file's bytes as they are, or b'' when it could not be decoded.
      'image/encoded': tfds.features.Tensor(shape=(), dtype=np.object_),
      'image/filename': tfds.features.Text(),
      # The panoptic PNG's bytes, or b'' when it could not be decoded.
      'panoptic/encoded': tfds.features.Tensor(shape=(), dtype=np.object_),
      'panoptic/filename': tfds.features.Text(),
      'segments': tfds.features.Sequence(
        {
          'id': np.int64,
          'category_id': np.int64,
          'label': np.int64,  # index of category_id in the JSON category list.
          'is_crowd': np.bool_,
          'area': np.int64,
        }
      ),
      'error': tfds.features.Text(),
    }

  def _split_generators(self, dl_manager):
    """Reads and checks each split's JSON; all splits must share one category list.

    The metadata gets the categories and, per split, the largest image height and width
    ('max_image_size': {split: [H, W]}) from the JSON's sizes.
    """
    del dl_manager  # local files only.
    root = self.builder_config.root
    check_layout(root, self.builder_config.splits)
    generators = {}
    categories = None
    max_image_size = {}
    for split in self.builder_config.splits:
      paths = split_paths(root, split)
      annotation = read_annotation(paths['json'], paths)
      split_categories = categories_from_json(annotation['categories'], paths['json'])
      if categories is not None and split_categories != categories:
        raise ValueError(
          f'{paths["json"]} lists other categories than the other split; the semantic labels '
          'of the splits would differ.'
        )
      categories = split_categories
      max_image_size[split] = [
        max((int(image['height']) for image in annotation['images']), default=0),
        max((int(image['width']) for image in annotation['images']), default=0),
      ]
      generators[split] = self._generate_examples(annotation, paths)
    self.info.metadata['categories'] = list(categories)
    self.info.metadata['max_image_size'] = max_image_size
    return generators

  def _generate_examples(self, annotation: dict, paths: dict[str, str]):
    """Yields (file name, example) for every image of the JSON, checking each file."""
    label_of = {category['id']: k for k, category in enumerate(annotation['categories'])}
    annotation_of = collections.defaultdict(list)
    for image_annotation in annotation['annotations']:
      annotation_of[image_annotation['image_id']].append(image_annotation)
    images = sorted(annotation['images'], key=lambda image: str(image['id']))
    # Integer ids are kept; a JSON with other ids (Cityscapes names its images) numbers its images
    # by their position in id order.
    numeric = all(isinstance(image['id'], int) for image in images)
    number_of = {image['id']: image['id'] if numeric else k for k, image in enumerate(images)}
    if numeric:
      images = sorted(images, key=lambda image: image['id'])

    def build(image_info):
      example = _build_example(image_info, annotation_of[image_info['id']], label_of, paths)
      return {**example, 'image_id': number_of[image_info['id']]}

    for image_info, example in zip(images, _ordered_parallel_map(build, images), strict=True):
      yield image_info['file_name'], example


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_image_ids(images: list[dict], json_path: str) -> None:
  """Image ids are distinct JSON integers in int64's range, or distinct strings."""
  if not images:
    raise ValueError(
      f'{json_path} lists no images: the split would be empty. Check the file, or choose '
      'another split with --config.data.train_split / eval_split.'
    )
  seen = set()
  for image in images:
    image_id = image['id']
    if not (isinstance(image_id, str) or (_is_int(image_id) and 0 <= image_id < 2**63)):
      raise ValueError(
        f'{json_path}: image {image.get("file_name")!r} has id {image_id!r}: use an integer in '
        '0..2^63-1 or a string.'
      )
    if image_id in seen:
      raise ValueError(f'{json_path}: image id {image_id!r} is listed twice in "images".')
    seen.add(image_id)


def read_annotation(json_path: str, paths: dict[str, str] | None = None) -> dict:
  """Reads a split's panoptic JSON and checks the fields preparation reads.

  With the split's `paths`, every image and PNG file name must also lie inside the split's image
  and PNG folders (`source.inside_root`).

  Raises:
    json_files.FileFormatError (a ValueError): invalid JSON or a missing field; the message
      names the file and the record.
    ValueError: a file name pointing outside its folder (named with its record).
  """
  annotation = json_files.load_json(
    json_path, 'COCO panoptic', required=('images', 'annotations', 'categories')
  )
  for image in annotation['images']:
    json_files.require_keys(image, ('id', 'file_name', 'height', 'width'), f'{json_path} image')
  _check_image_ids(annotation['images'], json_path)
  for image in annotation['images']:
    if paths:
      inside_root(paths['image_dir'], image['file_name'], f'{json_path} image {image["id"]!r}')
  for image_annotation in annotation['annotations']:
    where = f'{json_path} annotation'
    json_files.require_keys(image_annotation, ('image_id', 'file_name', 'segments_info'), where)
    if paths:
      inside_root(
        paths['png_dir'],
        image_annotation['file_name'],
        f'{where} of image {image_annotation["image_id"]!r}',
      )
    for segment in image_annotation['segments_info']:
      json_files.require_keys(
        segment, ('id', 'category_id'), f'{where} of image {image_annotation["image_id"]}'
      )
  return annotation


def _ordered_parallel_map(fn, items):
  """Yields fn(item) in order, computing a few ahead in threads (TF's decoders release the GIL).

  Unlike ThreadPoolExecutor.map, at most a few results wait in memory, however long the list.
  """
  workers = os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) > 2 * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def _read_and_decode(path: str, decode_fn) -> tuple[bytes, np.ndarray | None, str]:
  """Returns (file bytes, decoded array or None, error message or '')."""
  try:
    with open(path, 'rb') as f:
      encoded = f.read()
  except OSError as e:
    return b'', None, f'{path}: cannot read the file ({e.strerror or e})'
  try:
    return encoded, decode_fn(encoded).numpy(), ''
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
    return b'', None, f'{path}: cannot decode the image ({e.message.splitlines()[0]})'


def _build_example(image_info: dict, image_annotations: list[dict], label_of: dict, paths: dict):
  """Returns one example of the builder, with every problem of its files in 'error'."""
  errors = []
  height, width = int(image_info['height']), int(image_info['width'])
  image_path = inside_root(paths['image_dir'], image_info['file_name'], paths['json'])
  image_bytes, image, error = _read_and_decode(
    image_path, lambda b: tf.io.decode_image(b, channels=3, expand_animations=False)
  )
  errors.append(error)
  if image is not None and image.shape[:2] != (height, width):
    errors.append(f'{image_path}: image is {image.shape[:2]}, the JSON says {(height, width)}')

  segments = []
  png_path = ''
  png_bytes = b''
  if len(image_annotations) != 1:
    errors.append(
      f'{paths["json"]}: image {image_info["id"]} ({image_info["file_name"]}) has '
      f'{len(image_annotations)} panoptic annotations instead of 1'
    )
  else:
    png_path = inside_root(paths['png_dir'], image_annotations[0]['file_name'], paths['json'])
    segments = image_annotations[0]['segments_info']
    png_bytes, png, error = _read_and_decode(png_path, lambda b: tf.io.decode_png(b, channels=3))
    errors.append(error)
    if png is not None:
      if png.shape[:2] != (height, width):
        errors.append(f'{png_path}: PNG is {png.shape[:2]}, the JSON says {(height, width)}')
      ids = coco_panoptic.rgb2id(png)
      missing = sorted(set(np.unique(ids).tolist()) - {0} - {s['id'] for s in segments})
      if missing:
        errors.append(f'{png_path}: PNG segment ids {missing} are missing from the JSON')
    unknown = sorted({s['category_id'] for s in segments} - set(label_of))
    if unknown:
      errors.append(f'{paths["json"]}: {png_path} uses unknown category ids {unknown}')
      segments = [s for s in segments if s['category_id'] in label_of]
  return {
    'image_id': -1,  # set by the caller
    'height': height,
    'width': width,
    'image/encoded': image_bytes,
    'image/filename': image_path,
    'panoptic/encoded': png_bytes,
    'panoptic/filename': png_path,
    'segments': {
      'id': [int(s['id']) for s in segments],
      'category_id': [int(s['category_id']) for s in segments],
      'label': [label_of[s['category_id']] for s in segments],
      'is_crowd': [bool(s.get('iscrowd', 0)) for s in segments],
      'area': [int(s.get('area', 0)) for s in segments],
    },
    'error': '; '.join(e for e in errors if e),
  }


def decode_example(example: dict) -> dict:
  """Maps one `coco_panoptic_folder` example to the canonical image example (tf-traceable).

  Args:
    example: the builder's features (encoded bytes, segment lists, 'error').

  Returns:
    {'image' (H, W, 3) uint8, 'semantic', 'instance', 'crowd' (H, W) int32, 'image_id' int64,
    'error' tf.string}. An example with an error recorded at preparation is all zeros of the
    JSON's (H, W): its files may be missing or of other sizes, and the pipeline skips or rejects
    it anyway. A PNG id the JSON lacks is also caught here (those pixels become void).
  """
  stored_error = example['error']
  segments = example['segments']

  def decode_files():
    image = tf.io.decode_image(example['image/encoded'], channels=3, expand_animations=False)
    panoptic_rgb = tf.io.decode_png(example['panoptic/encoded'], channels=3)
    semantic, instance, crowd, error = coco.panoptic_maps(
      panoptic_rgb,
      segments['id'],
      segments['label'],
      segments['is_crowd'],
      example['panoptic/filename'],
    )
    return image, semantic, instance, crowd, error

  def placeholders():
    size = tf.cast(tf.stack([example['height'], example['width']]), tf.int32)
    labels = tf.zeros(size, tf.int32)
    image = tf.zeros(tf.concat([size, [3]], 0), tf.uint8)
    return image, labels, labels, labels, stored_error

  image, semantic, instance, crowd, error = tf.cond(
    tf.equal(stored_error, ''), decode_files, placeholders
  )
  return {
    'image': tf.ensure_shape(image, [None, None, 3]),
    'semantic': semantic,
    'instance': instance,
    'crowd': crowd,
    'image_id': tf.cast(example['image_id'], tf.int64),
    'error': error,
  }


def make_builder(config) -> CocoPanopticFolder:
  """Returns the (not necessarily prepared) builder of config.data.coco_root's two splits."""
  data = config.data
  splits = tuple(dict.fromkeys((data.train_split, data.eval_split)))
  check_layout(data.coco_root, splits)
  return CocoPanopticFolder(
    config=builder_config(data.coco_root, splits), data_dir=data.data_dir or None
  )


def make_source(config) -> Source:
  """Returns the source of config.data.coco_root, preparing it on first use.

  Args:
    config: the whole experiment config; reads config.data.coco_root, train_split, eval_split and
      data_dir ('' = TFDS default).

  Raises:
    FileNotFoundError: the root, a split's JSON, PNG folder or image folder is missing.
    ValueError: the splits' JSON files disagree on the categories, or a category is malformed.
  """
  builder = make_builder(config)
  if not builder.is_prepared():
    builder = _prepare(builder)
  metadata = builder.info.metadata
  return Source(
    name='coco_folder',
    builder=builder,
    categories=tuple(metadata['categories']),
    decode=decode_example,
    clips=False,
    max_image_size={split: tuple(size) for split, size in metadata['max_image_size'].items()},
  )


def _prepare(builder: CocoPanopticFolder) -> CocoPanopticFolder:
  """`source.prepare` (one process at a time, leftovers of a killed one removed); on failure,
  removes the folders it created that hold no file. Returns the prepared builder."""
  version_dir = epath.Path(builder.data_dir)
  data_dir = version_dir.parents[2]
  created = [
    path
    for path in (data_dir / 'downloads', version_dir.parents[1], version_dir.parent)
    if not path.exists()
  ]
  try:
    return prepare(builder)
  except BaseException:
    for path in created:
      if path.is_dir() and not any(f for _, _, files in os.walk(path) for f in files):
        shutil.rmtree(path, ignore_errors=True)
    raise
