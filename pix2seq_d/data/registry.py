"""Dataset sources: a prepared TFDS builder plus the function that makes canonical examples.

Every dataset module (shapes.py, coco.py, coco_folder.py, davis.py) exposes
`make_source(config) -> Source`; `get_source` picks one from config.data.name. The input pipeline
(pipeline.py) only ever sees canonical examples:

Image example (tf tensors): 'image' uint8 (H, W, 3); 'semantic' int32 (H, W) = category index + 1,
0 void; 'instance' int32 (H, W) = 1..S, one distinct id per segment (things, stuff and crowd), 0
void; 'crowd' int32 (H, W), 1 on crowd segments; 'image_id' int64 (); 'error' string () = '' when
the example is fine, else a message naming the offending file.

Video example: 'frames' uint8 (T, H, W, 3); 'semantic', 'instance', 'crowd' int32 (T, H, W) with
instance ids consistent over time; 'video_id' int64 (); 'error' string ().

The semantic label of categories[k] is k + 1; 0 is void.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow_datasets as tfds

_SHAPES_NAMES = ('shapes', 'shapes_video')


@dataclasses.dataclass(frozen=True)
class Source:
  """A prepared dataset and how to read it.

  Attributes:
    name: config.data.name that selected it.
    builder: a prepared TFDS builder (download_and_prepare done or checked).
    categories: panopticapi-style dicts {'id', 'name', 'isthing', 'color'}; the semantic label of
      categories[k] is k + 1.
    decode: tf-traceable; one example as `builder.as_dataset` yields it -> canonical example.
    is_video: whether `decode` yields video examples.
    decoders: optional TFDS `decoders` passed to `as_dataset` (e.g. `tfds.decode.SkipDecoding()`
      on an image feature that `decode` decodes itself); None = TFDS's own decoding.
    split_aliases: config split names -> the builder's split names, so that the COCO defaults
      'train2017' / 'val2017' also select TFDS's 'train' / 'validation'.
    max_image_size: the builder's split name -> the largest (height, width) of its images, where
      the source knows it before reading the examples (checked against config.data.eval_orig_size
      at start); a split absent from it is not checked.
  """

  name: str
  builder: tfds.core.DatasetBuilder
  categories: tuple[dict, ...]
  decode: Callable[[dict], dict]
  is_video: bool
  decoders: Any = None
  split_aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
  max_image_size: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)

  def split(self, name: str) -> str:
    """The builder's name for the config split `name` (a split spec passes through)."""
    return self.split_aliases.get(name, name)


def get_source(config) -> Source:
  """Returns the Source named by config.data.name (prepares embedded datasets when needed).

  'shapes[/cfg]' and 'shapes_video[/cfg]' -> the embedded synthetic sets; 'coco_folder' -> a folder
  in the COCO panoptic layout; 'davis' -> DAVIS 2017; any other name is a TFDS COCO panoptic name
  such as 'coco/2017_panoptic'.
  """
  name = config.data.name
  if not name:
    raise ValueError('config.data.name is empty; use e.g. "shapes" or "coco/2017_panoptic".')
  # Imported lazily: each module pulls in its own builder code and only the chosen one is needed.
  if config.data.coco_root and name.split('/')[0] not in _SHAPES_NAMES + ('davis',):
    # A COCO-format folder was given: that is the dataset, whatever TFDS name the config has.
    name = 'coco_folder'
  if name.split('/')[0] in _SHAPES_NAMES:
    from pix2seq_d.data import shapes

    return shapes.make_source(config)
  if name == 'coco_folder':
    from pix2seq_d.data import coco_folder

    return coco_folder.make_source(config)
  if name == 'davis':
    from pix2seq_d.data import davis

    return davis.make_source(config)
  from pix2seq_d.data import coco

  return coco.make_source(config)
