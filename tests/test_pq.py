"""PQ evaluator: equal to panopticapi's pq_compute (and hotcoco's) on perturbed COCO predictions."""

import copy
import json
import os
import shutil

import numpy as np
import pytest
from scipy import ndimage

from pix2seq_d.evaluation import pq, pq_accumulator
from pix2seq_d.formats import coco_panoptic

SAMPLE = os.path.join(os.path.dirname(__file__), 'data', 'coco_panoptic_sample')
GT_JSON = os.path.join(SAMPLE, 'annotations', 'panoptic_val2017.json')
GT_FOLDER = os.path.join(SAMPLE, 'annotations', 'panoptic_val2017')
TOL = 1e-9


def _fresh_rng():
  """A generator with a freshly drawn seed, printed so that a failure can be replayed."""
  seed = int(np.random.SeedSequence().entropy % 2**32)
  print('seed', seed)
  return np.random.default_rng(seed)


def _load_gt():
  with open(GT_JSON) as f:
    gt_json = json.load(f)
  images = [
    (
      a['image_id'],
      a['file_name'][:-4],
      coco_panoptic.read_panoptic_png(os.path.join(GT_FOLDER, a['file_name'])),
      a['segments_info'],
    )
    for a in gt_json['annotations']
  ]
  return gt_json, images


def _perturb(gt_ids, gt_segments, category_ids, rng):
  """A prediction made from the gt by dropping, merging, splitting, relabelling, growing into void,
  shrinking, covering crowd regions and adding noise; ids are re-drawn at random."""
  pred = gt_ids.astype(np.int64).copy()
  category = {s['id']: s['category_id'] for s in gt_segments}
  next_id = [int(max(category)) + 1]

  def new_segment(category_id):
    next_id[0] += 1
    category[next_id[0]] = category_id
    return next_id[0]

  gt_void = gt_ids == 0
  segment_ids = [s['id'] for s in gt_segments]
  for segment in gt_segments:
    sid, mask = segment['id'], pred == segment['id']
    if not mask.any():
      continue
    op = rng.choice(['keep', 'drop', 'merge', 'split', 'relabel', 'grow', 'shrink', 'crowd'])
    if op == 'drop':
      pred[mask] = 0
    elif op == 'merge':
      pred[pred == rng.choice(segment_ids)] = sid
    elif op == 'split':
      ys, xs = np.nonzero(mask)
      cut = rng.integers(xs.min(), xs.max() + 1)
      pred[mask & (np.arange(pred.shape[1])[None, :] > cut)] = new_segment(category[sid])
    elif op == 'relabel':
      category[sid] = int(rng.choice(category_ids))
    elif op == 'grow':
      grown = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 30)))
      pred[grown & gt_void] = sid
    elif op == 'shrink':
      # Removes a random fraction of the rows: IoUs land on both sides of 0.5.
      ys, _ = np.nonzero(mask)
      cut = np.quantile(ys, rng.uniform(0.2, 0.8))
      pred[mask & (np.arange(pred.shape[0])[:, None] > cut)] = 0
    elif op == 'crowd' or segment.get('iscrowd', 0) == 1:
      # Pieces inside and around the crowd region, of its category or another one.
      grown = ndimage.binary_dilation(mask, iterations=int(rng.integers(0, 20)) or 1)
      xs = np.nonzero(grown)[1]
      edges = np.sort(rng.integers(xs.min(), xs.max() + 1, size=int(rng.integers(1, 4))))
      piece = np.searchsorted(edges, np.arange(pred.shape[1]))[None, :] + np.zeros_like(pred)
      for k in np.unique(piece[grown]):
        same = rng.random() < 0.7
        cat = segment['category_id'] if same else int(rng.choice(category_ids))
        pred[grown & (piece == k)] = new_segment(cat)
  # Noise: random pixels take random existing ids, void, or a fresh segment.
  noise = rng.random(pred.shape) < rng.uniform(0.0, 0.05)
  choices = np.concatenate([np.unique(pred), [new_segment(int(rng.choice(category_ids)))]])
  pred[noise] = rng.choice(choices, size=int(noise.sum()))

  present = np.unique(pred)
  present = present[present != 0]
  fresh = rng.choice(2**24 - 1, size=present.size, replace=False) + 1
  lookup = np.zeros(int(pred.max()) + 1, np.int64)
  lookup[present] = fresh
  segments = [
    {'id': int(f), 'category_id': int(category[int(p)])}
    for p, f in zip(present, fresh, strict=True)
  ]
  rng.shuffle(segments)
  return lookup[pred].astype(np.int32), segments


