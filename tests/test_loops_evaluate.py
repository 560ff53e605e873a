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


def _run(config, tmp_path, predict, step=7, with_inputs=False):
  """Evaluates `predict(batch, key)` (a stand-in for the sampler; with `with_inputs`
  `predict(batch, inputs, key)`, the task's sampler inputs) with the loop."""
  mesh = sharding.make_mesh(config.mesh)
  info = pipeline.dataset_info(config)
  task = registry.get_task(config)
  recorder = _Recorder(task.eval_iterator(None))

  def predict_fn(params, state, inputs, key):
    if with_inputs:
      return predict(recorder.batch, jax.tree.map(np.asarray, inputs), key)
    return predict(recorder.batch, key)

  record = evaluate.evaluate(
    config,
    task=task,
    predict_fn=predict_fn,
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
  other ids), all three random in one corner, where their classes differ. They merge to the
  ground truth but in the corner, the first sample alone scores PQ_single, the uncertainty
  (about 1 in the corner, where the merged map is wrong, 0.5 elsewhere) finds the wrong pixels,
  and is written beside each prediction."""
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
    first = noise(label.shape)
    for k, sample in enumerate((label, renamed), 1):
      corner = noise(sample[:, :4, :4].shape)
      # Another class than the other samples' at every corner pixel: no two agree there.
      corner[..., 0] = (first[:, :4, :4, 0] + k) % config.model.num_classes
      sample[:, :4, :4] = corner
    return jnp.asarray(np.stack([first, label, renamed], axis=1))  # (B, K, ...)

  record, _ = _run(config, tmp_path, three_samples)
  assert record['PQ'] > 0.5 > 0.2 > record['PQ_single']
  assert record['uncertainty_auroc'] > 0.5 and 0.0 < record['wrong_pixel_rate'] < 0.3
  step = tmp_path / 'predictions' / 'step_7'
  names = sorted(p.name for p in (step / 'panoptic').glob('*.png'))
  assert len(names) == 8 and sorted(p.name for p in (step / 'uncertainty').glob('*.png')) == names
  for name in names:  # 8 bits: 255 where no two samples agree (the corner), else 128 (2 of 3
    # agree) or 0 (all three void), with levels between them only where the votes are
    # interpolated across a boundary of mask cells
    picture = np.asarray(Image.open(step / 'uncertainty' / name))
    assert np.isin(picture, (0, 128, 255)).mean() > 0.5, name
    # The corner's samples disagree (matched ids can still meet by chance): more uncertain.
    assert np.median(picture[:6, :6]) > np.median(picture[8:, 8:]), name
    assert 0 < (picture == 255).mean() < 0.3, name


def test_completion_keeps_the_given_segments_and_scores_the_rest(shapes_config, tmp_path):
  """Half of each image's segments given: the stand-in completes with the ground truth under
  other ids (a perfect completer), its plain sample is noise. The given pixels come out exactly,
  PQ_rest scores what was not given and PQ_rest_unaided the plain sample."""
  config = shapes_config()
  config.eval.batch_size = 4
  config.eval.num_examples = 8
  config.eval.min_pixels = 0
  config.eval.given_fraction = 0.5
  config.eval.metrics = ('pq', 'pq_rest', 'pq_rest_unaided', 'given_pixels_kept')
  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  rng = np.random.default_rng(seed)
  num_ids = config.model.max_instances

  def complete(batch, inputs, key):
    """A perfect completer: the given ids where given, the ground truth's other segments under
    ids the given segments do not use."""
    label = np.asarray(batch['label'])
    assert inputs['given'].shape == label.shape and inputs['given_mask'].any()
    completed = label.copy()
    for row in range(len(label)):
      known = inputs['given_mask'][row]
      free = np.setdiff1d(np.arange(1, num_ids), inputs['given'][row][..., 1][known])
      table = np.zeros(num_ids, np.int64)
      table[1:] = rng.permutation(free)[: num_ids - 1].tolist() + [0] * (num_ids - 1 - len(free))
      completed[row, ..., 1] = np.where(
        known, inputs['given'][row][..., 1], table[label[row, ..., 1]]
      )
    noise = rng.integers(0, [config.model.num_classes, num_ids], label.shape)
    return jnp.asarray(np.stack([completed, noise], axis=1))  # (B, 2, Hm, Wm, 2)

  record, _ = _run(config, tmp_path, complete, with_inputs=True)
  assert record['given_pixels_kept'] == 1.0 and record['given_pixels'] > 0
  assert record['PQ_rest'] > 0.6 > 0.2 > record['PQ_rest_unaided']
  assert record['PQ'] > record['PQ_rest'] - 0.1


def _bad_mask_file(tmp_path, folder, fault):
  """A copy of an evaluation's prediction file with one fault."""
  data = json.loads((folder / 'panoptic.json').read_text())
  bad = tmp_path / 'bad'
  (bad / 'panoptic').mkdir(parents=True)
  for annotation in data['annotations']:
    png = folder / 'panoptic' / annotation['file_name']
    (bad / 'panoptic' / annotation['file_name']).write_bytes(png.read_bytes())
  first = data['annotations'][0]
  path = bad / 'panoptic' / first['file_name']
  if fault == 'image not in the set':
    first['image_id'] = 999_999
  elif fault == 'wrong size':  # two more columns of void
    ids = np.asarray(Image.open(path))
    Image.fromarray(np.pad(ids, [(0, 0), (0, 2), (0, 0)])).save(path)
  elif fault == 'segment id missing from its JSON':
    first['segments_info'] = first['segments_info'][1:]
  elif fault == 'unknown category':
    first['segments_info'][0]['category_id'] = 4242
  (bad / 'panoptic.json').write_text(json.dumps(data))
  return str(bad / 'panoptic.json'), path


