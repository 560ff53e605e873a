"""`--mode=predict`: panoptic segmentation of new images with a trained run's EMA weights.

  python -m pix2seq_d.main --config=configs/shapes.py --workdir=RUN --mode=predict \
      --config.predict.input=IMAGE_OR_FOLDER --config.predict.output=OUT

Writes OUT/panoptic/*.png + OUT/panoptic.json (COCO panoptic format, the categories of the run's
dataset) and OUT/overlays/*.png (the prediction coloured over the image). Outputs are named by the
input's stem, so two inputs with one stem (a.png, a.jpg) are refused before anything runs. An
image that cannot be read is skipped with a warning, and the others are all written; the run
fails only when no image could be read.
"""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from pix2seq_d import checkpoints, config_checks, sharding, workdir_files
from pix2seq_d.evaluation import coco_format, visualize
from pix2seq_d.models import layers
from pix2seq_d.tasks import panoptic

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def list_images(input_path: str) -> list[str]:
  """An image file, or the images of a folder (sorted).

  Raises:
    ValueError: two images of the folder share a stem (their outputs would overwrite each other).
    FileNotFoundError: no such file, or a folder without images.
  """
  if not input_path:
    raise ValueError('--mode=predict needs --config.predict.input=IMAGE_OR_FOLDER.')
  if os.path.isdir(input_path):
    paths = sorted(
      os.path.join(input_path, name)
      for name in os.listdir(input_path)
      if name.lower().endswith(IMAGE_SUFFIXES)
    )
    if not paths:
      raise FileNotFoundError(f'config.predict.input={input_path} holds no {IMAGE_SUFFIXES} files.')
    by_stem = {}
    for path in paths:
      by_stem.setdefault(_stem(path), []).append(os.path.basename(path))
    clashes = {stem: names for stem, names in by_stem.items() if len(names) > 1}
    if clashes:
      raise ValueError(
        f'config.predict.input={input_path}: outputs are named by the file stem, and these '
        f'images share one: {clashes}. Rename or move all but one of each.'
      )
    return paths
  if not os.path.isfile(input_path):
    raise FileNotFoundError(f'config.predict.input={input_path} does not exist.')
  return [input_path]


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def load_image(path: str, image_size: tuple[int, int], pad_value: float):
  """Reads, resizes to fit `image_size` keeping the aspect ratio (bilinear), pads bottom/right.

  Returns:
    (padded (H, W, 3) float32 in [0, 1], original uint8 image, unpadded (h, w)).
  """
  try:
    with Image.open(path) as img:
      original = np.asarray(img.convert('RGB'))
  except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for corrupt files
    raise ValueError(f'{path}: cannot be read as an image ({e}).') from e
  return fit_image(original, image_size, pad_value)


def fit_image(original: np.ndarray, image_size: tuple[int, int], pad_value: float):
  """`load_image` for a decoded uint8 (Ho, Wo, 3) image: (padded, original, unpadded)."""
  height, width = original.shape[:2]
  scale = min(image_size[0] / height, image_size[1] / width)
  size = (max(1, round(height * scale)), max(1, round(width * scale)))
  resized = Image.fromarray(original).resize((size[1], size[0]), Image.BILINEAR)
  padded = np.full(image_size + (3,), pad_value, np.float32)
  padded[: size[0], : size[1]] = np.asarray(resized, np.float32) / 255.0
  return padded, original, size


@dataclasses.dataclass
class Predictor:
  """A trained run's EMA weights and the compiled sampler (`sharding.jit_predict`)."""

  predict_fn: Callable
  params: Any
  model_state: Any
  step: int
  categories: list
  mesh: jax.sharding.Mesh

  @property
  def batch_size(self) -> int:
    """Rows per call: one per data-parallel device."""
    return self.mesh.shape['data'] * self.mesh.shape['fsdp']


