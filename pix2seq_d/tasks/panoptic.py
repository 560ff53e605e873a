"""The image task ('panoptic'): panoptic segmentation of one image at a time, scored by PQ.

The model reads the image and the noisy mask only. Evaluation batches are images padded to
config.model.image_size (data/eval_pipeline.py `make_eval_iterator`); each prediction is resized
back to its image's original size, every instance takes its majority class, small segments become
void and each stuff class one segment (postprocess.py). Predictions are written in the COCO
panoptic format (PNGs + one JSON); --mode=predict reads images or folders of images.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from PIL import Image

from pix2seq_d.evaluation import coco_format
from pix2seq_d.evaluation.base import Panoptic
from pix2seq_d.models import layers, sampling
from pix2seq_d.tasks import base, pictures, postprocess, predict_inputs

_VIDEO_OPTIONS = ('use_gt_cond_frames', 'single_frames', 'new_track_after')


class ImagePanoptic(base.Task):
  """Images in, COCO panoptic maps out."""

  name = 'panoptic'
  metrics = ('pq',)
  reads_clips = False
  picture_tag = 'eval/input_gt_prediction'

  def check_config(self) -> None:
    for field in _VIDEO_OPTIONS:
      value = self.config.eval[field]
      if value:
        raise ValueError(
          f'config.eval.{field}={value!r}: is a video option, and the task {self.name!r} '
          'segments images; leave it unset (False / 0) or use a video config (task '
          "'video_panoptic')."
        )

  def sample(self, graphdef, params, model_state, inputs, key) -> jax.Array:
    """{'image': (B, H, W, 3)} -> (B, Hm, Wm, 2) ids, config.diffusion.steps sampling steps."""
    model = nnx.merge(graphdef, params, model_state, copy=True)
    return sampling.sample_ids(model, inputs['image'], key, self.config)

  # -------------------------------------------------------------------------- evaluation

  def eval_iterator(self, source):
    from pix2seq_d.data import eval_pipeline  # TensorFlow only where a dataset is read.

    return eval_pipeline.make_eval_iterator(self.config, source=source)

  def eval_inputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {'image': batch['image']}

  def _postprocess(self, pred, unpadded_size, orig_size, is_thing) -> Panoptic:
    model = self.config.model
    semantic, instance = postprocess.postprocess(
      pred,
      layers.static_tuple(model.image_size),
      unpadded_size,
      orig_size,
      num_classes=model.num_classes,
      max_instances=model.max_instances,
      min_pixels=self.config.eval.min_pixels,
      is_thing=is_thing,
    )
    return Panoptic(semantic, instance)

  def eval_examples(self, batch, pred, categories) -> Iterator[base.Example]:
    is_thing = coco_format.is_thing_table(categories)
    for row in np.flatnonzero(batch['valid']):
      orig_h, orig_w = (int(v) for v in batch['orig_size'][row])
      image_id = int(batch['image_id'][row])
      yield base.Example(
        example_id=image_id,
        name=f'{image_id:012d}',
        prediction=self._postprocess(
          pred[row], batch['unpadded_size'][row], (orig_h, orig_w), is_thing
        ),
        ground_truth=batch['orig_label'][row, :orig_h, :orig_w],
        row=int(row),
      )

  def eval_picture(self, batch, pred, row, categories) -> np.ndarray:
    """[input | ground truth | prediction] at the input size."""
    return pictures.summary_image(batch['image'][row], batch['label'][row], pred[row], categories)

  def prediction_files(self, output_dir: str, categories) -> base.PredictionFiles:
    return PanopticImageFiles(output_dir, categories)

  # ------------------------------------------------------------------------- predict mode

  def predict_sources(self, input_path: str) -> dict[str, str]:
    """{file stem: path} of an image or of the images of a folder."""
    return {predict_inputs.stem(path): path for path in predict_inputs.list_images(input_path)}

  def load_predict_input(self, source: str) -> base.PredictInput:
    padded, original, unpadded = predict_inputs.load_image(
      source, layers.static_tuple(self.config.model.image_size), self.config.data.image_pad_value
    )
    return base.PredictInput(padded, original, unpadded)

  def predict_inputs(self, loaded: Sequence[base.PredictInput], rows: int):
    images = [item.model_input for item in loaded]
    return {'image': np.stack(images + [images[0]] * (rows - len(images)))}

  def postprocess_input(self, pred, loaded: base.PredictInput, categories) -> Panoptic:
    return self._postprocess(
      pred, loaded.unpadded_size, loaded.originals.shape[:2], coco_format.is_thing_table(categories)
    )


class PanopticImageFiles(base.PredictionFiles):
  """COCO panoptic predictions: output_dir/panoptic/<name>.png and output_dir/panoptic.json; with
  the original images also the prediction coloured over each, output_dir/overlays/<name>.png.
  Everything is staged (coco_format.PanopticWriter inside a `base.StagingFolder`) and moved into
  place by `close`, the JSON last; `abort` leaves output_dir as it was. In a multi-process
  evaluation each process writes its own examples into output_dir/process_<i>."""

  def __init__(self, output_dir: str, categories):
    if jax.process_count() > 1:
      output_dir = os.path.join(output_dir, f'process_{jax.process_index()}')
    self.output_dir = output_dir
    self.categories = list(categories)
    self._staging = base.StagingFolder(output_dir)
    self._writer: coco_format.PanopticWriter | None = None
    self._names: list[str] = []
    self._overlays: list[str] = []

  def add(self, example: base.Example) -> None:
    semantic, instance = example.prediction
    ids, segments = coco_format.segments_from_semantic_instance(semantic, instance, self.categories)
    if self._writer is None:
      self._writer = coco_format.PanopticWriter(self._staging.path, self.categories)
    self._writer.add(example.example_id, example.name, ids, segments)
    self._names.append(example.name)
    if example.originals is not None:
      coloured = pictures.colorize_panoptic(semantic, instance, self.categories)
      folder = os.path.join(self._staging.path, 'overlays')
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(pictures.overlay(example.originals, coloured)).save(
        os.path.join(folder, example.name + '.png')
      )
      self._overlays.append(example.name)

  def close(self) -> str:
    if self._writer is None:
      self._writer = coco_format.PanopticWriter(self._staging.path, self.categories)
    try:
      self._writer.commit()  # the PNGs and the JSON, complete, inside the staging folder
      for name in self._names:
        self._staging.move_into_place(os.path.join('panoptic', name + '.png'))
      for name in self._overlays:
        self._staging.move_into_place(os.path.join('overlays', name + '.png'))
      self._staging.move_into_place('panoptic.json')  # last: it names the PNGs moved before
    finally:
      self.abort()
    return os.path.join(self.output_dir, 'panoptic.json')

  def abort(self) -> None:
    if self._writer is not None:
      self._writer.abort()
    self._staging.remove()