def _write_predictions(root, predictions, categories):
  json_path = coco_panoptic.write_panoptic_predictions(str(root), predictions, categories)
  return json_path, os.path.join(str(root), 'panoptic')


def _panopticapi(gt_json, gt_folder, pred_json, pred_folder):
  """panopticapi's pq_compute. Its multiprocessing.Pool() would fork this process, which may run
  JAX threads (an earlier test on this worker): its workers start from a fork server instead."""
  import multiprocessing
  from unittest import mock

  from panopticapi.evaluation import pq_compute

  forkserver = multiprocessing.get_context('forkserver')
  with mock.patch('multiprocessing.Pool', forkserver.Pool):
    return pq_compute(gt_json, pred_json, gt_folder=gt_folder, pred_folder=pred_folder)


def _max_diff(ours, reference, keys=('pq', 'sq', 'rq'), skip_empty_classes=False):
  """Max abs difference over All / Things / Stuff and per class; n must be equal."""
  diff = 0.0
  for group in ('All', 'Things', 'Stuff'):
    assert ours[group]['n'] == reference[group]['n'], group
    for key in keys:
      diff = max(diff, abs(ours[group][key] - reference[group][key]))
  ours_classes = {int(k): v for k, v in ours['per_class'].items()}
  reference_classes = {int(k): v for k, v in reference['per_class'].items()}
  assert set(ours_classes) == set(reference_classes)
  for category_id, entry in reference_classes.items():
    if skip_empty_classes and entry.get('tp', 1) + entry.get('fp', 0) + entry.get('fn', 0) == 0:
      continue
    for key in keys:
      diff = max(diff, abs(ours_classes[category_id][key] - entry[key]))
  return diff


def _our_results_three_ways(
  tmp_path, gt_json, gt_folder, pred_json, pred_folder, categories, gt_annotations, predictions
):
  """CLI (results JSON), pq_compute with workers and the accumulator directly must agree."""
  output = os.path.join(str(tmp_path), 'results.json')
  status = pq.main(
    [
      '--gt_json',
      gt_json,
      '--gt_folder',
      gt_folder,
      '--pred_json',
      pred_json,
      '--pred_folder',
      pred_folder,
      '--output_json',
      output,
      '--num_workers',
      '1',
    ]
  )
  assert status == 0
  with open(output) as f:
    cli = json.load(f)
  parallel = pq.pq_compute(gt_json, pred_json, gt_folder, pred_folder, num_workers=2)
  accumulator = pq_accumulator.PQAccumulator(categories)
  for (image_id, _, ids, segments), (_, _, pred_ids, pred_segments) in zip(
    gt_annotations, predictions, strict=True
  ):
    accumulator.update(ids, segments, pred_ids, pred_segments, image_id=image_id)
  direct = accumulator.results()
  assert _max_diff(parallel, cli) < 1e-12
  assert _max_diff(direct, cli) < 1e-12
  return cli


@pytest.mark.parametrize('repeat', range(3))
def test_perturbed_coco_predictions_equal_panopticapi(tmp_path, repeat):
  rng = _fresh_rng()
  gt_json, images = _load_gt()
  category_ids = [c['id'] for c in gt_json['categories']]
  predictions = [
    (image_id, stem, *_perturb(ids, segments, category_ids, rng))
    for image_id, stem, ids, segments in images
  ]
  pred_json, pred_folder = _write_predictions(tmp_path / 'pred', predictions, gt_json['categories'])

  reference = _panopticapi(GT_JSON, GT_FOLDER, pred_json, pred_folder)
  ours = _our_results_three_ways(
    tmp_path, GT_JSON, GT_FOLDER, pred_json, pred_folder, gt_json['categories'], images, predictions
  )
  assert _max_diff(ours, reference) < TOL
  # The perturbations must exercise every kind of outcome.
  per_class = ours['per_class'].values()
  assert sum(c['tp'] for c in per_class) > 0
  assert sum(c['fp'] for c in per_class) > 0
  assert sum(c['fn'] for c in per_class) > 0
  assert 0 < ours['All']['pq'] < 1

  from hotcoco.panoptic import pq_compute as hotcoco_pq_compute

  hot = hotcoco_pq_compute(GT_JSON, pred_json, GT_FOLDER, pred_folder)
  # hotcoco reports -1 for classes without segments where panopticapi reports 0.
  assert _max_diff(ours, hot, skip_empty_classes=True) < TOL