def load_predictor(config, workdir: str) -> Predictor:
  """Restores the newest checkpoint of `workdir` and compiles the sampler of config.task.

  Raises:
    FileNotFoundError: no categories.json or no checkpoint in `workdir`.
  """
  categories = workdir_files.read_categories(workdir)
  config_checks.fit_num_classes(
    config, categories, str(epath.Path(workdir) / workdir_files.CATEGORIES_FILE)
  )
  mesh = sharding.make_mesh(config.mesh)
  state, state_shardings, _, eval_graphdef, _ = sharding.build_train_state(config, mesh)
  abstract_state = sharding.with_shardings(jax.eval_shape(lambda: state), state_shardings)
  manager = checkpoints.CheckpointManager(workdir, keep=config.train.keep_checkpoints)
  restored = manager.restore_latest(abstract_state)
  manager.close()
  if restored is None:
    raise FileNotFoundError(f'--mode=predict: no checkpoint in {workdir}.')
  state, step = restored
  predict_fn = sharding.jit_predict(
    config, eval_graphdef, state_shardings.ema_params, state_shardings.ema_model_state, mesh
  )
  return Predictor(predict_fn, state.ema_params, state.ema_model_state, step, categories, mesh)


def run(config, workdir: str) -> str:
  """Predicts every input image; returns the path of the written panoptic JSON."""
  output = config.predict.output
  if not output:
    raise ValueError('--mode=predict needs --config.predict.output=DIR.')
  paths = list_images(config.predict.input)
  predictor = load_predictor(config, workdir)
  categories, mesh, step = predictor.categories, predictor.mesh, predictor.step
  image_size = layers.static_tuple(config.model.image_size)
  is_thing = panoptic.is_thing_table(categories)
  batch_size = predictor.batch_size
  annotations = []
  skipped = []
  os.makedirs(os.path.join(output, 'overlays'), exist_ok=True)
  for start in range(0, len(paths), batch_size):
    chunk, loaded = [], []  # (image id, path) and load_image's result of the readable images
    for index in range(start, min(start + batch_size, len(paths))):
      path = paths[index]
      try:
        loaded.append(load_image(path, image_size, config.data.image_pad_value))
        chunk.append((index, path))
      except ValueError as error:
        logging.warning('Skipping %s', error)
        skipped.append(path)
    if not chunk:
      continue
    images = np.stack([x[0] for x in loaded] + [loaded[0][0]] * (batch_size - len(chunk)))
    global_images = sharding.make_global_batch({'image': images}, mesh)['image']
    pred = np.asarray(
      predictor.predict_fn(
        predictor.params, predictor.model_state, global_images, jax.random.key(config.seed + start)
      )
    )
    for i, ((index, path), (_, original, unpadded)) in enumerate(zip(chunk, loaded, strict=True)):
      semantic, instance = panoptic.postprocess(
        pred[i],
        image_size,
        unpadded,
        original.shape[:2],
        num_classes=config.model.num_classes,
        max_instances=config.model.max_instances,
        min_pixels=config.eval.min_pixels,
        is_thing=is_thing,
      )
      ids, segments = coco_format.segments_from_semantic_instance(semantic, instance, categories)
      annotations.append((index, _stem(path), ids, segments))
      coloured = visualize.colorize_panoptic(semantic, instance, categories)
      Image.fromarray(visualize.overlay(original, coloured)).save(
        os.path.join(output, 'overlays', _stem(path) + '.png')
      )
  if not annotations:
    raise ValueError(
      f'config.predict.input={config.predict.input}: none of the {len(paths)} '
      'images could be read (see the warnings above).'
    )
  json_path = coco_format.write_panoptic_predictions(output, annotations, categories)
  logging.info(
    'Predicted %d images with the EMA weights of step %d: %s', len(annotations), step, json_path
  )
  if skipped:
    logging.warning(
      '%d of %d images could not be read and have no prediction: %s',
      len(skipped),
      len(paths),
      skipped,
    )
  return json_path
