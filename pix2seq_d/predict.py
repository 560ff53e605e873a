"""`--mode=predict`: panoptic segmentation of new images with a trained run's EMA weights.

  python -m pix2seq_d.main --config=configs/shapes.py --workdir=RUN --mode=predict \
      --config.predict.input=IMAGE_OR_FOLDER --config.predict.output=OUT

Writes OUT/panoptic/*.png + OUT/panoptic.json (COCO panoptic format, the categories of the run's
dataset) and OUT/overlays/*.png (the prediction coloured over the image).
"""

import json
import os

import jax
import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from pix2seq_d import checkpoints, sharding
from pix2seq_d.evaluation import coco_format, pq, visualize
from pix2seq_d.models import layers
from pix2seq_d.tasks import panoptic

CATEGORIES_FILE = 'categories.json'
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def write_categories(workdir: str, categories) -> None:
  """Stores the run's categories next to its checkpoints, for prediction without the dataset."""
  path = epath.Path(workdir) / CATEGORIES_FILE
  tmp = path.parent / f'.{CATEGORIES_FILE}.tmp-{os.getpid()}'
  tmp.write_text(json.dumps(list(categories)))
  tmp.replace(path)


def read_categories(workdir: str) -> list[dict]:
  path = epath.Path(workdir) / CATEGORIES_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} is missing: is {workdir} the workdir of a training run?')
  return json.loads(path.read_text())


def list_images(input_path: str) -> list[str]:
  """An image file, or the images of a folder (sorted)."""
  if not input_path:
    raise ValueError('--mode=predict needs --config.predict.input=IMAGE_OR_FOLDER.')
  if os.path.isdir(input_path):
    paths = sorted(os.path.join(input_path, name) for name in os.listdir(input_path)
                   if name.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
      raise FileNotFoundError(f'config.predict.input={input_path} holds no {IMAGE_SUFFIXES} files.')
    return paths
  if not os.path.isfile(input_path):
    raise FileNotFoundError(f'config.predict.input={input_path} does not exist.')
  return [input_path]


def load_image(path: str, image_size: tuple[int, int], pad_value: float):
  """Reads, resizes to fit `image_size` keeping the aspect ratio (bilinear), pads bottom/right.

  Returns:
    (padded (H, W, 3) float32 in [0, 1], original uint8 image, unpadded (h, w)).
  """
  try:
    with Image.open(path) as img:
      original = np.asarray(img.convert('RGB'))
  except OSError as e:
    raise ValueError(f'{path}: cannot be read as an image ({e}).') from e
  height, width = original.shape[:2]
  scale = min(image_size[0] / height, image_size[1] / width)
  size = (max(1, round(height * scale)), max(1, round(width * scale)))
  resized = Image.fromarray(original).resize((size[1], size[0]), Image.BILINEAR)
  padded = np.full(image_size + (3,), pad_value, np.float32)
  padded[:size[0], :size[1]] = np.asarray(resized, np.float32) / 255.0
  return padded, original, size


def run(config, workdir: str) -> str:
  """Predicts every input image; returns the path of the written panoptic JSON."""
  output = config.predict.output
  if not output:
    raise ValueError('--mode=predict needs --config.predict.output=DIR.')
  paths = list_images(config.predict.input)
  categories = read_categories(workdir)
  mesh = sharding.make_mesh(config.mesh)
  state, state_shardings, _, eval_graphdef, _ = sharding.build_train_state(config, mesh)
  abstract_state = sharding.with_shardings(jax.eval_shape(lambda: state), state_shardings)
  manager = checkpoints.CheckpointManager(workdir, keep=config.train.keep_checkpoints)
  restored = manager.restore_latest(abstract_state)
  if restored is None:
    raise FileNotFoundError(f'--mode=predict: no checkpoint in {workdir}.')
  state, step = restored
  predict_fn = sharding.jit_predict(config, eval_graphdef, state_shardings.ema_params,
                                    state_shardings.ema_model_state, mesh)
  image_size = layers.static_tuple(config.model.image_size)
  is_thing = panoptic.is_thing_table(categories)
  batch_size = mesh.shape['data'] * mesh.shape['fsdp']
  annotations = []
  os.makedirs(os.path.join(output, 'overlays'), exist_ok=True)
  for start in range(0, len(paths), batch_size):
    chunk = paths[start:start + batch_size]
    loaded = [load_image(p, image_size, config.data.image_pad_value) for p in chunk]
    images = np.stack([x[0] for x in loaded] + [loaded[0][0]] * (batch_size - len(chunk)))
    global_images = sharding.make_global_batch({'image': images}, mesh)['image']
    pred = np.asarray(predict_fn(state.ema_params, state.ema_model_state, global_images,
                                 jax.random.key(config.seed + start)))
    for i, (path, (_, original, unpadded)) in enumerate(zip(chunk, loaded, strict=True)):
      semantic, instance = panoptic.postprocess(
        pred[i], image_size, unpadded, original.shape[:2], num_classes=config.model.num_classes,
        max_instances=config.model.max_instances, min_pixels=config.eval.min_pixels,
        is_thing=is_thing)
      ids, segments = pq.segments_from_semantic_instance(semantic, instance, categories)
      stem = os.path.splitext(os.path.basename(path))[0]
      annotations.append((start + i, stem, ids, segments))
      coloured = visualize.colorize_panoptic(semantic, instance, categories)
      Image.fromarray(visualize.overlay(original, coloured)).save(
        os.path.join(output, 'overlays', stem + '.png'))
  json_path = coco_format.write_panoptic_predictions(output, annotations, categories)
  logging.info('Predicted %d images with the EMA weights of step %d: %s', len(paths), step,
               json_path)
  manager.close()
  return json_path
