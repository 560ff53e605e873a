"""The one evaluation loop: post-processing and scoring over the eval split, for any task and any
metrics the config lists; the results file, its history and the prediction files."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from pix2seq_d.data import pipeline
from pix2seq_d.loops import evaluate
from pix2seq_d.parallel import sharding
from pix2seq_d.runtime import preemption, workdir_files
from pix2seq_d.tasks import registry


class _Recorder:
  """Wraps the eval iterator and remembers the last batch it handed out."""

  def __init__(self, iterator):
    self.iterator = iterator
    self.batch = None

  def __iter__(self):
    for batch in self.iterator:
      self.batch = batch
      yield batch


def _run(config, tmp_path, predict, step=7):
  """Evaluates `predict(batch, key)` (a stand-in for the sampler) with the loop."""
  mesh = sharding.make_mesh(config.mesh)
  info = pipeline.dataset_info(config)
  task = registry.get_task(config)
  recorder = _Recorder(task.eval_iterator(None))
  record = evaluate.evaluate(
    config,
    task=task,
    predict_fn=lambda params, state, inputs, key: predict(recorder.batch, key),
    params=None,
    model_state=None,
    mesh=mesh,
    categories=info.categories,
    eval_iterator=recorder,
    step=step,
    workdir=str(tmp_path),
    writer=None,
  )
  return record, info


def test_ground_truth_masks_score_full_recognition(shapes_config, tmp_path):
  config = shapes_config()
  config.eval.batch_size = 4
  config.eval.num_examples = 10  # 3 batches, the last one padded.
  config.eval.min_pixels = 0
  config.eval.write_predictions = True
  record, info = _run(config, tmp_path, lambda batch, key: jnp.asarray(batch['label']))
  assert record['num_images'] == 10 and record['step'] == 7
  # The mask-size label, resized back to the original size, finds the segments.
  assert record['RQ'] > 0.95  # only slivers thinner than a mask pixel can be lost.
  assert record['PQ'] > 0.8
  saved = json.loads((tmp_path / workdir_files.RESULTS_FILE).read_text())
  assert saved['PQ'] == record['PQ'] and saved['history'][-1]['step'] == 7
  assert set(saved['pq']['per_class']) == {str(c['id']) for c in info.categories}
  # The predictions in COCO panoptic format, one PNG per evaluated image.
  panoptic = json.loads((tmp_path / 'predictions' / 'step_7' / 'panoptic.json').read_text())
  assert len(panoptic['annotations']) == 10
  assert len(list((tmp_path / 'predictions' / 'step_7' / 'panoptic').glob('*.png'))) == 10


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
  _run(config, tmp_path, noise, step=9)
  history = json.loads((tmp_path / workdir_files.RESULTS_FILE).read_text())['history']
  assert [h['step'] for h in history] == [7, 9]  # the same step is replaced, not duplicated.
  assert second['num_images'] == 8


def test_several_samples_merge_score_and_write_their_uncertainty(shapes_config, tmp_path):
  """K samples per image through the loop: a random map and two copies of the ground truth (with
  other ids), all three random in one corner. They merge to the ground truth but in the corner,
  the first sample alone scores PQ_single, the uncertainty (1 in the corner, where the merged map
  is wrong, 0.5 elsewhere) finds the wrong pixels, and is written beside each prediction."""
  config = shapes_config()
  config.eval.batch_size = 4
  config.eval.num_examples = 8
  config.eval.min_pixels = 0
  config.eval.num_samples = 3
  config.eval.metrics = ('pq', 'pq_single', 'uncertainty_auroc')
  config.eval.write_predictions = True
  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  rng = np.random.default_rng(seed)
  num_ids = config.model.max_instances

  def noise(shape):
    return rng.integers(0, [config.model.num_classes, num_ids], shape)

  def three_samples(batch, key):
    label = np.asarray(batch['label'])
    renamed = label.copy()
    renamed[..., 1] = np.concatenate([[0], rng.permutation(np.arange(1, num_ids))])[label[..., 1]]
    label, renamed = label.copy(), renamed.copy()
    for sample in (label, renamed):
      sample[:, :4, :4] = noise(sample[:, :4, :4].shape)
    return jnp.asarray(np.stack([noise(label.shape), label, renamed], axis=1))  # (B, K, ...)

  record, _ = _run(config, tmp_path, three_samples)
  assert record['PQ'] > 0.5 > 0.2 > record['PQ_single']
  assert record['uncertainty_auroc'] > 0.5 and 0.0 < record['wrong_pixel_rate'] < 0.3
  step = tmp_path / 'predictions' / 'step_7'
  names = sorted(p.name for p in (step / 'panoptic').glob('*.png'))
  assert len(names) == 8 and sorted(p.name for p in (step / 'uncertainty').glob('*.png')) == names
  for name in names:  # 8 bits: 255 where no two samples agree (in the corner, but where two
    # random maps agree by chance), else 128 (2 of 3 agree) or 0 (all three void)
    picture = np.asarray(Image.open(step / 'uncertainty' / name))
    assert set(np.unique(picture)) <= {0, 128, 255}, name
    assert (picture[:6, :6] == 255).mean() > 0.5, name
    assert 0 < (picture == 255).mean() < 0.3, name


def test_video_ground_truth_through_the_same_loop_with_two_evaluators(shapes_config, tmp_path):
  """The video task through the same loop: its ground truth, streamed back, gives DAVIS J&F near
  1; a second evaluator in the list (PQ, scoring each frame) runs beside it, and each writes its
  tables under its own name."""
  config = shapes_config('video')
  config.eval.batch_size = 2
  config.eval.min_pixels = 0
  config.eval.metrics = ('davis_jf', 'pq')
  record, info = _run(config, tmp_path, lambda batch, key: jnp.asarray(batch['label']))
  assert record['num_videos'] == 3 and record['J&F-Mean'] > 0.9
  assert record['num_images'] == 3 * 8 and record['PQ'] > 0.8  # 3 clips of 8 frames
  saved = json.loads((tmp_path / workdir_files.RESULTS_FILE).read_text())
  assert {'clip_00000_1', 'clip_00002_1'} <= set(saved['davis_jf']['per_sequence'])
  assert set(saved['pq']['per_class']) == {str(c['id']) for c in info.categories}


def _files(folder):
  """{path relative to `folder`: bytes} of every file under it, hidden ones included."""
  return {
    os.path.relpath(os.path.join(parent, name), folder): open(
      os.path.join(parent, name), 'rb'
    ).read()
    for parent, _, names in os.walk(folder)
    for name in names
  }


@pytest.mark.parametrize('arg', ['', 'video'])
def test_an_interrupted_pass_leaves_the_prediction_files_as_they_were(shapes_config, tmp_path, arg):
  """Ctrl-C while the first batch is sampled stops the pass at the next batch: of that pass no
  prediction file is left, whether the step's folder held an earlier pass (kept byte for byte)
  or did not exist (it still does not), for the image and the video task alike."""
  config = shapes_config(arg)
  config.eval.batch_size = 2  # the video set's 3 clips, the image set's first 6 images: 3 batches
  config.eval.num_examples = 0 if arg else 6
  config.eval.min_pixels = 0
  config.eval.write_predictions = True
  _run(config, tmp_path, lambda batch, key: jnp.asarray(batch['label']), step=7)
  before = _files(tmp_path / 'predictions')
  assert any(name.endswith('panoptic.json') for name in before)

  def interrupted(batch, key):
    os.kill(os.getpid(), signal.SIGINT)  # handled as a request: the batch's files are written
    return jnp.zeros_like(batch['label'])  # a prediction other than the earlier pass's

  for step in (7, 9):
    preemption.install_stop_handlers()  # also clears the previous request
    try:
      with pytest.raises(
        preemption.StopRequested, match=f'stopped evaluating step {step} at batch 1'
      ):
        _run(config, tmp_path, interrupted, step=step)
    finally:
      preemption.uninstall_stop_handlers()
  assert _files(tmp_path / 'predictions') == before
  assert sorted(os.listdir(tmp_path / 'predictions')) == ['step_7']
