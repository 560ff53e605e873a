"""What every dataset module hands the input pipeline: a `Source`, and helpers they share.

Every dataset module (shapes.py, shapes_step.py, coco.py, coco_folder.py, davis.py,
kitti_step.py) exposes `make_source(config) -> Source`; registry.py picks one from
config.data.name. The folder builders (coco_folder.py, davis.py, kitti_step.py) share
`LocalFilesBuilder`, `FolderConfig` and `config_name` from here. The input pipeline
(pipeline.py) only ever sees canonical examples:

Image example (tf tensors): 'image' uint8 (H, W, 3); 'semantic' int32 (H, W) = category index + 1,
0 void; 'instance' int32 (H, W) = 1..S, one distinct id per segment (things, stuff and crowd), 0
void; 'crowd' int32 (H, W), 1 on crowd segments; 'image_id' int64 (); 'error' string () = '' when
the example is fine, else a message naming the offending file.

Video example: 'frames' uint8 (T, H, W, 3); 'semantic', 'instance', 'crowd' int32 (T, H, W) with
instance ids consistent over time; 'video_id' int64 (); 'error' string (); where the source has
tracks (`Source.track_ids`), 'track' int32 (T, H, W): the dataset's own track id on tracked thing
pixels, 0 on stuff, crowd and void.

The semantic label of categories[k] is k + 1; 0 is void.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import errno
import fcntl
import inspect
import os
import shutil
from collections.abc import Callable, Mapping
from stat import S_ISDIR
from typing import Any, ClassVar

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

# TFDS writes a dataset into <config dir>/incomplete.<random>_<version>/ and renames it when done.
_INCOMPLETE_PREFIX = 'incomplete.'
# Hex digits of the root hash in a builder config name; 48 bits make collisions negligible.
_HASH_CHARS = 12


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
    clip_lengths: clips only: the builder's split name -> {clip name: number of frames}, where the
      source knows them before reading the examples; training refuses a split none of whose clips
      holds config.data.video_window frames (pipeline.py) before it reads anything.
    track_ids: clips only: whether `decode` also yields 'track', the dataset's own track ids
      (read by config.data.instance_id_order='track', the authors' KITTI-STEP training ids).
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
  clip_lengths: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
  track_ids: bool = False

  def split(self, name: str) -> str:
    """The builder's name for the config split `name` (a split spec passes through)."""
    return self.split_aliases.get(name, name)


class LocalFilesBuilder(tfds.core.GeneratorBasedBuilder):
  """A GeneratorBasedBuilder that reads local files only (no downloads, no checksums file).

  A subclass states its features (`_features`); the docstring of its module describes the
  dataset.

  Attributes:
    HAS_METADATA: whether preparation stores `info.metadata` (categories, sizes, ...); False
      where the prepared data has none, since with it loading reads a metadata file.
  """

  HAS_METADATA: ClassVar[bool] = True

  @abc.abstractmethod
  def _features(self) -> dict[str, Any]:
    """The feature of each field of an example, as `tfds.features.FeaturesDict` takes them."""

  def _info(self) -> tfds.core.DatasetInfo:
    """The features, the module's docstring and, with `HAS_METADATA`, the metadata that
    `_split_generators` fills."""
    return tfds.core.DatasetInfo(
      builder=self,
      description=inspect.getmodule(type(self)).__doc__,
      features=tfds.features.FeaturesDict(self._features()),
      metadata=tfds.core.MetadataDict() if self.HAS_METADATA else None,
    )

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


class FolderConfig(tfds.core.BuilderConfig):
  """One local root and the splits prepared from it: the config of a `LocalFilesBuilder`, named
  by `config_name` of a hash of what the builder reads there."""

  def __init__(self, *, root: str, splits: tuple[str, ...], **kwargs):
    super().__init__(**kwargs)
    self.root = root
    self.splits = tuple(splits)