def _synthetic_dataset(rng, num_images, categories):
  """Random gt (rectangles over a random stuff background, void, crowd) and random predictions
  that partly follow the gt."""
  category_ids = [c['id'] for c in categories]
  things = [c['id'] for c in categories if c['isthing']]
  stuff = [c['id'] for c in categories if not c['isthing']]
  gt, pred = [], []
  for image_id in range(num_images):
    height, width = rng.integers(12, 40, size=2)
    ids = np.zeros((height, width), np.int64)
    segments = []
    stuff_split = rng.integers(1, width)
    for k, cat in enumerate(rng.choice(stuff, size=2, replace=False)):
      ids[:, slice(0, stuff_split) if k == 0 else slice(stuff_split, None)] = k + 1
      segments.append({'id': k + 1, 'category_id': int(cat), 'iscrowd': 0})
    for k in range(int(rng.integers(1, 7))):
      y, x = rng.integers(0, height - 2), rng.integers(0, width - 2)
      h, w = rng.integers(2, height - y + 1), rng.integers(2, width - x + 1)
      ids[y : y + h, x : x + w] = k + 10
      segments.append(
        {'id': k + 10, 'category_id': int(rng.choice(things)), 'iscrowd': int(rng.random() < 0.2)}
      )
    ids[rng.random((height, width)) < 0.05] = 0
    present = set(np.unique(ids).tolist())
    segments = [s for s in segments if s['id'] in present]
    gt.append((image_id, f'{image_id:06d}', ids, segments))

    pred_ids, pred_segments = _perturb(ids, segments, category_ids, rng)
    if rng.random() < 0.3:  # Some images with unrelated random predictions.
      pred_ids = rng.integers(0, 4, size=(height, width)).astype(np.int32) * 7
      pred_segments = [
        {'id': int(v), 'category_id': int(rng.choice(category_ids))}
        for v in np.unique(pred_ids)
        if v
      ]
    pred.append((image_id, f'{image_id:06d}', pred_ids, pred_segments))
  return gt, pred


CATEGORIES = [
  {'id': 1, 'name': 'a', 'isthing': 1},
  {'id': 3, 'name': 'b', 'isthing': 1},
  {'id': 4, 'name': 'c', 'isthing': 1},
  {'id': 7, 'name': 'd', 'isthing': 0},
  {'id': 8, 'name': 'e', 'isthing': 0},
  {'id': 12, 'name': 'f', 'isthing': 0},
]


def _write_gt(root, gt, categories, edit_segments=None):
  """gt JSON + PNGs; edit_segments(segments_info) -> segments_info may change the JSON."""
  json_path = coco_panoptic.write_panoptic_predictions(str(root), gt, categories)
  if edit_segments:
    with open(json_path) as f:
      data = json.load(f)
    for annotation in data['annotations']:
      annotation['segments_info'] = edit_segments(annotation['segments_info'])
    with open(json_path, 'w') as f:
      json.dump(data, f)
  return json_path, os.path.join(str(root), 'panoptic')


@pytest.mark.parametrize('repeat', range(2))
def test_random_synthetic_images_equal_panopticapi(tmp_path, repeat):
  rng = _fresh_rng()
  gt, predictions = _synthetic_dataset(rng, 12, CATEGORIES)
  gt_json, gt_folder = _write_gt(tmp_path / 'gt', gt, CATEGORIES)
  pred_json, pred_folder = _write_predictions(tmp_path / 'pred', predictions, CATEGORIES)
  reference = _panopticapi(gt_json, gt_folder, pred_json, pred_folder)
  ours = _our_results_three_ways(
    tmp_path, gt_json, gt_folder, pred_json, pred_folder, CATEGORIES, gt, predictions
  )
  assert _max_diff(ours, reference) < TOL


