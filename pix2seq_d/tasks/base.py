"""The task interface: everything that differs between segmenting images and streaming videos.

The loops (training, the one evaluation loop, the one predict runner) call a task and nothing
else for these questions; tasks/registry.py picks the task once, from the config's `task`:

  what the model reads     `check_source` (the dataset holds what it reads), `train_iterator`
                           (its training batches), `train_batch_spec` (their arrays),
                           `cond_channels` and `train_conditioning` (denoiser inputs beyond the
                           noisy mask and the image features), `sample_input_spec`
  which metrics it feeds   `metrics` (names of evaluation/registry.py's evaluators)
  sampling                 `sample`: the pure predict function loops/state.py jits, on a dict of
                           batch-sharded inputs from `eval_inputs` or `predict_inputs`
  evaluation               `eval_iterator`, `eval_inputs` (padding that keeps processes in
                           lockstep), `eval_examples` (post-processing to original size),
                           `eval_picture` (TensorBoard) and `prediction_files`
  --mode=predict           `predict_sources`, `load_predict_input`, `predict_inputs`,
                           `postprocess_input`, and the same `prediction_files`

A task holds the experiment config; methods that need the dataset's categories take them.
Images are one frame without a time axis: image maps are (H, W), clip maps (T, H, W).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import jax
import numpy as np

from pix2seq_d.evaluation.base import Panoptic
from pix2seq_d.tasks import pictures, postprocess


@dataclasses.dataclass(frozen=True)
class Example:
  """One example post-processed at its original size.

  Attributes:
    example_id: what the evaluators and prediction files call it (a COCO image id, a video name).
    name: the file stem (images) or folder name (videos) of its prediction files.
    prediction: the post-processed maps, (Ho, Wo) or (T, Ho, Wo).
    ground_truth: int (..., Ho, Wo, 3) [semantic, instance, crowd]; None in --mode=predict.
    originals: the uint8 (..., Ho, Wo, 3) input, for overlays; None in evaluation.
    row: its row in the batch.
    single: with several samples (config.eval.num_samples > 1), the first sample alone,
      post-processed like `prediction` (which then merges them all); else None.
    uncertainty: with several samples, float32 (..., Ho, Wo) in [0, 1], where they disagree.
    given: in a completion pass, the partial mask that was given (0 unknown); else None.
    unaided: in a completion pass, a plain sample of the same image from the same noise.
    refined_from: in a refinement pass, the input prediction that was refined.
    all_frames: a video with config.eval.score_all_frames_too: (ground truth, prediction) of
      every frame of the clip, while `ground_truth` and `prediction` hold the first
      config.eval.max_frames_per_sequence; else None.
  """

  example_id: int | str
  name: str
  prediction: Panoptic
  ground_truth: np.ndarray | None = None
  originals: np.ndarray | None = None
  row: int = 0
  single: Panoptic | None = None
  uncertainty: np.ndarray | None = None
  given: Panoptic | None = None
  unaided: Panoptic | None = None
  refined_from: Panoptic | None = None
  all_frames: tuple[np.ndarray, Panoptic] | None = None


@dataclasses.dataclass(frozen=True)
class PredictInput:
  """One input of --mode=predict, read and fitted to the model.

  Attributes:
    model_input: float32 (H, W, 3) or (T, H, W, 3) in [0, 1], padded to config.model.image_size.
    originals: uint8 (Ho, Wo, 3) or (T, Ho, Wo, 3) as read.
    unpadded_size: (h, w) of the resized image inside the padded input.
    given: the known part of its mask to complete (config.predict.given), or None.
  """

  model_input: np.ndarray
  originals: np.ndarray
  unpadded_size: tuple[int, int]
  given: Any = None


class PredictionFiles(abc.ABC):
  """Where a task writes its predictions: `add` each example, then `close` (or `abort`).

  A pass is all or nothing: `add` stages (`StagingFolder`) and `close` moves the files of every
  example added into place, so an interrupted pass leaves the output folder as it was. A pass
  stopped on purpose may `close` to keep the examples added so far (--mode=predict does).
  """

  @abc.abstractmethod
  def add(self, example: Example) -> None:
    """Stages one example's files; with `example.originals`, also its overlays."""

  @abc.abstractmethod
  def close(self) -> str:
    """Moves the files of the examples added into place and returns the path a reader opens
    (a JSON file or a folder)."""

  def abort(self) -> None:  # noqa: B027 (files that stage nothing have nothing to remove)
    """Removes what this pass staged (after `close`: nothing); files completed before are kept."""


