"""What config.data would read, found without preparing or converting anything (`--mode=plan`).

A run prepares its dataset first: the embedded sets are generated, a folder is converted into a
TFDS dataset once (checking and decoding every file), a TFDS name must already be prepared. The
survey answers sooner and writes nothing: a prepared dataset gives its split sizes; a folder not
converted yet is listed (every file the conversion would read is checked to exist, so a missing
PNG is named now, not after minutes of conversion); a generated set gives the sizes its builder
config will write.

  survey(config) -> Survey(splits={'train': 118287, 'val2017': 5000}, note='...')
"""

from __future__ import annotations

import dataclasses
import os

from pix2seq_d.data import registry


@dataclasses.dataclass(frozen=True)
class Survey:
  """The examples of each split config.data names.

  Attributes:
    name: what config.data.name resolves to (e.g. 'coco_folder' when coco_root is set).
    splits: split name -> number of examples (images, or sequences for clips).
    note: how the counts were found (prepared, listed, or to be generated).
  """

  name: str
  splits: dict[str, int]
  note: str


def _missing(path: str, what: str) -> FileNotFoundError:
  return FileNotFoundError(f'{path}: {what} is missing')


def _coco_folder(config) -> Survey:
  from pix2seq_d.data import coco_folder

  builder = coco_folder.make_builder(config)  # checks the layout, naming the missing folder
  splits = _splits(config)
  if builder.is_prepared():
    return _prepared('coco_folder', builder, splits)
  counts = {}
  for split in splits:
    paths = coco_folder.split_paths(config.data.coco_root, split)
    annotation = coco_folder.read_annotation(paths['json'], paths)
    coco_folder.categories_from_json(annotation['categories'], paths['json'])
    for image in annotation['images']:
      path = os.path.join(paths['image_dir'], image['file_name'])
      if not os.path.isfile(path):
        raise _missing(path, f'image {image["id"]!r} of {paths["json"]}')
    for record in annotation['annotations']:
      path = os.path.join(paths['png_dir'], record['file_name'])
      if not os.path.isfile(path):
        raise _missing(path, f'the panoptic PNG of image {record["image_id"]!r} of {paths["json"]}')
    counts[split] = len(annotation['images'])
  return Survey('coco_folder', counts, 'listed (converted on the first run)')


def _kitti_step(config, root: str, name: str) -> Survey:
  from pix2seq_d.data import kitti_step

  kitti_step.read_categories(root)
  counts, frames = {}, 0
  for split in _splits(config):
    sequences = kitti_step.sequences_of(root, split)  # checks the layout and the numbering
    maps = kitti_step.split_paths(root, split)['maps']
    for sequence, files in sequences.items():
      for file in files:
        path = os.path.join(maps, sequence, file)
        if not os.path.isfile(path):
          raise _missing(path, f'the panoptic map of frame {file} of sequence {sequence}')
      frames += len(files)
    counts[split] = len(sequences)
  return Survey(name, counts, f'sequences, {frames} frames, listed (converted on the first run)')


def _davis(config) -> Survey:
  from pix2seq_d.data import davis

  data = config.data
  if not data.davis_root:
    return _tfds(config, 'davis')
  builder = davis.make_builder(config)  # checks the layout and the split files
  if builder.is_prepared():
    return _prepared('davis', builder, _splits(config))
  paths = davis.folder_paths(data.davis_root, data.davis_resolution, data.davis_annotations)
  counts = {}
  for split in _splits(config):
    videos = davis.split_videos(paths['image_sets'], split, paths['frames'])
    for video in videos:
      for kind in ('frames', 'annotations'):
        folder = os.path.join(paths[kind], video)
        if not os.path.isdir(folder):
          raise _missing(folder, f'the {kind} folder of video {video!r} of split {split!r}')
    counts[split] = len(videos)
  return Survey('davis', counts, 'videos, listed (converted on the first run)')


def _generated(config) -> Survey:
  """The embedded sets: the sizes their builder configs write (generated on the first run)."""
  name = config.data.name
  base = name.split('/')[0]
  if base == 'shapes_step':
    from pix2seq_d.data import shapes_step

    sizes = shapes_step.CONFIGS[shapes_step.config_name_of(name)]
    root, written = shapes_step.written_folder(config)
    note = f'written in {root}' if written else 'written on first use'
    return Survey(name, {'train': sizes.num_train, 'val': sizes.num_val}, note)
  from pix2seq_d.data import shapes

  builder = shapes.make_builder(name, config.data.data_dir)
  if builder.is_prepared():
    return _prepared(name, builder, _splits(config))
  sizes = builder.builder_config
  return Survey(name, {'train': sizes.num_train, 'test': sizes.num_test}, 'generated on first use')


def _tfds(config, name: str) -> Survey:
  """A TFDS name: it must be prepared in config.data.data_dir (nothing is downloaded)."""
  source = registry.get_source(config)  # raises, with the preparation command, when it is not
  return _prepared(source.name, source.builder, [source.split(s) for s in _splits(config)])


def _prepared(name: str, builder, splits) -> Survey:
  counts = {}
  for split in splits:
    if split not in builder.info.splits:
      raise ValueError(
        f'{name}: split {split!r} is not among the prepared splits '
        f'{sorted(builder.info.splits)} of {builder.data_dir}.'
      )
    counts[split] = builder.info.splits[split].num_examples
  return Survey(name, counts, f'prepared in {builder.data_dir}')


def _splits(config) -> list[str]:
  return list(dict.fromkeys((config.data.train_split, config.data.eval_split)))


def survey(config) -> Survey:
  """The examples per split of config.data, found without preparing or converting anything.

  Raises:
    FileNotFoundError: a folder, split file, image, PNG or map is missing (the path is named), or
      a TFDS dataset is not prepared in config.data.data_dir.
    ValueError: a JSON or categories file is malformed, or a split does not exist.
  """
  name = registry.resolved_name(config)
  base = name.split('/')[0]
  if base in ('shapes', 'shapes_video', 'shapes_step'):
    return _generated(config)
  if name == 'coco_folder':
    return _coco_folder(config)
  if name == 'davis':
    return _davis(config)
  if name == 'kitti_step':
    from pix2seq_d.data import kitti_step

    builder = kitti_step.make_builder(config)
    if builder.is_prepared():
      return _prepared('kitti_step', builder, _splits(config))
    return _kitti_step(config, config.data.step_root, 'kitti_step')
  return _tfds(config, name)