def test_gt_json_quirks_are_handled_like_panopticapi(tmp_path):
  # panopticapi takes |g| from the gt JSON's 'area', and gt ids of the PNG that the JSON does not
  # list are neither void nor segments.
  rng = _fresh_rng()
  gt, predictions = _synthetic_dataset(rng, 8, CATEGORIES)

  def edit(segments):
    for segment in segments:
      segment['area'] += int(rng.integers(0, 40))
    keep = rng.random(len(segments)) < 0.8
    return [segment for segment, k in zip(segments, keep, strict=True) if k]

  gt_json, gt_folder = _write_gt(tmp_path / 'gt', gt, CATEGORIES, edit)
  pred_json, pred_folder = _write_predictions(tmp_path / 'pred', predictions, CATEGORIES)
  reference = _panopticapi(gt_json, gt_folder, pred_json, pred_folder)
  ours = pq.pq_compute(gt_json, pred_json, gt_folder, pred_folder, num_workers=1)
  assert _max_diff(ours, reference) < TOL


def test_gt_ids_missing_from_json_are_not_void():
  categories = [{'id': 1, 'isthing': 1}]
  gt = np.array([[6, 6, 6, 5]], np.int32)  # 6 is not listed: not void, so 7 is no longer ignored
  pred = np.array([[7, 7, 7, 0]], np.int32)
  accumulator = pq_accumulator.PQAccumulator(categories)
  accumulator.update(gt, [{'id': 5, 'category_id': 1}], pred, [{'id': 7, 'category_id': 1}])
  np.testing.assert_array_equal(accumulator.state()[0, :3], [0, 1, 1])


def test_only_the_last_crowd_segment_of_a_category_ignores_predictions():
  # panopticapi keeps one crowd region per category and image: the last one listed.
  categories = [{'id': 1, 'isthing': 1}]
  gt = np.array([[3, 3, 3, 4, 4, 4]], np.int32)
  crowds = [{'id': 3, 'category_id': 1, 'iscrowd': 1}, {'id': 4, 'category_id': 1, 'iscrowd': 1}]
  pred = np.array([[7, 7, 7, 0, 0, 0]], np.int32)
  for gt_segments, expected_fp in ((crowds, 1), (crowds[::-1], 0)):
    accumulator = pq_accumulator.PQAccumulator(categories)
    accumulator.update(gt, gt_segments, pred, [{'id': 7, 'category_id': 1}])
    assert accumulator.state()[0, pq_accumulator.FP] == expected_fp


def test_perfect_prediction_gives_pq_one(tmp_path):
  shutil.copytree(GT_FOLDER, tmp_path / 'pred')
  results = pq.pq_compute(GT_JSON, GT_JSON, GT_FOLDER, str(tmp_path / 'pred'))
  for group in ('All', 'Things', 'Stuff'):
    assert results[group]['pq'] == pytest.approx(1.0, abs=1e-12)
    assert results[group]['n'] > 0
  assert all(c['fp'] == 0 and c['fn'] == 0 for c in results['per_class'].values())


def test_workers_never_fork_a_process_running_jax(tmp_path):
  """The eval loop computes PQ in a process whose JAX threads a fork would copy mid-flight
  (JAX warns "os.fork() was called"); the workers start from a fork server instead."""
  import warnings

  import jax.numpy as jnp

  float(jnp.ones(8).sum())  # JAX's backend and its threads are up in this process
  shutil.copytree(GT_FOLDER, tmp_path / 'pred')
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    results = pq.pq_compute(GT_JSON, GT_JSON, GT_FOLDER, str(tmp_path / 'pred'), num_workers=2)
  assert results['All']['pq'] == pytest.approx(1.0, abs=1e-12)
  forks = [str(w.message) for w in caught if 'fork' in str(w.message).lower()]
  assert not forks, forks


def test_merged_state_equals_one_accumulator():
  rng = _fresh_rng()
  gt, predictions = _synthetic_dataset(rng, 10, CATEGORIES)
  single, first, second = (pq_accumulator.PQAccumulator(CATEGORIES) for _ in range(3))
  split = int(rng.integers(1, len(gt)))
  for k, ((image_id, _, ids, segments), (_, _, pred_ids, pred_segments)) in enumerate(
    zip(gt, predictions, strict=True)
  ):
    single.update(ids, segments, pred_ids, pred_segments, image_id)
    (first if k < split else second).update(ids, segments, pred_ids, pred_segments, image_id)
  merged = pq_accumulator.PQAccumulator(CATEGORIES)
  merged.merge_state(first.state() + second.state())
  np.testing.assert_array_equal(merged.state()[:, :3], single.state()[:, :3])
  np.testing.assert_allclose(merged.state()[:, 3], single.state()[:, 3], rtol=0, atol=1e-12)
  assert _max_diff(merged.results(), single.results()) < 1e-12
  assert single.state()[:, pq_accumulator.TP].sum() > 0
  with pytest.raises(ValueError, match='shape'):
    merged.merge_state(np.zeros((2, 4)))