@pytest.mark.parametrize(
  'fault, message',
  [
    ('image not in the set', 'is of image 999999, which the inputs lack'),
    ('wrong size', r'is \d+x\d+ but image \d+ is'),
    ('segment id missing from its JSON', 'are in the map and not in the segments'),
    ('unknown category', 'has category_id 4242, which the model does not know'),
  ],
)
def test_refinement_inputs_are_checked_before_any_sampling(shapes_config, tmp_path, fault, message):
  config = shapes_config()
  config.eval.batch_size = 4
  config.eval.num_examples = 8
  config.eval.write_predictions = True
  _run(config, tmp_path, lambda batch, key: jnp.asarray(batch['label']))
  config.eval.write_predictions = False
  config.eval.refine_from, png = _bad_mask_file(
    tmp_path, tmp_path / 'predictions' / 'step_7', fault
  )

  def never(batch, inputs, key):
    raise AssertionError('sampled before the refinement inputs were checked')

  with pytest.raises(ValueError, match=message) as error:
    _run(config, tmp_path / 'refined', never, with_inputs=True)
  assert str(png) in str(error.value) or 'refine_from' in str(error.value)


def test_refinement_reads_a_prediction_folder_and_scores_its_input(shapes_config, tmp_path):
  """The loop's own prediction files refine through config.eval.refine_from with no change: the
  stand-in returns its input, so the refined PQ equals the input's."""
  config = shapes_config()
  config.eval.batch_size = 4
  config.eval.num_examples = 8
  config.eval.min_pixels = 0
  config.eval.write_predictions = True
  first, _ = _run(config, tmp_path, lambda batch, key: jnp.asarray(batch['label']))
  config.eval.write_predictions = False
  config.eval.refine_from = str(tmp_path / 'predictions' / 'step_7' / 'panoptic.json')
  config.eval.metrics = ('pq', 'pq_input')
  seen = []

  def unchanged(batch, inputs, key):
    seen.append(inputs['refine_from'])
    return jnp.asarray(inputs['refine_from'])

  record, _ = _run(config, tmp_path / 'refined', unchanged, with_inputs=True)
  assert seen and record['PQ_input'] == pytest.approx(first['PQ'])
  assert record['PQ'] == pytest.approx(record['PQ_input'], abs=0.05)


@pytest.mark.parametrize('max_uncertainty', [0.4, 1.0])
def test_refined_samples_replace_the_input_only_where_they_agree_enough(
  shapes_config, tmp_path, max_uncertainty
):
  """An input of noise refined by K = 3 samples, two of them the ground truth (other ids) and one
  noise: the merged map is the ground truth with uncertainty 0.5 or more (2 of 3 agree, more near
  boundaries), so it replaces the input when config.eval.refine_max_uncertainty allows it all
  (1.0) and leaves the input (but where the noise agrees by chance) at 0.4."""
  config = shapes_config()
  config.eval.batch_size = 4
  config.eval.num_examples = 8
  config.eval.min_pixels = 0
  config.eval.write_predictions = True
  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  rng = np.random.default_rng(seed)
  num_ids = config.model.max_instances

  def noise(shape):
    return rng.integers(1, [config.model.num_classes, num_ids], shape)

  first, _ = _run(config, tmp_path, lambda batch, key: jnp.asarray(noise(batch['label'].shape)))
  config.eval.write_predictions = False
  config.eval.refine_from = str(tmp_path / 'predictions' / 'step_7' / 'panoptic.json')
  config.eval.metrics = ('pq', 'pq_input')
  config.eval.num_samples = 3
  config.eval.refine_max_uncertainty = max_uncertainty

  def two_right_one_noise(batch, inputs, key):
    label = np.asarray(batch['label'])
    renamed = label.copy()
    renamed[..., 1] = np.concatenate([[0], rng.permutation(np.arange(1, num_ids))])[label[..., 1]]
    return jnp.asarray(np.stack([label, noise(label.shape), renamed], axis=1))

  record, _ = _run(config, tmp_path / 'refined', two_right_one_noise, with_inputs=True)
  assert record['PQ_input'] == pytest.approx(first['PQ']) and first['PQ'] < 0.2
  if max_uncertainty == 1.0:
    assert record['PQ'] > 0.8
  else:
    assert record['PQ'] == pytest.approx(record['PQ_input'], abs=0.02)


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
