"""COCO panoptic 2017 through the standard TFDS builder `coco/2017_panoptic`.

Also holds the panoptic decoding shared with `coco_folder`: a COCO panoptic PNG stores one segment
id per pixel as id = R + 256 G + 256^2 B (0 = void); the JSON lists each segment's id, category and
crowd flag. `panoptic_maps` turns both into the canonical (semantic, instance, crowd) maps.

The 133 categories (ids 1..200, names, isthing, colours) ship as `panoptic_coco_categories.json`
next to this file (from cocodataset/panopticapi, BSD licence: tests/data/coco_panoptic_sample/
LICENSE.panopticapi.txt), because the TFDS builder only records the category names.

Prepare the TFDS dataset once (about 20 GB is downloaded unless the zips are in --manual_dir):

  python -m pix2seq_d.data.coco --data_dir=DIR [--manual_dir=DIR_WITH_THE_COCO_ZIPS]

(TFDS 4.9.10 needs `pip install importlib_resources` to prepare its own builders; the tfds CLI
also needs apache-beam.) Split names are TFDS's: 'train' and 'validation'.
"""

import json
import os

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app, flags

from pix2seq_d.data.source import Source, check_splits
from pix2seq_d.formats import coco_panoptic

TFDS_NAME = 'coco/2017_panoptic'
CATEGORIES_FILE = os.path.join(os.path.dirname(__file__), 'panoptic_coco_categories.json')
# The zips that `tfds build coco/2017_panoptic` fetches; TFDS uses a file of the same name in
# --manual_dir instead of downloading it.
_COCO_ZIPS = ('train2017.zip', 'val2017.zip', 'panoptic_annotations_trainval2017.zip')


def load_coco_categories() -> tuple[dict, ...]:
  """Returns the 133 COCO panoptic categories in the standard order (ids 1..200).

  Each is a panopticapi-style dict {'id', 'name', 'supercategory', 'isthing', 'color'}; the
  semantic label of categories[k] is k + 1.
  """
  with open(CATEGORIES_FILE) as f:
    return tuple(json.load(f))


def rgb_to_panoptic_id(panoptic_rgb: tf.Tensor) -> tf.Tensor:
  """Returns the segment ids (H, W) int32 of a COCO panoptic PNG decoded as (H, W, 3) uint8."""
  rgb = tf.cast(panoptic_rgb, tf.int32)
  return coco_panoptic.pack_id(rgb[..., 0], rgb[..., 1], rgb[..., 2])


def panoptic_maps(
  panoptic_rgb: tf.Tensor,
  segment_ids: tf.Tensor,
  segment_labels: tf.Tensor,
  segment_crowd: tf.Tensor,
  filename: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """Maps a COCO panoptic PNG and its JSON segment list to the canonical label maps.

  Args:
    panoptic_rgb: (H, W, 3) uint8, the decoded panoptic PNG.
    segment_ids: (S,) int, the JSON segment ids.
    segment_labels: (S,) int, each segment's category index (0-based, in the category list order).
    segment_crowd: (S,) bool or int, each segment's iscrowd flag.
    filename: tf.string scalar naming the PNG in error messages.

  Returns:
    semantic (H, W) int32 = category index + 1 (0 void), instance (H, W) int32 = the segment's
    position in the list + 1 (0 void), crowd (H, W) int32 (1 on crowd segments), and an error
    tf.string scalar: '' or a message naming the PNG and the ids it holds that the JSON lacks
    (those pixels become void).
  """
  panoptic_id = rgb_to_panoptic_id(panoptic_rgb)
  segment_ids = tf.cast(segment_ids, tf.int32)
  # Match the few distinct ids of the image against the segment list instead of every pixel
  # against every segment: O(H W + U S) instead of O(H W S).
  unique_ids, pixel_to_unique = tf.unique(tf.reshape(panoptic_id, [-1]))
  matches = tf.equal(unique_ids[:, None], segment_ids[None, :])  # (U, S)
  known = tf.reduce_any(matches, axis=1)
  segment_index = tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)
  labels = tf.gather(tf.cast(segment_labels, tf.int32), segment_index)
  crowd = tf.gather(tf.cast(segment_crowd, tf.int32), segment_index)
  # Id 0 is void even if a malformed JSON lists it.
  valid = known & tf.not_equal(unique_ids, 0)
  zeros = tf.zeros_like(unique_ids)
  unique_semantic = tf.where(valid, labels + 1, zeros)
  unique_instance = tf.where(valid, segment_index + 1, zeros)
  unique_crowd = tf.where(valid, crowd, zeros)

  shape = tf.shape(panoptic_id)
  semantic = tf.reshape(tf.gather(unique_semantic, pixel_to_unique), shape)
  instance = tf.reshape(tf.gather(unique_instance, pixel_to_unique), shape)
  crowd_map = tf.reshape(tf.gather(unique_crowd, pixel_to_unique), shape)

  missing = tf.boolean_mask(unique_ids, ~known & tf.not_equal(unique_ids, 0))
  error = tf.cond(
    tf.size(missing) > 0,
    lambda: tf.strings.join(
      [
        filename,
        ': PNG segment ids [',
        tf.strings.reduce_join(tf.strings.as_string(tf.sort(missing)), separator=', '),
        '] are missing from the JSON segments_info',
      ]
    ),
    lambda: tf.constant(''),
  )
  return semantic, instance, crowd_map, error