def test_iou_exactly_one_half_is_not_a_match():
  categories = [{'id': 1, 'isthing': 1}, {'id': 2, 'isthing': 0}]
  gt = np.array([[5, 5, 5, 5]], np.int32)
  for pred_row, expected in (([9, 9, 9, 0], [1, 0, 0]), ([9, 9, 0, 0], [0, 1, 1])):
    # IoU 3/4 matches; IoU 2/4 = 0.5 exactly does not.
    accumulator = pq_accumulator.PQAccumulator(categories)
    accumulator.update(
      gt,
      [{'id': 5, 'category_id': 1}],
      np.array([pred_row], np.int32),
      [{'id': 9, 'category_id': 1}],
    )
    np.testing.assert_array_equal(accumulator.state()[0, :3], expected)
    assert accumulator.state()[0, pq_accumulator.IOU] == (0.75 if expected[0] else 0.0)


def test_prediction_mostly_in_void_and_crowd_is_ignored():
  categories = [{'id': 1, 'isthing': 1}, {'id': 2, 'isthing': 1}]
  gt = np.array([[0, 0, 3, 3, 3, 4]], np.int32)  # 3: crowd of category 1, 4: category 2
  gt_segments = [{'id': 3, 'category_id': 1, 'iscrowd': 1}, {'id': 4, 'category_id': 2}]
  pred = np.array([[7, 7, 7, 8, 8, 8]], np.int32)
  for category_of_8, expected_fp in ((1, [0, 0]), (2, [0, 1])):
    accumulator = pq_accumulator.PQAccumulator(categories)
    pred_segments = [{'id': 7, 'category_id': 1}, {'id': 8, 'category_id': category_of_8}]
    accumulator.update(gt, gt_segments, pred, pred_segments)
    # 7: 2 of 3 pixels void -> ignored. 8 (category 1): 2 of 3 in the crowd -> ignored;
    # 8 (category 2): IoU with 4 = 1/3 -> no match, 2 of 3 pixels in another category's crowd
    # -> a false positive.
    np.testing.assert_array_equal(accumulator.state()[:, pq_accumulator.FP], expected_fp)
  np.testing.assert_array_equal(accumulator.state()[:, pq_accumulator.FN], [0, 1])


def test_segments_from_semantic_instance_round_trip():
  rng = _fresh_rng()
  categories = [{'id': int(i), 'isthing': 1} for i in rng.choice(200, size=9, replace=False) + 1]
  shape = tuple(rng.integers(5, 50, size=2))
  semantic = rng.integers(0, len(categories) + 1, size=shape)
  instance = rng.integers(0, 6, size=shape)
  crowd = rng.random(shape) < 0.1
  ids, segments = coco_panoptic.segments_from_semantic_instance(
    semantic, instance, categories, crowd
  )
  assert ids.dtype == np.int32 and ids.shape == shape
  void = (semantic == 0) | (instance == 0)
  np.testing.assert_array_equal(ids == 0, void)
  assert [s['id'] for s in segments] == list(range(1, len(segments) + 1))
  by_id = {s['id']: s for s in segments}
  # One segment per (semantic, instance, crowd) and back.
  triples = {}
  for sem, inst, is_crowd, segment_id in zip(
    semantic[~void], instance[~void], crowd[~void], ids[~void], strict=True
  ):
    assert triples.setdefault((sem, inst, is_crowd), segment_id) == segment_id
    segment = by_id[int(segment_id)]
    assert segment['category_id'] == categories[sem - 1]['id']
    assert segment['iscrowd'] == int(is_crowd)
  assert len(triples) == len(segments)
  for segment in segments:
    assert segment['area'] == int((ids == segment['id']).sum())
  # Without crowd flags every pair is one non-crowd segment.
  ids, segments = coco_panoptic.segments_from_semantic_instance(semantic, instance, categories)
  pairs = {(s, i) for s, i in zip(semantic[~void], instance[~void], strict=True)}
  assert len(segments) == len(pairs) and all(s['iscrowd'] == 0 for s in segments)
  # The maps score PQ 1 against themselves.
  accumulator = pq_accumulator.PQAccumulator(categories)
  accumulator.update(ids, segments, ids, segments)
  assert accumulator.results()['All']['pq'] == pytest.approx(1.0, abs=1e-12)
  with pytest.raises(ValueError, match='semantic values'):
    coco_panoptic.segments_from_semantic_instance(semantic + len(categories), instance, categories)


