"""config.data.name -> the dataset module's `make_source(config)` (a `source.Source`).

The dataset modules are imported lazily: each pulls in its own builder code, and only the chosen
one is needed.
"""

from __future__ import annotations

from pix2seq_d.config import checks
from pix2seq_d.data.source import Source

_SHAPES_NAMES = ('shapes', 'shapes_video')


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
  checks.check_data_name(config)
  name = config.data.name
  base = name.partition('/')[0]
  if base in checks.DATA_GENERATED:
    names = (base,) + tuple(f'{base}/{c}' for c in _builder_configs(base))
    checks.check_choice('data.name', name, names)


def resolved_name(config) -> str:
  """config.data.name, or 'coco_folder' where config.data.coco_root replaces a TFDS COCO name."""
  name = config.data.name
  if not name:
    raise ValueError('config.data.name is empty; use e.g. "shapes" or "coco/2017_panoptic".')
  if config.data.coco_root and name.split('/')[0] not in checks.NOT_COCO:
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
