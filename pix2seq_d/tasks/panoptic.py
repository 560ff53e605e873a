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
from pix2seq_d.tasks import base, pictures, postprocess, predict_inputs, samples

_VIDEO_OPTIONS = ('use_gt_cond_frames', 'single_frames', 'new_track_after')
# Evaluators that need several samples of each image (config.eval.num_samples > 1).
SAMPLE_METRICS = ('pq_single', 'uncertainty_auroc')


class ImagePanoptic(base.Task):
  """Images in, COCO panoptic maps out."""

  name = 'panoptic'
  metrics = ('pq', *SAMPLE_METRICS)
  reads_clips = False
  picture_tag = 'eval/input_gt_prediction'

  def _check_video_options(self) -> None:
    for field in _VIDEO_OPTIONS:
      value = self.config.eval[field]
      if value:
        raise ValueError(
          f'config.eval.{field}={value!r}: is a video option, and the task {self.name!r} '
          'segments images; leave it unset (False / 0) or use a video config (task '
          "'video_panoptic')."
        )

  def check_config(self) -> None:
    self._check_video_options()
    evaluation = self.config.eval
    if evaluation.num_samples < 1:
      raise ValueError(f'config.eval.num_samples={evaluation.num_samples}: must be at least 1.')
    if not 0.0 <= evaluation.sample_match_iou < 1.0:
      raise ValueError(
        f'config.eval.sample_match_iou={evaluation.sample_match_iou}: must be in [0, 1).'
      )
    needs_samples = [m for m in evaluation.metrics if m in SAMPLE_METRICS]
    if needs_samples and evaluation.num_samples < 2:
      raise ValueError(
        f'config.eval.metrics names {needs_samples}, which compare several samples per image: '
        'set --config.eval.num_samples=K with K >= 2 (e.g. 8), or drop them.'
      )

  def sample(self, graphdef, params, model_state, inputs, key) -> jax.Array:
    """{'image': (B, H, W, 3)} -> (B, Hm, Wm, 2) ids, config.diffusion.steps sampling steps; with
    config.eval.num_samples = K > 1, (B, K, Hm, Wm, 2): K samples of each image from
    independent noise, the encoder run once per image."""
    model = nnx.merge(graphdef, params, model_state, copy=True)
    num = self.config.eval.num_samples
    ids = sampling.sample_ids(model, inputs['image'], key, self.config, num_samples=num)
    return ids if num == 1 else ids.reshape((-1, num) + ids.shape[1:])

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

  def _merged(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """One image's row of `sample`: (Hm, Wm, 2) ids and None, or its K samples merged into one
    (Hm, Wm, 2) map and the (Hm, Wm) uncertainty (samples.merge_samples)."""
    if pred.ndim == 3:
      return pred, None
    model = self.config.model
    return samples.merge_samples(
      pred, model.num_classes, model.max_instances, self.config.eval.sample_match_iou
    )

  def _outputs(self, pred, unpadded_size, orig_size, is_thing) -> dict:
    """The Example fields of one image's row of `sample` at its original size: the prediction,
    and with several samples the first one alone and the uncertainty."""
    merged, uncertainty = self._merged(pred)
    outputs = {'prediction': self._postprocess(merged, unpadded_size, orig_size, is_thing)}
    if uncertainty is not None:
      outputs['single'] = self._postprocess(pred[0], unpadded_size, orig_size, is_thing)
      outputs['uncertainty'] = postprocess.to_original_size(
        uncertainty, layers.static_tuple(self.config.model.image_size), unpadded_size, orig_size
      )
    return outputs

  def eval_examples(self, batch, pred, categories) -> Iterator[base.Example]:
    is_thing = coco_format.is_thing_table(categories)
    for row in np.flatnonzero(batch['valid']):
      orig_h, orig_w = (int(v) for v in batch['orig_size'][row])
      image_id = int(batch['image_id'][row])
      yield base.Example(
        example_id=image_id,
        name=f'{image_id:012d}',
        ground_truth=batch['orig_label'][row, :orig_h, :orig_w],
        row=int(row),
        **self._outputs(pred[row], batch['unpadded_size'][row], (orig_h, orig_w), is_thing),
      )

  def eval_picture(self, batch, pred, row, categories) -> np.ndarray:
    """[input | ground truth | prediction] at the input size; with several samples the merged
    prediction and then the uncertainty."""
    merged, uncertainty = self._merged(pred[row])
    return pictures.summary_image(
      batch['image'][row], batch['label'][row], merged, categories, uncertainty
    )

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
    return self.predict_example(0, '', pred, loaded, categories, 0).prediction

  def predict_example(self, index, name, pred, loaded, categories, row) -> base.Example:
    outputs = self._outputs(
      pred, loaded.unpadded_size, loaded.originals.shape[:2], coco_format.is_thing_table(categories)
    )
    return base.Example(index, name, originals=loaded.originals, row=row, **outputs)


class PanopticImageFiles(base.PredictionFiles):
  """COCO panoptic predictions: output_dir/panoptic/<name>.png and output_dir/panoptic.json; with
  the original images also the prediction coloured over each, output_dir/overlays/<name>.png; with
  several samples per image the 8-bit uncertainty, output_dir/uncertainty/<name>.png (0 where the
  samples agree, 255 where no two do). Everything is staged (coco_format.PanopticWriter inside a
  `base.StagingFolder`) and moved into place by `close`, the JSON last; `abort` leaves output_dir
  as it was. In a multi-process evaluation each process writes its own examples into
  output_dir/process_<i>."""

  def __init__(self, output_dir: str, categories):
    if jax.process_count() > 1:
      output_dir = os.path.join(output_dir, f'process_{jax.process_index()}')
    self.output_dir = output_dir
    self.categories = list(categories)
    self._staging = base.StagingFolder(output_dir)
    self._writer: coco_format.PanopticWriter | None = None
    self._names: list[str] = []
    self._pictures: list[str] = []  # overlays/<name>.png and uncertainty/<name>.png

  def add(self, example: base.Example) -> None:
    semantic, instance = example.prediction
    ids, segments = coco_format.segments_from_semantic_instance(semantic, instance, self.categories)
    if self._writer is None:
      self._writer = coco_format.PanopticWriter(self._staging.path, self.categories)
    self._writer.add(example.example_id, example.name, ids, segments)
    self._names.append(example.name)
    if example.originals is not None:
      coloured = pictures.colorize_panoptic(semantic, instance, self.categories)
      self._save_picture('overlays', example.name, pictures.overlay(example.originals, coloured))
    if example.uncertainty is not None:
      self._save_picture(
        'uncertainty', example.name, pictures.uncertainty_picture(example.uncertainty)
      )

  def _save_picture(self, folder: str, name: str, picture: np.ndarray) -> None:
    relative = os.path.join(folder, name + '.png')
    os.makedirs(os.path.join(self._staging.path, folder), exist_ok=True)
    Image.fromarray(picture).save(os.path.join(self._staging.path, relative))
    self._pictures.append(relative)

  def close(self) -> str:
    if self._writer is None:
      self._writer = coco_format.PanopticWriter(self._staging.path, self.categories)
    try:
      self._writer.commit()  # the PNGs and the JSON, complete, inside the staging folder
      for name in self._names:
        self._staging.move_into_place(os.path.join('panoptic', name + '.png'))
      for relative in self._pictures:
        self._staging.move_into_place(relative)
      self._staging.move_into_place('panoptic.json')  # last: it names the PNGs moved before
    finally:
      self.abort()
    return os.path.join(self.output_dir, 'panoptic.json')

  def abort(self) -> None:
    if self._writer is not None:
      self._writer.abort()
    self._staging.remove()