def _write_sample_predictions(tmp_path):
  """The gt itself as predictions (JSON + PNGs) in tmp_path/pred."""
  gt_json, images = _load_gt()
  return gt_json, images, _write_predictions(tmp_path / 'pred', images, gt_json['categories'])


def _cli_error(capsys, argv):
  assert pq.main(argv) == 1
  return capsys.readouterr().err


def test_cli_errors_name_the_problem(tmp_path, capsys):
  gt_json, images, (pred_json, pred_folder) = _write_sample_predictions(tmp_path)
  base = ['--gt_json', GT_JSON, '--gt_folder', GT_FOLDER, '--pred_json', pred_json]

  missing_folder = str(tmp_path / 'nowhere')
  err = _cli_error(capsys, base + ['--pred_folder', missing_folder])
  assert missing_folder in err and "doesn't exist" in err

  # A segment in the PNG and not in the JSON.
  with open(pred_json) as f:
    data = json.load(f)
  broken = copy.deepcopy(data)
  dropped = broken['annotations'][1]['segments_info'].pop(3)
  path = str(tmp_path / 'broken.json')
  with open(path, 'w') as f:
    json.dump(broken, f)
  err = _cli_error(capsys, base[:-1] + [path, '--pred_folder', pred_folder])
  image_id = broken['annotations'][1]['image_id']
  assert f'image with ID {image_id}' in err and f'segment with ID {dropped["id"]}' in err
  assert 'not presented in JSON' in err

  # A JSON segment without pixels.
  broken = copy.deepcopy(data)
  broken['annotations'][0]['segments_info'].append({'id': 4242, 'category_id': 1})
  with open(path, 'w') as f:
    json.dump(broken, f)
  err = _cli_error(capsys, base[:-1] + [path, '--pred_folder', pred_folder])
  assert '4242' in err and 'not presented in PNG' in err

  # An unknown category.
  broken = copy.deepcopy(data)
  broken['annotations'][0]['segments_info'][2]['category_id'] = 999
  with open(path, 'w') as f:
    json.dump(broken, f)
  err = _cli_error(capsys, base[:-1] + [path, '--pred_folder', pred_folder])
  assert 'unknown category_id 999' in err

  # An image without a prediction.
  broken = copy.deepcopy(data)
  removed = broken['annotations'].pop(0)
  with open(path, 'w') as f:
    json.dump(broken, f)
  err = _cli_error(capsys, base[:-1] + [path, '--pred_folder', pred_folder])
  assert f'no prediction for the image with id: {removed["image_id"]}' in err

  # A PNG named in the JSON that does not exist.
  os.remove(os.path.join(pred_folder, data['annotations'][1]['file_name']))
  err = _cli_error(capsys, base + ['--pred_folder', pred_folder])
  assert data['annotations'][1]['file_name'] in err and 'do not exist' in err

  # The results JSON is written only on success.
  assert not os.path.exists(tmp_path / 'results.json')


def test_cli_bad_files_give_an_error_line_not_a_traceback(tmp_path, capsys):
  _, _, (pred_json, pred_folder) = _write_sample_predictions(tmp_path)
  base = ['--gt_json', GT_JSON, '--gt_folder', GT_FOLDER, '--pred_folder', pred_folder]
  with open(pred_json) as f:
    data = json.load(f)
  path = str(tmp_path / 'edited.json')

  # Invalid JSON: the file and the position are named.
  with open(path, 'w') as f:
    f.write(json.dumps(data)[:-7])
  err = _cli_error(capsys, base + ['--pred_json', path])
  assert err.startswith('error: ') and path in err and 'not valid JSON' in err and 'line 1' in err
  assert 'Traceback' not in err

  # A JSON without 'annotations', and an annotation without 'segments_info'.
  with open(path, 'w') as f:
    json.dump({'categories': data['categories']}, f)
  err = _cli_error(capsys, base + ['--pred_json', path])
  assert path in err and "['annotations']" in err
  broken = copy.deepcopy(data)
  del broken['annotations'][1]['segments_info']
  with open(path, 'w') as f:
    json.dump(broken, f)
  err = _cli_error(capsys, base + ['--pred_json', path])
  assert path in err and "['segments_info']" in err

  # A corrupt PNG (in a worker process too).
  png = os.path.join(pred_folder, data['annotations'][1]['file_name'])
  with open(png, 'r+b') as f:
    f.truncate(100)
  for workers in ('1', '2'):
    err = _cli_error(capsys, base + ['--pred_json', pred_json, '--num_workers', workers])
    assert png in err and 'cannot be decoded' in err and 'Traceback' not in err


