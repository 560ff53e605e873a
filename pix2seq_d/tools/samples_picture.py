"""A picture of several samples of a trained run: per eval image, [image | sample 1 .. K | merged |
uncertainty], one row per image.

  python -m pix2seq_d.tools.samples_picture --config=configs/shapes.py --workdir=RUN \
      --config.eval.num_samples=3 --rows=4 --output=samples.png

Uses the run's EMA weights (as --mode=predict does) on the first `--rows` images of the eval
split; white in the uncertainty column is where no two samples agree.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image

config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
flags.DEFINE_string('workdir', None, 'The trained run.')
flags.DEFINE_integer('rows', 4, 'How many eval images (one row each).')
flags.DEFINE_string('output', None, 'The PNG to write.')
FLAGS = flags.FLAGS


def main(argv) -> None:
  del argv
  from pix2seq_d.data import registry as data_registry
  from pix2seq_d.loops import predict
  from pix2seq_d.parallel import sharding
  from pix2seq_d.tasks import pictures, postprocess, samples

  config = FLAGS.config
  if config.eval.num_samples < 2:
    raise app.UsageError('--config.eval.num_samples must be at least 2 (e.g. 3).')
  predictor = predict.load_predictor(config, FLAGS.workdir)
  task, config = predictor.task, predictor.config
  batch = next(iter(task.eval_iterator(data_registry.get_source(config))))
  inputs = sharding.make_global_batch(task.eval_inputs(batch), predictor.mesh)
  key = jax.random.key(config.seed + 1)  # the evaluation loop's key of its first batch
  ids = np.asarray(
    predictor.predict_fn(
      predictor.params, predictor.model_state, inputs, jax.random.fold_in(key, 0)
    )
  )
  size = batch['image'].shape[1:3]
  colour = lambda label: pictures.colorize_panoptic(
    postprocess.resize_nearest(label[..., 0], size),
    postprocess.resize_nearest(label[..., 1], size),
    predictor.categories,
  )
  rows = []
  for row in range(min(FLAGS.rows, len(ids))):
    merge = samples.merge_samples(
      ids[row], config.model.num_classes, config.model.max_instances, config.eval.sample_match_iou
    )
    grey = pictures.uncertainty_picture(samples.uncertainty_at(merge, size, size, size))
    panels = [(np.clip(batch['image'][row], 0, 1) * 255).astype(np.uint8)]
    panels += [colour(sample) for sample in ids[row]] + [colour(merge.ids)]
    panels.append(np.repeat(grey[..., None], 3, axis=-1))
    rows.append(np.concatenate(panels, axis=1))
  Image.fromarray(np.concatenate(rows, axis=0)).save(FLAGS.output)
  print(f'{len(rows)} rows of {config.eval.num_samples} samples -> {FLAGS.output}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir', 'output'])
  app.run(main)
