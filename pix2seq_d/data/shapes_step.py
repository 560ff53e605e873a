"""Moving shapes in the KITTI-STEP layout (`config.data.name='shapes_step[/config]'`): video
panoptic segmentation with classes and tracks, nothing to download.

The scenes of shapes.py (circles, squares and triangles over sky and ground; objects move with a
constant velocity and occlude each other in painting order), with half of the objects starting
outside the frame so that they enter, and others leaving. Written once as files into
<data_dir>/shapes_step/<config>/<version>/ (images/<split>/<seq>/<frame>.png,
panoptic_maps/<split>/<seq>/<frame>.png with R = the shapes category id, G * 256 + B = the track
id of an object, 0 on sky and ground; categories.json), then read like any KITTI-STEP-layout
folder (kitti_step.py). Generation is seeded per (split, index), so every machine writes the same
files. One process writes at a time (a lock file beside the folder), into a staging folder renamed
when complete; the staging folder of a writer that was killed is removed by the next writer.

Configs: 'default' (500 training sequences of 8 frames, 32 val sequences of 16 frames, 64x64) and
'tiny' (4 + 2 sequences, for tests).
"""

import dataclasses
import glob
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from pix2seq_d.data import kitti_step, shapes
from pix2seq_d.data.source import Source, preparation_lock
from pix2seq_d.formats import step_png

VERSION = '1.0.0'
_DONE = 'COMPLETE'
_STAGING_PREFIX = '.shapes-step-tmp-'
_SPLITS = ('train', 'val')


@dataclasses.dataclass(frozen=True)
class StepShapesConfig:
  """What one config writes."""

  num_train: int
  num_val: int
  train_frames: int
  val_frames: int
  enter_probability: float = 0.5  # chance an object starts outside and moves in


CONFIGS = {
  'default': StepShapesConfig(num_train=500, num_val=32, train_frames=8, val_frames=16),
  'tiny': StepShapesConfig(num_train=4, num_val=2, train_frames=6, val_frames=8),
}


def scene_of(config: StepShapesConfig, split: str, index: int) -> tuple[dict, int]:
  """(scene, number of frames) of sequence `index` of `split`."""
  frames = config.train_frames if split == 'train' else config.val_frames
  generation = dataclasses.replace(shapes.ShapesVideo.BUILDER_CONFIGS[0], num_frames=frames)
  rng = np.random.default_rng([generation.seed, 2 + _SPLITS.index(split), index])
  scene = shapes.sample_scene(rng, generation)
  for obj in scene['objects']:
    if rng.uniform() < config.enter_probability:
      # Half-way through the clip the object is where it was drawn: it enters from outside.
      obj['center'] = [
        c - v * frames / 2 for c, v in zip(obj['center'], obj['velocity'], strict=True)
      ]
  return scene, frames


def write_folder(root: str, config: StepShapesConfig) -> None:
  """Writes the sequences of `config` under `root`, all or nothing."""
  parent = os.path.dirname(root)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=parent)
  try:
    categories = [{k: c[k] for k in ('id', 'name', 'isthing', 'color')} for c in shapes.CATEGORIES]
    with open(os.path.join(staging, kitti_step.CATEGORIES_FILE), 'w') as f:
      json.dump(categories, f)
    ids = np.array([0] + [c['id'] for c in shapes.CATEGORIES])
    is_thing = np.array([False] + [bool(c['isthing']) for c in shapes.CATEGORIES])
    video = shapes.ShapesVideo.BUILDER_CONFIGS[0]
    height, width = video.height, video.width
    for split in _SPLITS:
      count = config.num_train if split == 'train' else config.num_val
      for index in range(count):
        scene, frames = scene_of(config, split, index)
        images, semantic, track = shapes.render_clip(scene, height, width, frames)
        instance = np.where(is_thing[semantic], track, 0).astype(np.int64)
        name = f'{index:04d}'
        for kind in ('images', 'panoptic_maps'):
          os.makedirs(os.path.join(staging, kind, split, name))
        for t in range(frames):
          frame = f'{t:06d}.png'
          Image.fromarray(images[t]).save(os.path.join(staging, 'images', split, name, frame))
          step_png.write_step_png(
            os.path.join(staging, 'panoptic_maps', split, name, frame),
            ids[semantic[t]],
            instance[t],
          )
    open(os.path.join(staging, _DONE), 'w').close()
    if os.path.isdir(root):
      shutil.rmtree(root)
    os.replace(staging, root)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def config_name_of(name: str) -> str:
  """The shapes_step config that config.data.name `name` selects ('default' without '/')."""
  _, _, config_name = name.partition('/')
  config_name = config_name or 'default'
  if config_name not in CONFIGS:
    raise ValueError(
      f'config.data.name={name!r}: unknown shapes_step config {config_name!r}; '
      f'known: {sorted(CONFIGS)}.'
    )
  return config_name


def written_folder(config) -> tuple[str, bool]:
  """(the folder of config.data.name, whether it is completely written); writes nothing."""
  config_name = config_name_of(config.data.name)
  data_dir = config.data.data_dir or os.path.expanduser('~/tensorflow_datasets')
  root = os.path.join(data_dir, 'shapes_step', config_name, VERSION)
  return root, os.path.isfile(os.path.join(root, _DONE))


def folder(config) -> str:
  """The written folder of config.data.name (written on first use)."""
  root, written = written_folder(config)
  if written:
    return root
  parent = os.path.dirname(root)
  os.makedirs(parent, exist_ok=True)
  # One writer at a time: a second one would replace the folder while the first converts it. The
  # holder removes the staging folders of writers that were killed.
  with preparation_lock(os.path.join(parent, f'.write_{VERSION}.lock')) as locked:
    if not os.path.isfile(os.path.join(root, _DONE)):
      for staging in glob.glob(os.path.join(parent, _STAGING_PREFIX + '*')) if locked else ():
        shutil.rmtree(staging)
      write_folder(root, CONFIGS[config_name_of(config.data.name)])
  return root


def make_source(config) -> Source:
  """The moving-shapes STEP folder as a source (written and converted on first use)."""
  step_config = config.copy_and_resolve_references()
  step_config.data.step_root = folder(config)
  source = kitti_step.make_source(step_config)
  return dataclasses.replace(source, name=config.data.name)
