"""What every dataset module hands the input pipeline: a `Source`, and helpers they share.

Every dataset module (shapes.py, coco.py, coco_folder.py, davis.py) exposes
`make_source(config) -> Source`; registry.py picks one from config.data.name. The input pipeline
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
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow_datasets as tfds
from etils import epath


@dataclasses.dataclass(frozen=True)
class Source:
  """A prepared dataset and how to read it.

  Attributes:
    name: config.data.name that selected it.
    builder: a prepared TFDS builder (download_and_prepare done or checked).
    categories: panopticapi-style dicts {'id', 'name', 'isthing', 'color'}; the semantic label of
      categories[k] is k + 1.
    decode: tf-traceable; one example as `builder.as_dataset` yields it -> canonical example.
    clips: whether `decode` yields video examples (clips of frames) rather than images.
    decoders: optional TFDS `decoders` passed to `as_dataset` (e.g. `tfds.decode.SkipDecoding()`
      on an image feature that `decode` decodes itself); None = TFDS's own decoding.
    split_aliases: config split names -> the builder's split names, so that the COCO defaults
      'train2017' / 'val2017' also select TFDS's 'train' / 'validation'.
    max_image_size: the builder's split name -> the largest (height, width) of its images, where
      the source knows it before reading the examples (checked against config.data.eval_orig_size
      at start); a split absent from it is not checked.
    frame_keys: clips only: the raw features (as `builder.as_dataset` yields them) that hold one
      encoded entry per frame, when `decode` can decode any run of consecutive entries and the
      raw example carries 'error' and 'video_id'. Training then cuts windows from the raw clip
      and decodes only their frames (a KITTI-STEP sequence has up to ~1,000 frames); empty: the
      whole clip is decoded first.
  """

  name: str
  builder: tfds.core.DatasetBuilder
  categories: tuple[dict, ...]
  decode: Callable[[dict], dict]
  clips: bool
  decoders: Any = None
  split_aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
  max_image_size: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
  frame_keys: tuple[str, ...] = ()

  def split(self, name: str) -> str:
    """The builder's name for the config split `name` (a split spec passes through)."""
    return self.split_aliases.get(name, name)


class LocalFilesBuilder(tfds.core.GeneratorBasedBuilder):
  """A GeneratorBasedBuilder that reads local files only (no downloads, no checksums file)."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """Returns this module's path, found without `importlib_resources`.

    TFDS 4.9.10 looks up the code path of a builder outside its own package through
    `importlib_resources`, which it does not declare as a dependency
    (github.com/tensorflow/datasets/issues/11212); the path only locates a checksums file, which
    a builder of local files does not have.
    """
    return epath.Path(inspect.getfile(cls))


def inside_root(root: str, relative, where: str) -> str:
  """root/relative, refused unless it stays inside root: the one rule for every file name a
  user's data names (a COCO JSON's file_name, a DAVIS image-set line).

  The check is on the path as written: an absolute path or '..' climbing out of root is refused;
  links a user placed inside the root (as the Cityscapes recipe does) are read as they are.

  Raises:
    ValueError: naming `where` (the file and record that holds the name), the name and the root.
  """
  if not isinstance(relative, str) or not relative.strip() or os.path.isabs(relative):
    raise ValueError(f'{where}: {relative!r} must be a file name relative to {root}')
  base = os.path.normpath(root)
  path = os.path.normpath(os.path.join(base, relative))
  if path == base or os.path.commonpath([base, path]) != base:
    raise ValueError(f'{where}: {relative!r} points outside {root}; only files inside it are read')
  return path


def add_file_stamps(digest, folder: str, root: str) -> None:
  """Adds (path relative to root, size, modification time) of every file under `folder`, in
  sorted order, to `digest`: a prepared dataset's cache key, so a changed, added or removed file
  is prepared again. Linked files count by their target's stamps."""
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      stat = os.stat(path)
      relative = os.path.relpath(path, root)
      digest.update(f'{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())


def check_splits(builder: tfds.core.DatasetBuilder, splits) -> None:
  """Raises ValueError when a prepared builder lacks one of `splits`, listing the ones it has."""
  available = sorted(builder.info.splits.keys())
  for split in splits:
    if split not in available:
      raise ValueError(
        f'{builder.name}/{builder.builder_config.name if builder.builder_config else ""} in '
        f'{builder.data_dir} has no split {split!r}; its splits are {available} '
        '(set --config.data.train_split / --config.data.eval_split).'
      )