def config_name(digest) -> str:
  """'root_<hex>' from a hash (hashlib) of a root's path and file stamps (`add_file_stamps`):
  a change to the data makes a new config name, so a fresh preparation beside the old one."""
  return f'root_{digest.hexdigest()[:_HASH_CHARS]}'


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
  is prepared again.

  Linked files and folders are followed and count by their targets' stamps under the path as
  linked: a sequence folder that is a link to frames elsewhere is read through the link, so a frame
  changed there must change the key too. Each folder's files come before its subfolders, both
  sorted (the order of `os.walk`), so a tree without links keeps the key it had before links were
  followed.

  Raises:
    ValueError: a link to a folder that holds it (a link cycle: the walk would never end), naming
      the link and its target.
  """

  def visit(directory: str, ancestors: tuple[str, ...]) -> None:
    files, folders = [], []
    for name in sorted(os.listdir(directory)):
      path = os.path.join(directory, name)
      stat = os.stat(path)  # the target's, for a link
      (folders if S_ISDIR(stat.st_mode) else files).append((path, stat))
    for path, stat in files:
      relative = os.path.relpath(path, root)
      digest.update(f'{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
    for path, _ in folders:
      real = os.path.realpath(path)
      # A folder that is, or holds, one of the folders walked down to here leads back to it.
      if any(a == real or a.startswith(real + os.sep) for a in ancestors):
        raise ValueError(
          f'{path}: a link to {real}, which holds {directory} (a link cycle: the folder would be '
          'read for ever); remove the link or point it at a folder outside.'
        )
      visit(path, (*ancestors, real))

  if os.path.isdir(folder):
    visit(folder, (os.path.realpath(folder),))


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Prepares `builder` (download_and_prepare) one process at a time, first removing what a
  killed preparation of the same version left behind; returns a builder of the prepared data.

  A preparation killed with SIGKILL (or by the OOM killer, or preempted) leaves its
  incomplete.<random>_<version> folder beside the version folder for good. Preparations of one
  builder version hold an exclusive lock (`flock` on <config dir>/.prepare_<version>.lock, which
  the kernel releases when its holder dies, however it dies), so the holder knows that every such
  folder there belongs to a dead process and removes it. A process that finds the lock taken
  waits for it, then finds the data prepared and returns a builder that reads it (the one it was
  given was built before the data existed and lacks its metadata). A gs:// data_dir, or a folder
  without file locks, is prepared without the lock and without the removal, as TFDS does.
  """
  if builder.is_prepared():
    return builder
  version_dir = os.fspath(builder.data_dir).rstrip('/')
  if '://' in version_dir:
    builder.download_and_prepare()
    return builder
  config_dir, version = os.path.split(version_dir)
  os.makedirs(config_dir, exist_ok=True)
  with preparation_lock(os.path.join(config_dir, f'.prepare_{version}.lock')) as locked:
    ready = type(builder)(config=builder.builder_config, data_dir=builder.data_dir_root)
    if ready.is_prepared():  # by the process that held the lock before us
      return ready
    for name in sorted(os.listdir(config_dir)) if locked else ():
      if name.startswith(_INCOMPLETE_PREFIX) and name.endswith(f'_{version}'):
        path = os.path.join(config_dir, name)
        logging.warning('Removing %s, left by a preparation that was killed.', path)
        shutil.rmtree(path)
    builder.download_and_prepare()
  return builder


@contextlib.contextmanager
def preparation_lock(path: str):
  """Holds the exclusive lock of the file `path` while the block runs (yields True), or yields
  False on a file system without file locks: whoever holds it may remove what a killed holder
  left, since no live process is writing it.

  The file is removed at the end, still locked, so none is left behind; a process that was
  waiting on the removed file then finds its path gone (or another file there) and locks anew.
  """
  while True:
    handle = open(path, 'a')
    try:
      try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        logging.warning('Waiting for another process that prepares this dataset (%s).', path)
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError as e:
      handle.close()
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise
      logging.warning('%s: this file system has no file locks (%s); preparing without.', path, e)
      with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
      yield False
      return
    try:
      same_file = os.path.samestat(os.stat(path), os.fstat(handle.fileno()))
    except FileNotFoundError:
      same_file = False
    if not same_file:
      handle.close()
      continue
    try:
      yield True
    finally:
      os.unlink(path)
      handle.close()
    return


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