def test_predictions_for_unknown_images_are_counted_in_a_warning(tmp_path, caplog):
  _, _, (pred_json, pred_folder) = _write_sample_predictions(tmp_path)
  with open(pred_json) as f:
    data = json.load(f)
  extra = copy.deepcopy(data['annotations'][0])
  ids = [10**9 + 1, 10**9 + 2]
  data['annotations'] += [dict(extra, image_id=i) for i in ids]
  with open(pred_json, 'w') as f:
    json.dump(data, f)
  with caplog.at_level('WARNING'):
    results = pq.pq_compute(GT_JSON, pred_json, GT_FOLDER, pred_folder)
  assert results['All']['pq'] == pytest.approx(1.0)
  message = caplog.text
  assert '2 predictions are for images absent from the ground truth' in message
  assert all(str(i) in message for i in ids)


def test_cli_prints_table_and_writes_results(tmp_path, capsys):
  _, _, (pred_json, pred_folder) = _write_sample_predictions(tmp_path)
  output = str(tmp_path / 'out' / 'results.json')
  assert (
    pq.main(
      [
        '--gt_json',
        GT_JSON,
        '--pred_json',
        pred_json,
        '--gt_folder',
        GT_FOLDER,
        '--pred_folder',
        pred_folder,
        '--output_json',
        output,
        '--per_class',
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert 'All' in out and 'Things' in out and 'Stuff' in out and 'person' in out
  with open(output) as f:
    results = json.load(f)
  assert results['All']['pq'] == pytest.approx(1.0)
  assert os.listdir(tmp_path / 'out') == ['results.json']


def test_cli_refuses_an_output_json_that_names_a_folder_before_scoring(tmp_path, capsys):
  """The check the DAVIS and STQ commands make too (evaluation/base.py `run_command`)."""
  _, _, (pred_json, pred_folder) = _write_sample_predictions(tmp_path)
  argv = ['--gt_json', GT_JSON, '--gt_folder', GT_FOLDER, '--pred_json', pred_json]
  err = _cli_error(capsys, argv + ['--pred_folder', pred_folder, '--output_json', pred_folder])
  assert err == f'error: --output_json={pred_folder}: is a folder, not a file\n'
  assert sorted(os.listdir(pred_folder)) == sorted(os.listdir(GT_FOLDER))


def test_accumulator_input_checks():
  categories = [{'id': 1, 'isthing': 1}]
  accumulator = pq_accumulator.PQAccumulator(categories)
  ids = np.ones((3, 3), np.int32)
  with pytest.raises(coco_panoptic.PanopticFormatError, match='shape'):
    accumulator.update(ids, [{'id': 1, 'category_id': 1}], ids[:2], [{'id': 1, 'category_id': 1}])
  with pytest.raises(coco_panoptic.PanopticFormatError, match='more than once'):
    accumulator.update(
      ids,
      [{'id': 1, 'category_id': 1}],
      ids,
      [{'id': 1, 'category_id': 1}, {'id': 1, 'category_id': 1}],
    )
  with pytest.raises(coco_panoptic.PanopticFormatError, match='unknown category_id 5'):
    accumulator.update(ids, [{'id': 1, 'category_id': 5}], ids, [{'id': 1, 'category_id': 1}])
  with pytest.raises(ValueError, match='isthing'):
    pq_accumulator.PQAccumulator([{'id': 1}])
  assert accumulator.state().sum() == 0  # Failed updates add nothing.
  empty = pq_accumulator.PQAccumulator(categories).results()
  assert empty['All'] == {'pq': 0.0, 'sq': 0.0, 'rq': 0.0, 'n': 0}