class StagingFolder:
  """A hidden folder inside `output_dir` where a pass writes its files before they are moved into
  place (a rename: the same file system), so that readers never see a pass half-written.

  The staging folder, and `output_dir` with any missing parents, are created at the first use of
  `path`; `remove` deletes the staging folder and those created folders that hold nothing, so a
  pass that moved nothing into place leaves no trace (not even an empty predictions/step_N).
  """

  def __init__(self, output_dir: str):
    self.output_dir = output_dir
    self._path: str | None = None
    self._created: list[str] = []  # folders made for it, innermost first

  @property
  def path(self) -> str:
    """The staging folder (created on first use)."""
    if self._path is None:
      missing, folder = [], os.path.abspath(self.output_dir)
      while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
      os.makedirs(self.output_dir, exist_ok=True)
      self._created = missing
      self._path = tempfile.mkdtemp(prefix='.staging-', dir=self.output_dir)
    return self._path

  def move_into_place(self, relative: str) -> None:
    """Moves <staging>/`relative` (a file or folder) to `output_dir`/`relative`, replacing what
    is there under that name."""
    source = os.path.join(self.path, relative)
    target = os.path.join(self.output_dir, relative)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.isdir(target) and not os.path.islink(target):
      # Out of the way first, so that the name holds either the old folder or the new one.
      old = tempfile.mkdtemp(prefix='.replaced-', dir=self.path)
      os.replace(target, os.path.join(old, 'old'))
    os.replace(source, target)

  def remove(self) -> None:
    """Deletes the staging folder and the created folders left empty; idempotent."""
    if self._path is not None:
      shutil.rmtree(self._path, ignore_errors=True)
      self._path = None
    for folder in self._created:
      try:
        os.rmdir(folder)
      except OSError:  # it holds files (moved into place, or another writer's): keep it
        break
    self._created = []


