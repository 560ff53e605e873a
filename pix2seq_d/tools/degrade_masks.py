"""Degraded ground truth of an eval split, as a COCO panoptic prediction file to refine.

  python -m pix2seq_d.tools.degrade_masks --config=configs/shapes.py --severity=2 --output=DIR

writes DIR/panoptic.json and DIR/panoptic/<image id>.png: every eval image's ground truth with
the faults a one-shot segmenter makes, each drawn per segment with probability 0.1 * severity
(seeded by the image id): its boundary eroded or dilated by `severity` pixels, the segment
dropped (void), a thing merged into another thing of its class, or a thing split in two down its
middle. `--config.eval.refine_from=DIR/panoptic.json` then measures what refinement recovers
(docs/experiments.md).
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from scipy import ndimage

from pix2seq_d.formats import coco_panoptic

config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
flags.DEFINE_integer('severity', 2, 'How strong and how frequent the faults are: 1, 2 or 3.')
flags.DEFINE_string('output', None, 'Folder for panoptic.json and its PNGs.')
FLAGS = flags.FLAGS


def degrade(
  semantic: np.ndarray, instance: np.ndarray, is_thing: np.ndarray, severity: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """One image's (H, W) semantic and instance maps with faults (module docstring)."""
  rng = np.random.default_rng(seed)
  chance = 0.1 * severity
  out_semantic, out_instance = semantic.copy(), instance.copy()
  pairs = np.unique(np.stack([semantic.ravel(), instance.ravel()], axis=-1), axis=0)
  keys = [(int(s), int(i)) for s, i in pairs if s and i]
  things = [key for key in keys if is_thing[key[0]]]
  next_id = int(instance.max(initial=0)) + 1
  for cls, ids in keys:
    region = (semantic == cls) & (instance == ids)
    if rng.uniform() < chance:  # a boundary off by `severity` pixels
      grow = ndimage.binary_dilation if rng.uniform() < 0.5 else ndimage.binary_erosion
      changed = grow(region, iterations=severity)
      out_semantic[region & ~changed], out_instance[region & ~changed] = 0, 0
      out_semantic[changed], out_instance[changed] = cls, ids
      region = changed
    if rng.uniform() < chance:  # dropped
      out_semantic[region], out_instance[region] = 0, 0
      continue
    if is_thing[cls] and rng.uniform() < chance:
      others = [other for other in things if other[0] == cls and other[1] != ids]
      if others:  # merged into another thing of its class
        out_instance[region] = others[rng.integers(len(others))][1]
        continue
    if is_thing[cls] and rng.uniform() < chance:  # split down the middle
      columns = np.flatnonzero(region.any(axis=0))
      if len(columns) > 1:
        right = region & (np.arange(region.shape[1]) >= columns[len(columns) // 2])[None, :]
        out_instance[right] = next_id
        next_id += 1
  return out_semantic, out_instance


def main(argv) -> None:
  del argv
  from pix2seq_d.config import data_facts
  from pix2seq_d.data import registry as data_registry
  from pix2seq_d.tasks import registry as task_registry

  config = FLAGS.config
  if FLAGS.severity not in (1, 2, 3) or not FLAGS.output:
    raise app.UsageError('--severity must be 1, 2 or 3, and --output a folder.')
  source = data_registry.get_source(config)
  config = data_facts.apply(config, source.categories, f'dataset {source.name!r}')
  task = task_registry.get_task(config)
  is_thing = coco_panoptic.is_thing_table(source.categories)
  annotations = []
  for batch in task.eval_iterator(source):
    for row in np.flatnonzero(batch['valid']):
      height, width = (int(v) for v in batch['orig_size'][row])
      label = batch['orig_label'][row, :height, :width]
      image_id = int(batch['image_id'][row])
      semantic, instance = degrade(label[..., 0], label[..., 1], is_thing, FLAGS.severity, image_id)
      ids, segments = coco_panoptic.segments_from_semantic_instance(
        semantic, instance, source.categories
      )
      annotations.append((image_id, f'{image_id:012d}', ids, segments))
  path = coco_panoptic.write_panoptic_predictions(FLAGS.output, annotations, source.categories)
  print(f'{len(annotations)} degraded ground truths (severity {FLAGS.severity}) in {path}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'output'])
  app.run(main)
