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
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from pix2seq_d.evaluation.base import Panoptic
from pix2seq_d.formats import coco_panoptic
from pix2seq_d.models import layers, sampling
from pix2seq_d.parallel import hosts
from pix2seq_d.tasks import base, mask_inputs, pictures, postprocess, predict_inputs, samples

# The video options of config.eval and the value that leaves each unset (its default).
_VIDEO_OPTIONS = {
  'use_gt_cond_frames': False,
  'single_frames': False,
  'new_track_after': 0,
  'max_frames_per_sequence': 0,
  'score_all_frames_too': False,
  'one_class_per_track': True,
}
# Evaluators that need several samples of each image (config.eval.num_samples > 1).
SAMPLE_METRICS = ('pq_single', 'uncertainty_auroc')
# Evaluators of refined (config.eval.refine_from) and completed (config.eval.given_fraction) masks.
EDIT_METRICS = ('pq_input', 'pq_rest', 'pq_rest_unaided', 'given_pixels_kept')


class ImagePanoptic(base.Task):
  """Images in, COCO panoptic maps out."""

  name = 'panoptic'
  metrics = ('pq', *SAMPLE_METRICS, *EDIT_METRICS)
  reads_clips = False
  picture_tag = 'eval/input_gt_prediction'

  def __init__(self, config):
    super().__init__(config)
    # config.eval.refine_from's masks {image_id: MaskInput}, read by each eval_iterator.
    self._refine: dict[int, mask_inputs.MaskInput] | None = None
    # The batch's given masks {image_id: MaskInput}, from eval_inputs to eval_examples.
    self._given_masks: dict[int, mask_inputs.MaskInput] = {}
    # config.predict.given's masks {input name: MaskInput}, read by prepare_predict.
    self._predict_given: dict[str, mask_inputs.MaskInput] = {}

  def _check_video_options(self) -> None:
    for field, unset in _VIDEO_OPTIONS.items():
      value = self.config.eval[field]
      if value != unset:
        raise ValueError(
          f'config.eval.{field}={value!r}: is a video option, and the task {self.name!r} '
          f'segments images; leave it at {unset!r} or use a video config (task '
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
    if evaluation.given_fraction and evaluation.refine_from:
      raise ValueError(
        'config.eval.given_fraction and config.eval.refine_from: a pass completes partial masks '
        'or refines predictions, not both; set one of them.'
      )
    if not 0.0 <= evaluation.given_fraction < 1.0:
      raise ValueError(
        f'config.eval.given_fraction={evaluation.given_fraction}: must be in [0, 1).'
      )
    for field in ('eval.given_fraction', 'predict.given'):
      section, name = field.split('.')
      if self.config[section][name] and evaluation.num_samples > 1:
        raise ValueError(
          f'config.{field}: completion draws one sample per image; leave '
          'config.eval.num_samples at 1.'
        )
    if not 0.0 <= evaluation.refine_max_uncertainty <= 1.0:
      raise ValueError(
        f'config.eval.refine_max_uncertainty={evaluation.refine_max_uncertainty}: must be in '
        '[0, 1].'
      )
    if not 0.0 < evaluation.refine_t0 <= 1.0:
      raise ValueError(f'config.eval.refine_t0={evaluation.refine_t0}: must be in (0, 1].')
    for metric, needs, field in (
      ('pq_input', evaluation.refine_from, 'config.eval.refine_from=FILE.json'),
      ('pq_rest', evaluation.given_fraction, 'config.eval.given_fraction=F'),
      ('pq_rest_unaided', evaluation.given_fraction, 'config.eval.given_fraction=F'),
      ('given_pixels_kept', evaluation.given_fraction, 'config.eval.given_fraction=F'),
    ):
      if metric in evaluation.metrics and not needs:
        raise ValueError(f'config.eval.metrics names {metric!r}, which needs {field}.')
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
    refine = None
    if 'refine_from' in inputs:
      refine = (inputs['refine_from'], self.config.eval.refine_t0)
    ids = sampling.sample_ids(
      model, inputs['image'], key, self.config, num_samples=num, refine=refine
    )
    if 'given' in inputs:
      completed = sampling.sample_ids(
        model, inputs['image'], key, self.config, given=(inputs['given'], inputs['given_mask'])
      )
      if not self.config.eval.given_fraction:  # --mode=predict with config.predict.given
        return completed
      return jnp.stack([completed, ids], axis=1)  # beside it a plain sample from the same noise
    return ids if num == 1 else ids.reshape((-1, num) + ids.shape[1:])

  # -------------------------------------------------------------------------- evaluation

  def eval_iterator(self, source):
    from pix2seq_d.data import eval_pipeline  # TensorFlow only where a dataset is read.
    from pix2seq_d.data import registry as data_registry

    source = source or data_registry.get_source(self.config)
    self._refine = None
    if self.config.eval.refine_from:
      # Read and checked against the eval set now: bad input costs no sampling.
      flag = 'config.eval.refine_from'
      masks = mask_inputs.read_mask_file(
        self.config.eval.refine_from, source.categories, self.config.model.max_instances, flag
      )
      sizes = {}
      for batch in eval_pipeline.make_eval_iterator(self.config, source=source):
        for row in np.flatnonzero(batch['valid']):
          sizes[int(batch['image_id'][row])] = tuple(int(v) for v in batch['orig_size'][row])
      for share in hosts.gather_json(sorted(sizes.items())):
        sizes.update((int(k), tuple(v)) for k, v in share)
      mask_inputs.check_images(masks, sizes, flag, every_image=True)
      self._refine = masks
    return eval_pipeline.make_eval_iterator(self.config, source=source)

  def _mask_frame(self, maps: np.ndarray, unpadded_size) -> np.ndarray:
    """(Ho, Wo, 2) original-size ids -> (Hm, Wm, 2) in the model's padded mask frame."""
    model = self.config.model
    return mask_inputs.to_mask_frame(
      maps,
      tuple(int(v) for v in unpadded_size),
      layers.static_tuple(model.image_size),
      layers.static_tuple(model.mask_size),
    )

  def _given(self, batch, row) -> mask_inputs.MaskInput:
    """The partial mask config.eval.given_fraction gives the image of `row` (seeded per image);
    chosen once by `eval_inputs` and read again by `eval_examples`."""
    image_id = int(batch['image_id'][row])
    if image_id in self._given_masks:
      return self._given_masks.pop(image_id)
    orig_h, orig_w = (int(v) for v in batch['orig_size'][row])
    semantic, instance = mask_inputs.choose_given(
      batch['orig_label'][row, :orig_h, :orig_w],
      self.config.eval.given_fraction,
      seed=(self.config.seed, image_id),
    )
    return mask_inputs.MaskInput(semantic, instance, f'image {image_id}')

  def eval_inputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{'image'}, with config.eval.refine_from the 'refine_from' ids and with
    config.eval.given_fraction the 'given' ids and 'given_mask', (B, Hm, Wm, ...) each."""
    inputs = {'image': batch['image']}
    masks = None
    if self._refine is not None:
      masks = {row: self._refine[int(batch['image_id'][row])] for row in self._valid_rows(batch)}
    elif self.config.eval.given_fraction:
      masks = {row: self._given(batch, row) for row in self._valid_rows(batch)}
      self._given_masks = {int(batch['image_id'][row]): mask for row, mask in masks.items()}
    if masks is None:
      return inputs
    ids = self._mask_batch(masks, batch['unpadded_size'], len(batch['image']))
    if self._refine is not None:
      inputs['refine_from'] = ids
    else:
      inputs['given'], inputs['given_mask'] = ids, ids[..., 1] > 0
    return inputs

  def _mask_batch(self, masks: dict, unpadded_sizes, rows: int) -> np.ndarray:
    """{row: MaskInput} -> int32 (rows, Hm, Wm, 2) ids in the model's mask frame (0 elsewhere)."""
    mask_h, mask_w = layers.static_tuple(self.config.model.mask_size)
    ids = np.zeros((rows, mask_h, mask_w, 2), np.int32)
    for row, mask in masks.items():
      maps = np.stack([mask.semantic, mask.instance], axis=-1)
      ids[row] = self._mask_frame(maps, unpadded_sizes[row])
    return ids

  @staticmethod
  def _valid_rows(batch) -> list[int]:
    return [int(row) for row in np.flatnonzero(batch['valid'])]

  def _postprocess(self, pred, unpadded_size, orig_size, is_thing) -> Panoptic:
    return Panoptic(
      *postprocess.postprocess(pred, unpadded_size, orig_size, self.postprocess_options, is_thing)
    )

  def _merged(self, pred: np.ndarray) -> samples.Merge | None:
    """One image's row of `sample`: None for one (Hm, Wm, 2) sample, the Merge of K samples."""
    if pred.ndim == 3:
      return None
    model = self.config.model
    return samples.merge_samples(
      pred, model.num_classes, model.max_instances, self.config.eval.sample_match_iou
    )

  def _outputs(self, pred, unpadded_size, orig_size, is_thing) -> dict:
    """The Example fields of one image's row of `sample` at its original size: the prediction,
    and with several samples the first one alone and the uncertainty."""
    merge = self._merged(pred)
    if merge is None:
      return {'prediction': self._postprocess(pred, unpadded_size, orig_size, is_thing)}
    return {
      'prediction': self._postprocess(merge.ids, unpadded_size, orig_size, is_thing),
      'single': self._postprocess(pred[0], unpadded_size, orig_size, is_thing),
      'uncertainty': samples.uncertainty_at(
        merge, layers.static_tuple(self.config.model.image_size), unpadded_size, orig_size
      ),
    }

  def eval_examples(self, batch, pred, categories) -> Iterator[base.Example]:
    is_thing = coco_panoptic.is_thing_table(categories)
    for row in np.flatnonzero(batch['valid']):
      orig_h, orig_w = (int(v) for v in batch['orig_size'][row])
      image_id = int(batch['image_id'][row])
      unpadded = batch['unpadded_size'][row]
      extra = {}
      if self.config.eval.given_fraction:
        completed, plain = pred[row]
        outputs = self._outputs(completed, unpadded, (orig_h, orig_w), is_thing)
        given = self._given(batch, row)
        outputs['prediction'] = Panoptic(
          *mask_inputs.paste_given(*outputs['prediction'], given, is_thing)
        )
        extra['given'] = Panoptic(given.semantic, given.instance)
        extra['unaided'] = self._postprocess(plain, unpadded, (orig_h, orig_w), is_thing)
      else:
        outputs = self._outputs(pred[row], unpadded, (orig_h, orig_w), is_thing)
      if self._refine is not None:
        source = self._refine[image_id]
        extra['refined_from'] = Panoptic(source.semantic, source.instance)
        if self.config.eval.refine_keep_input:
          outputs['prediction'] = self._keep_input(
            pred[row], source, unpadded, outputs['prediction'], is_thing
          )
      yield base.Example(
        example_id=image_id,
        name=f'{image_id:012d}',
        ground_truth=batch['orig_label'][row, :orig_h, :orig_w],
        row=int(row),
        **outputs,
        **extra,
      )

  def _keep_input(
    self, pred, source: mask_inputs.MaskInput, unpadded_size, refined: Panoptic, is_thing
  ) -> Panoptic:
    """A refined prediction with its input's pixels kept where the two differ by no more than
    a cell of the mask grid (mask_inputs.keep_agreeing; config.eval.refine_keep_input), and with
    K samples also where their uncertainty exceeds config.eval.refine_max_uncertainty."""
    model = self.config.model
    merge = self._merged(pred)
    ids = pred if merge is None else merge.ids
    source_cells = self._mask_frame(np.stack([source.semantic, source.instance], -1), unpadded_size)
    table = mask_inputs.refined_ids_table(
      ids, source_cells, model.num_classes, model.max_instances, self.config.eval.sample_match_iou
    )
    image_size = layers.static_tuple(model.image_size)
    kept = mask_inputs.input_kept(
      table[np.clip(ids[..., 1], 0, model.max_instances - 1)],
      source_cells[..., 1],
      source.instance,
      lambda cells: postprocess.to_original_size(
        cells, image_size, unpadded_size, source.instance.shape
      ),
    )
    if merge is not None:  # K samples: the model's pixels only where they agree enough
      uncertainty = samples.uncertainty_at(merge, image_size, unpadded_size, source.instance.shape)
      kept |= uncertainty > self.config.eval.refine_max_uncertainty
    return Panoptic(
      *mask_inputs.keep_agreeing(refined.semantic, refined.instance, source, kept, table, is_thing)
    )

  def eval_picture(self, batch, pred, row, categories) -> np.ndarray:
    """[input | ground truth | prediction] at the input size; with several samples the merged
    prediction and then the uncertainty."""
    row_pred = pred[row][0] if self.config.eval.given_fraction else pred[row]
    merge = self._merged(row_pred)
    if merge is None:
      return pictures.summary_image(batch['image'][row], batch['label'][row], row_pred, categories)
    size = batch['image'].shape[1:3]
    uncertainty = samples.uncertainty_at(merge, size, size, size)
    return pictures.summary_image(
      batch['image'][row], batch['label'][row], merge.ids, categories, uncertainty
    )

  def prediction_files(self, output_dir: str, categories) -> base.PredictionFiles:
    return PanopticImageFiles(output_dir, categories)

  # ------------------------------------------------------------------------- predict mode

  def predict_sources(self, input_path: str) -> dict[str, str]:
    """{file stem: path} of an image or of the images of a folder."""
    return {predict_inputs.stem(path): path for path in predict_inputs.list_images(input_path)}

  def prepare_predict(self, sources: dict[str, str], categories) -> None:
    """Reads config.predict.given and checks it against the inputs ({name: path})."""
    self._predict_given = {}
    if not self.config.predict.given:
      return
    flag = 'config.predict.given'
    masks = mask_inputs.read_mask_file(
      self.config.predict.given, categories, self.config.model.max_instances, flag, by_stem=True
    )
    sizes = {}
    for name in masks:
      if name in sources:
        sizes[name] = predict_inputs.image_size(sources[name])
    mask_inputs.check_images(masks, sizes, flag, every_image=False)
    self._predict_given = masks

  def load_predict_input(self, source: str) -> base.PredictInput:
    padded, original, unpadded = predict_inputs.load_image(
      source, layers.static_tuple(self.config.model.image_size), self.config.data.image_pad_value
    )
    given = self._predict_given.get(predict_inputs.stem(source))
    return base.PredictInput(padded, original, unpadded, given)

  def predict_inputs(self, loaded: Sequence[base.PredictInput], rows: int):
    images = [item.model_input for item in loaded]
    inputs = {'image': np.stack(images + [images[0]] * (rows - len(images)))}
    if self.config.predict.given:  # inputs without a mask are held nowhere: plain sampling
      masks = {row: item.given for row, item in enumerate(loaded) if item.given is not None}
      sizes = [item.unpadded_size for item in loaded] + [(1, 1)] * (rows - len(loaded))
      ids = self._mask_batch(masks, sizes, rows)
      inputs['given'], inputs['given_mask'] = ids, ids[..., 1] > 0
    return inputs

  def postprocess_input(self, pred, loaded: base.PredictInput, categories) -> Panoptic:
    return self.predict_example(0, '', pred, loaded, categories, 0).prediction

  def predict_example(self, index, name, pred, loaded, categories, row) -> base.Example:
    is_thing = coco_panoptic.is_thing_table(categories)
    outputs = self._outputs(pred, loaded.unpadded_size, loaded.originals.shape[:2], is_thing)
    if loaded.given is not None:
      outputs['prediction'] = Panoptic(
        *mask_inputs.paste_given(*outputs['prediction'], loaded.given, is_thing)
      )
    return base.Example(index, name, originals=loaded.originals, row=row, **outputs)


class PanopticImageFiles(base.PredictionFiles):
  """COCO panoptic predictions: output_dir/panoptic/<name>.png and output_dir/panoptic.json; with
  the original images also the prediction coloured over each, output_dir/overlays/<name>.png; with
  several samples per image the 8-bit uncertainty, output_dir/uncertainty/<name>.png (0 where the
  samples agree, 255 where no two do). Everything is staged (coco_panoptic.PanopticWriter inside a
  `base.StagingFolder`) and moved into place by `close`, the JSON last; `abort` leaves output_dir
  as it was. In a multi-process evaluation each process writes its own examples into
  output_dir/process_<i>."""

  def __init__(self, output_dir: str, categories):
    if jax.process_count() > 1:
      output_dir = os.path.join(output_dir, f'process_{jax.process_index()}')
    self.output_dir = output_dir
    self.categories = list(categories)
    self._staging = base.StagingFolder(output_dir)
    self._writer: coco_panoptic.PanopticWriter | None = None
    self._names: list[str] = []
    self._pictures: list[str] = []  # overlays/<name>.png and uncertainty/<name>.png

  def add(self, example: base.Example) -> None:
    semantic, instance = example.prediction
    ids, segments = coco_panoptic.segments_from_semantic_instance(
      semantic, instance, self.categories
    )
    if self._writer is None:
      self._writer = coco_panoptic.PanopticWriter(self._staging.path, self.categories)
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
      self._writer = coco_panoptic.PanopticWriter(self._staging.path, self.categories)
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
