"""config.data.name -> the dataset module's `make_source(config)` (a `source.Source`).

The dataset modules are imported lazily: each pulls in its own builder code, and only the chosen
one is needed.
"""

from __future__ import annotations

from pix2seq_d.config import checks
from pix2seq_d.data.source import Source

_SHAPES_NAMES = ('shapes', 'shapes_video')
_FOLDER_NAMES = ('davis', 'kitti_step', 'shapes_step')  # names that never read coco_root
_FOLDERS = ('coco_folder', 'davis', 'kitti_step')  # a folder of one's own, no '/config'


def _builder_configs(base: str) -> tuple[str, ...]:
  """The '/config' suffixes the generated set `base` knows ('default' when none is given)."""
  from pix2seq_d.data import shapes, shapes_step

  if base == 'shapes_step':
    return tuple(shapes_step.CONFIGS)
  builder = shapes.Shapes if base == 'shapes' else shapes.ShapesVideo
  return tuple(c.name for c in builder.BUILDER_CONFIGS)


def check_name(config) -> None:
  """Raises ValueError naming config.data.name and the names (with their '/config' suffixes)
  that a Source is built for; reads no data (the one rule, at start and in `get_source`)."""
  from pix2seq_d.data import coco

  name = config.data.name
  if not name:
    raise ValueError('config.data.name is empty; use e.g. "shapes" or "coco/2017_panoptic".')
  generated = _SHAPES_NAMES + ('shapes_step',)
  base = name.partition('/')[0]
  if base in generated:
    names = (base,) + tuple(f'{base}/{c}' for c in _builder_configs(base))
    checks.check_choice('data.name', name, names)
    return
  names = (coco.TFDS_NAME, *_FOLDERS, *(f'{b}[/config]' for b in generated))
  checks.check_choice('data.name', name, names)


def check_roots(config) -> None:
  """Raises ValueError naming a data root (coco_root, davis_root, step_root) that
  config.data.name never reads, and the name that would read it."""
  data = config.data
  unused = []
  if data.coco_root and data.name.split('/')[0] in _SHAPES_NAMES + _FOLDER_NAMES:
    unused.append(('coco_root', 'coco_folder'))
  if data.davis_root and data.name != 'davis':
    unused.append(('davis_root', 'davis'))
  if data.step_root and data.name != 'kitti_step':
    unused.append(('step_root', 'kitti_step'))
  for field, name in unused:
    raise ValueError(
      f'config.data.{field}={data[field]!r}: is not read with config.data.name={data.name!r}. '
      f'Set --config.data.name={name} to use that folder, or leave config.data.{field} empty.'
    )


def resolved_name(config) -> str:
  """config.data.name, or 'coco_folder' where config.data.coco_root replaces a TFDS COCO name."""
  name = config.data.name
  if not name:
    raise ValueError('config.data.name is empty; use e.g. "shapes" or "coco/2017_panoptic".')
  if config.data.coco_root and name.split('/')[0] not in _SHAPES_NAMES + _FOLDER_NAMES:
    # A COCO-format folder was given: that is the dataset, whatever TFDS name the config has.
    return 'coco_folder'
  return name


def get_source(config) -> Source:
  """Returns the Source named by config.data.name (prepares embedded datasets when needed).

  'shapes[/cfg]' and 'shapes_video[/cfg]' -> the embedded synthetic sets; 'coco_folder' -> a folder
  in the COCO panoptic layout; 'davis' -> DAVIS 2017; 'kitti_step' -> a folder in the KITTI-STEP
  layout; 'shapes_step[/cfg]' -> moving shapes written in that layout; any other name is a TFDS
  COCO panoptic name such as 'coco/2017_panoptic'.
  """
  check_name(config)
  name = resolved_name(config)
  # Imported lazily: each module pulls in its own builder code and only the chosen one is needed.
  if name.split('/')[0] in _SHAPES_NAMES:
    from pix2seq_d.data import shapes

    return shapes.make_source(config)
  if name == 'coco_folder':
    from pix2seq_d.data import coco_folder

    return coco_folder.make_source(config)
  if name == 'davis':
    from pix2seq_d.data import davis

    return davis.make_source(config)
  if name == 'kitti_step':
    from pix2seq_d.data import kitti_step

    return kitti_step.make_source(config)
  if name.split('/')[0] == 'shapes_step':
    from pix2seq_d.data import shapes_step

    return shapes_step.make_source(config)
  from pix2seq_d.data import coco

  return coco.make_source(config)