def decode_tfds_example(example: dict) -> dict:
  """Maps one decoded `coco/2017_panoptic` example to the canonical image example.

  Args:
    example: the TFDS features: 'image' (H, W, 3) uint8, 'image/id', 'panoptic_image' (H, W, 3)
      uint8, 'panoptic_image/filename', 'panoptic_objects' {'id', 'label', 'is_crowd', ...}.

  Returns:
    {'image' (H, W, 3) uint8, 'semantic', 'instance', 'crowd' (H, W) int32, 'image_id' int64,
    'error' tf.string}.
  """
  objects = example['panoptic_objects']
  # The builder's ClassLabel indexes the JSON category list, which is the standard order of
  # load_coco_categories() (checked in make_source).
  semantic, instance, crowd, error = panoptic_maps(
    example['panoptic_image'],
    objects['id'],
    objects['label'],
    objects['is_crowd'],
    example['panoptic_image/filename'],
  )
  return {
    'image': example['image'],
    'semantic': semantic,
    'instance': instance,
    'crowd': crowd,
    'image_id': tf.cast(example['image/id'], tf.int64),
    'error': error,
  }


def prepare_command(data_dir: str) -> str:
  """Returns the shell command that prepares `coco/2017_panoptic` into `data_dir`."""
  data_dir_flag = f' --data_dir={data_dir}' if data_dir else ''
  return f'python -m pix2seq_d.data.coco{data_dir_flag} --manual_dir=DIR_WITH_THE_COCO_ZIPS'


def _not_prepared_message(builder: tfds.core.DatasetBuilder, data_dir: str) -> str:
  root = str(builder.data_dir_root)
  return (
    f'COCO panoptic (TFDS {TFDS_NAME}:{builder.version}) is not prepared in data_dir '
    f'{root!r} (no {builder.data_dir}).\n'
    f'Prepare it once (needs about 40 GB of disk):\n'
    f'  {prepare_command(data_dir or root)}\n'
    f'or, where the tfds CLI works, tfds build {TFDS_NAME} --data_dir={data_dir or root} '
    f'[--manual_dir=DIR].\n'
    f'Without internet put {", ".join(_COCO_ZIPS)} (from images.cocodataset.org) into the '
    f'manual dir: TFDS takes a file named like the download from there instead of fetching it.\n'
    f'Or train from a folder in the official COCO panoptic layout without TFDS preparation:\n'
    f'  --config.data.name=coco_folder --config.data.coco_root=DIR '
    f'(DIR/annotations/panoptic_val2017.json, DIR/annotations/panoptic_val2017/*.png, '
    f'DIR/val2017/*.jpg; likewise train2017).'
  )


def make_source(config) -> Source:
  """Returns the `coco/2017_panoptic` source prepared in config.data.data_dir.

  Args:
    config: the whole experiment config; reads config.data.data_dir ('' = TFDS default).

  Raises:
    FileNotFoundError: the dataset is not prepared there; the message gives the command.
    ValueError: the prepared dataset's category names differ from the shipped category list.
  """
  data_dir = config.data.data_dir
  builder = tfds.builder(TFDS_NAME, data_dir=data_dir or None)
  if not builder.is_prepared():
    raise FileNotFoundError(_not_prepared_message(builder, data_dir))
  categories = load_coco_categories()
  names = builder.info.features['panoptic_objects']['label'].names
  expected = [category['name'] for category in categories]
  if list(names) != expected:
    raise ValueError(
      f'{TFDS_NAME} in {builder.data_dir} lists categories {names[:5]}... that differ from '
      f'{CATEGORIES_FILE} {expected[:5]}...; the semantic labels would be wrong.'
    )
  aliases = {'train2017': 'train', 'val2017': 'validation'}
  check_splits(
    builder, [aliases.get(s, s) for s in (config.data.train_split, config.data.eval_split)]
  )
  return Source(
    name=TFDS_NAME,
    builder=builder,
    categories=categories,
    decode=decode_tfds_example,
    clips=False,
    split_aliases=aliases,
  )


def main(argv):
  """Prepares `coco/2017_panoptic` (the tfds CLI needs apache-beam; this does not)."""
  del argv
  builder = tfds.builder(TFDS_NAME, data_dir=_DATA_DIR.value or None)
  download_config = tfds.download.DownloadConfig(manual_dir=_MANUAL_DIR.value or None)
  try:
    builder.download_and_prepare(download_config=download_config)
  except ModuleNotFoundError as e:
    if e.name != 'importlib_resources':
      raise
    # TFDS 4.9.10 imports it without declaring it (github.com/tensorflow/datasets/issues/11212).
    raise SystemExit('Preparing TFDS datasets needs: pip install importlib_resources') from e
  print(f'Prepared {TFDS_NAME} in {builder.data_dir}')


if __name__ == '__main__':
  _DATA_DIR = flags.DEFINE_string('data_dir', '', "TFDS data_dir ('' = TFDS default).")
  _MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', '', f'a folder holding {", ".join(_COCO_ZIPS)} to use instead of downloading.'
  )
  app.run(main)
