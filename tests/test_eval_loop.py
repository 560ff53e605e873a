"""The evaluation loop: post-processing and PQ over the eval split, results file and summaries."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from pix2seq_d import eval_loop, sharding, workdir_files
from pix2seq_d.data import eval_pipeline, pipeline


class _Recorder:
  """Wraps the eval iterator and remembers the last batch it handed out."""

  def __init__(self, iterator):
    self.iterator = iterator
    self.batch = None

  def __iter__(self):
    for batch in self.iterator:
      self.batch = batch
      yield batch


def _run(config, tmp_path, predict):
  mesh = sharding.make_mesh(config.mesh)
  info = pipeline.dataset_info(config)
  recorder = _Recorder(eval_pipeline.make_eval_iterator(config))
  record = eval_loop.evaluate(
    config,
    predict_fn=lambda params, state, images, key: predict(recorder.batch, key),
    params=None,
    model_state=None,
    mesh=mesh,
    categories=info.categories,
    eval_iterator=recorder,
    step=7,
    workdir=str(tmp_path),
    writer=None,
  )
  return record, info


def test_ground_truth_masks_score_full_recognition(shapes_config, tmp_path):
  config = shapes_config()
  config.eval.batch_size = 4
  config.eval.num_examples = 10  # 3 batches, the last one padded.
  config.eval.min_pixels = 0
  record, info = _run(config, tmp_path, lambda batch, key: jnp.asarray(batch['label']))
  assert record['num_images'] == 10 and record['step'] == 7
  # The mask-size label, resized back to the original size, finds the segments.
  assert record['RQ'] > 0.95  # only slivers thinner than a mask pixel can be lost.
  assert record['PQ'] > 0.8
  saved = json.loads((tmp_path / workdir_files.RESULTS_FILE).read_text())
  assert saved['PQ'] == record['PQ'] and saved['history'][-1]['step'] == 7
  assert set(saved['per_class']) == {str(c['id']) for c in info.categories}


def test_random_masks_score_low_and_results_history_grows(shapes_config, tmp_path):
  config = shapes_config()
  config.eval.batch_size = 4
  config.eval.num_examples = 8

  def noise(batch, key):
    shape = batch['label'].shape
    return jax.random.randint(key, shape, 0, config.model.max_instances) % np.array(
      [config.model.num_classes, config.model.max_instances]
    )

  first, _ = _run(config, tmp_path, noise)
  assert first['PQ'] < 0.2
  second, _ = _run(config, tmp_path, noise)
  history = json.loads((tmp_path / workdir_files.RESULTS_FILE).read_text())['history']
  assert [h['step'] for h in history] == [7]  # the same step is replaced, not duplicated.
  assert second['num_images'] == 8
