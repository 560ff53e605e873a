"""Input pipeline throughput: examples per second per CPU core of the COCO training pipeline.

  python -m pix2seq_d.data.benchmark --config=configs/coco.py [--steps N] [--batch_size B]

Reads the COCO val2017 sample shipped with the tests (tests/data/coco_panoptic_sample, or
--coco_root) through `coco_folder`, repeated, prepared into a temporary data_dir, and runs the
config's training pipeline (image / mask size and augmentation as configured: for configs/coco.py
1024x1024 images, 512x512 masks, scale jitter, flip, colour jitter). Prints a table with two rows:
decoding alone (TFDS read + `Source.decode`) and the whole training pipeline
(`pipeline.make_train_iterator`, decode + augmentation + batching). A core count of the process's
CPU affinity normalises the rates, since tf.data spreads its work over all of them.
"""

import os
import shutil
import tempfile
import time

import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from pix2seq_d.data import pipeline, registry
from pix2seq_d.data.source import Source

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config (configs/coco.py).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Batches timed after the warm-up.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Batches read before timing (tf.data start-up).')
_BATCH_SIZE = flags.DEFINE_integer(
  'batch_size', 16, 'Replaces config.train.batch_size (the published 512 is minutes per batch).'
)
_COCO_ROOT = flags.DEFINE_string(
  'coco_root',
  os.path.join(os.path.dirname(__file__), '..', '..', 'tests', 'data', 'coco_panoptic_sample'),
  'A folder in the COCO panoptic layout with a val2017 split.',
)
_SPLIT = 'val2017'


def num_cores() -> int:
  """Returns the CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def time_decode(source: Source, split: str, num_examples: int) -> float:
  """Returns the seconds taken to read and decode `num_examples` examples (after one warm-up)."""
  dataset = source.builder.as_dataset(split=split, decoders=source.decoders).repeat()
  dataset = dataset.map(source.decode, num_parallel_calls=tf.data.AUTOTUNE)
  iterator = iter(dataset.prefetch(tf.data.AUTOTUNE))
  next(iterator)
  start = time.perf_counter()
  for _ in range(num_examples):
    next(iterator)
  return time.perf_counter() - start


def time_train_pipeline(config, steps: int, warmup: int) -> tuple[float, float]:
  """Returns (seconds to the first batch, seconds for `steps` batches after `warmup` more)."""
  start = time.perf_counter()
  iterator = pipeline.make_train_iterator(
    config, pipeline.image_stream, process_index=0, process_count=1
  )
  next(iterator)
  first_batch = time.perf_counter() - start
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return first_batch, time.perf_counter() - start


def benchmark_config(config, coco_root: str, data_dir: str, batch_size: int):
  """Returns `config` reading `coco_root`'s val2017 sample through coco_folder at `batch_size`."""
  config = config.copy_and_resolve_references()
  config.data.name = 'coco_folder'
  config.data.coco_root = os.path.normpath(os.path.abspath(coco_root))
  config.data.train_split = _SPLIT
  config.data.eval_split = _SPLIT
  config.data.data_dir = data_dir
  config.train.batch_size = batch_size
  return config


def main(argv):
  """Runs both measurements and prints the table."""
  del argv
  data_dir = tempfile.mkdtemp(prefix='pix2seq_d_benchmark_')
  try:
    config = benchmark_config(_CONFIG.value, _COCO_ROOT.value, data_dir, _BATCH_SIZE.value)
    source = registry.get_source(config)
    cores = num_cores()
    decode_examples = _STEPS.value * config.train.batch_size
    decode_seconds = time_decode(source, _SPLIT, decode_examples)
    first_batch, train_seconds = time_train_pipeline(config, _STEPS.value, _WARMUP.value)
  finally:
    shutil.rmtree(data_dir, ignore_errors=True)

  train_examples = _STEPS.value * config.train.batch_size
  image_size = 'x'.join(map(str, config.model.image_size))
  mask_size = 'x'.join(map(str, config.model.mask_size))
  print(
    f'\nCOCO sample ({config.data.coco_root}), image {image_size}, mask {mask_size}, batch '
    f'{config.train.batch_size}, scale jitter {tuple(config.data.scale_jitter)}, flip '
    f'{config.data.flip}, colour jitter {config.data.color_jitter_strength}; {cores} cores; '
    f'first batch after {first_batch:.1f} s.'
  )
  header = f'| {"stage":<36} | {"examples":>8} | {"seconds":>8} | {"ex/s":>8} | {"ex/s/core":>9} |'
  print(header)
  print('|' + '|'.join('-' * len(cell) for cell in header.split('|')[1:-1]) + '|')
  for stage, examples, seconds in (
    ('decode (TFDS read + decode)', decode_examples, decode_seconds),
    ('train pipeline (full augmentation)', train_examples, train_seconds),
  ):
    rate = examples / seconds
    print(
      f'| {stage:<36} | {examples:>8} | {seconds:>8.2f} | {rate:>8.1f} | {rate / cores:>9.2f} |'
    )


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