class Task(abc.ABC):
  """One task (see the module docstring).

  Attributes:
    name: the value of the config's `task` field that selects it.
    metrics: the evaluators (config.eval.metrics) it can feed.
    reads_clips: whether its examples are clips (a dataset's `Source.clips`), not images.
    picture_tag: the TensorBoard tag of its evaluation pictures.
  """

  name: ClassVar[str]
  metrics: ClassVar[tuple[str, ...]]
  reads_clips: ClassVar[bool]
  picture_tag: ClassVar[str]

  def __init__(self, config):
    self.config = config

  # ------------------------------------------------------------------------------ config

  def check_config(self) -> None:  # noqa: B027 (a task without fields of its own checks none)
    """Raises ValueError naming a field of the config that this task cannot use."""

  # ------------------------------------------------------------------------------- model

  def check_source(self, source, *, training: bool) -> None:
    """Raises ValueError naming config.task and config.data.name when the dataset (a
    data/source.py `Source`) holds images and the task reads clips, or the reverse; `training`:
    the run trains on it (a task may check its training split too)."""
    if source.clips != self.reads_clips:
      raise ValueError(
        f'config.task={self.name!r} does not fit config.data.name={source.name!r} '
        f'({"a video" if source.clips else "an image"} dataset).'
      )

  def train_stream(self):
    """What a training example is, for data/pipeline.py's `make_train_iterator`: an image."""
    from pix2seq_d.data import pipeline  # TensorFlow only where a dataset is read.

    return pipeline.image_stream

  def train_iterator(
    self,
    source=None,
    *,
    start_position: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
  ):
    """Endless, resumable training batches of `source` (default: config.data's) for this
    process (data/pipeline.py's `make_train_iterator`), with the arrays of `train_batch_spec`."""
    from pix2seq_d.data import pipeline

    return pipeline.make_train_iterator(
      self.config,
      self.train_stream(),
      source=source,
      start_position=start_position,
      process_index=process_index,
      process_count=process_count,
    )

  def cond_channels(self) -> int:
    """Denoiser input channels beyond the noisy mask and the image features."""
    return 0

  def train_conditioning(self, batch: dict[str, jax.Array]) -> jax.Array | None:
    """The denoiser's conditioning inputs for a training batch, (B, Hm, Wm, `cond_channels`)
    analog bits, or None (images condition on nothing but the image). Traced in the train step."""
    return None

  def train_batch_spec(self, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The arrays of `rows` rows of a training batch (what the input pipeline yields): 'image'
    float32 (rows, H, W, 3) in [0, 1] and 'label' int32 (rows, Hm, Wm, 2) [semantic, instance];
    int arrays interleave semantic and instance channels."""
    height, width = self.config.model.image_size
    mask_h, mask_w = self.config.model.mask_size
    return {
      'image': jax.ShapeDtypeStruct((rows, height, width, 3), np.float32),
      'label': jax.ShapeDtypeStruct((rows, mask_h, mask_w, 2), np.int32),
    }

  def train_pictures(self, batch: dict[str, np.ndarray], categories) -> np.ndarray:
    """(N, H, 2 W, 3) uint8 [input | ground truth] of the first rows of a training batch."""
    count = min(self.config.eval.num_image_summaries, len(batch['image']))
    width = batch['image'].shape[2]
    return np.stack(
      [
        pictures.summary_image(batch['image'][i], batch['label'][i], batch['label'][i], categories)[
          :, : 2 * width
        ]
        for i in range(count)
      ]
    )

  # ---------------------------------------------------------------------------- sampling

  def sample_input_spec(self, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The arrays of `rows` rows of `sample`'s inputs: 'image' float32 (rows, H, W, 3)."""
    height, width = self.config.model.image_size
    return {'image': jax.ShapeDtypeStruct((rows, height, width, 3), np.float32)}

  @abc.abstractmethod
  def sample(self, graphdef, params, model_state, inputs: dict[str, jax.Array], key) -> jax.Array:
    """The predict function: int32 [semantic, instance] ids at mask size, (B, Hm, Wm, 2) or
    (B, T, Hm, Wm, 2), of `inputs` from `eval_inputs` or `predict_inputs`. Pure (jitted by
    loops/state.py); `graphdef` is the model's in evaluation mode."""

  # -------------------------------------------------------------------------- evaluation

  @functools.cached_property
  def postprocess_options(self) -> postprocess.Options:
    """The config's post-processing settings, read at the first use: a config that check_config
    rejects may lack what they need."""
    return postprocess.Options.from_config(self.config)

  @abc.abstractmethod
  def eval_iterator(self, source):
    """One pass of this process's evaluation batches of `source` (data/eval_pipeline.py)."""

  @abc.abstractmethod
  def eval_inputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's rows of the sampler's inputs for an evaluation batch, padded to shapes
    every process shares."""

  @abc.abstractmethod
  def eval_examples(
    self, batch: dict[str, np.ndarray], pred: np.ndarray, categories
  ) -> Iterator[Example]:
    """The valid examples of an evaluation batch, with their ground truth, post-processed from
    `pred` (this process's rows of `sample`'s output)."""

  @abc.abstractmethod
  def eval_picture(self, batch: dict[str, np.ndarray], pred: np.ndarray, row: int, categories):
    """A uint8 (H, W, 3) picture of input, ground truth and prediction of one row."""

  @abc.abstractmethod
  def prediction_files(self, output_dir: str, categories) -> PredictionFiles:
    """Writes predictions into `output_dir` (in evaluation <workdir>/predictions/step_<N>)."""

  # ------------------------------------------------------------------------- predict mode

  @abc.abstractmethod
  def predict_sources(self, input_path: str) -> dict[str, Any]:
    """{name: what to read} for config.predict.input; names are distinct and name the outputs.
    Problems that can be seen before reading anything raise ValueError / FileNotFoundError."""

  @abc.abstractmethod
  def load_predict_input(self, source: Any) -> PredictInput:
    """Reads one source; ValueError naming the file when it cannot be read."""

  @abc.abstractmethod
  def predict_inputs(self, loaded: Sequence[PredictInput], rows: int) -> dict[str, np.ndarray]:
    """The sampler's inputs for `loaded`, padded to `rows` rows (repeating the first input)."""

  @abc.abstractmethod
  def postprocess_input(self, pred: np.ndarray, loaded: PredictInput, categories) -> Panoptic:
    """One row of `sample`'s output at the original size of `loaded`."""

  def prepare_predict(self, sources: dict[str, str], categories) -> None:
    """Reads and checks what --mode=predict needs beside its inputs ({name: path}), before any
    sampling (the image task: config.predict.given)."""
    if self.config.predict.given:
      raise ValueError(
        f'config.predict.given={self.config.predict.given!r}: the task {self.name!r} does not '
        'complete partial masks (the image task does); leave it empty.'
      )

  def predict_example(
    self, index: int, name: str, pred: np.ndarray, loaded: PredictInput, categories, row: int
  ) -> Example:
    """The Example of one predicted input (its `prediction_files` entry): `postprocess_input`
    of its row of `sample`'s output, with the originals for overlays."""
    return Example(
      example_id=index,
      name=name,
      prediction=self.postprocess_input(pred, loaded, categories),
      originals=loaded.originals,
      row=row,
    )
