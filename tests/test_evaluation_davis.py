"""DAVIS 2017 unsupervised J, F and J&F (evaluation/davis.py).

Per-frame J and boundary F are checked against vos-benchmark (PyPI), which carries the official
davis2017-evaluation code for both (with OpenCV's dilation and scikit-image's disk); the
assignment and statistics against cases worked out from the official definitions.
"""

import numpy as np
import pytest
from scipy import ndimage

from pix2seq_d.evaluation import davis
from pix2seq_d.formats import davis_png


def _rng():
  seed = int(np.random.SeedSequence().entropy % 2**32)
  print('seed', seed)
  return np.random.default_rng(seed)


def _blobs(rng, shape):
  """A binary mask of a few smooth random blobs."""
  noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=min(shape) / 10)
  return noise > np.quantile(noise, 1 - rng.uniform(0.05, 0.5))


@pytest.mark.parametrize('shape', [(48, 64), (61, 97), (120, 200), (480, 854)])
def test_per_frame_j_and_f_equal_vos_benchmark(shape):
  from vos_benchmark.evaluator import Evaluator

  rng = _rng()
  cases = [(_blobs(rng, shape), _blobs(rng, shape)) for _ in range(4)]
  gt = _blobs(rng, shape)
  cases += [(gt, gt), (gt, np.zeros(shape, bool)), (np.zeros(shape, bool), gt)]
  for gt, pred in cases:
    reference = Evaluator()
    reference.feed_frame(pred.astype(np.uint8), gt.astype(np.uint8))
    assert davis.region_similarity(gt, pred) == pytest.approx(reference.object_iou[1][0], abs=1e-12)
    assert davis.boundary_f(gt, pred) == pytest.approx(reference.boundary_f[1][0], abs=1e-12)


def test_void_pixels_count_for_neither_j_nor_f():
  gt = np.zeros((40, 40), bool)
  gt[10:30, 10:30] = True
  pred = gt.copy()
  pred[10:30, 30:36] = True  # spills into a void band
  void = np.zeros_like(gt)
  void[:, 30:40] = True
  assert davis.region_similarity(gt, pred, void) == 1.0
  assert davis.region_similarity(gt, pred) == pytest.approx(400 / 520)
  assert davis.boundary_f(gt, pred, void) == 1.0
  assert davis.boundary_f(gt, pred) < 1.0


def _video(rng, frames=6, shape=(40, 56), objects=3):
  """(T, H, W) ids: `objects` moving squares that never overlap."""
  ids = np.zeros((frames, *shape), np.int64)
  for k in range(objects):
    y, x = 4 + 12 * k, 2
    for t in range(frames):
      ids[t, y : y + 8, x + 3 * t : x + 3 * t + 8] = k + 1
  return ids


def test_proposals_are_assigned_over_the_whole_video():
  rng = _rng()
  gt = _video(rng)
  permutation = rng.permutation(3) + 1
  pred = np.where(gt > 0, permutation[np.maximum(gt - 1, 0)], 0)
  pred[2, :2, :2] = 7  # a spurious proposal in one frame: unassigned, no penalty
  j, f = davis.evaluate_sequence(gt, pred)
  assert j.shape == f.shape == (3, 6)
  np.testing.assert_allclose(j, 1.0)
  np.testing.assert_allclose(f, 1.0)
  result = davis.summarize({'squares': (j, f)})
  assert result['J&F-Mean'] == 1.0 and result['J-Decay'] == 0.0
  assert set(result['per_sequence']) == {'squares_1', 'squares_2', 'squares_3'}


def test_official_edge_cases():
  rng = _rng()
  gt = _video(rng)
  # An object absent from the first frame is not evaluated.
  late = gt.copy()
  late[0][late[0] == 3] = 0
  j, _ = davis.evaluate_sequence(late, gt)
  assert j.shape == (2, 6)
  # Fewer proposals than objects: the missing one is an empty mask, J 0 where the object is.
  only_one = np.where(gt == 1, 1, 0)
  j, f = davis.evaluate_sequence(gt, only_one)
  assert sorted(j.mean(axis=1).round(6).tolist()) == [0.0, 0.0, 1.0]
  # Void (255) is left out of every object's J.
  voided = gt.copy()
  voided[:, :, 50:] = davis_png.VOID_ID
  pred = gt.copy()
  pred[:, :, 50:] = 1
  j, _ = davis.evaluate_sequence(voided, pred)
  np.testing.assert_allclose(j, 1.0)
  # More than 20 proposals is an error, as in the official code.
  too_many = gt.copy()
  too_many[0, 0, 0] = 21
  with pytest.raises(ValueError, match='at most 20 proposals'):
    davis.evaluate_sequence(gt, too_many)


def test_statistics_cut_quarters_as_the_official_code():
  values = np.array([1.0, 0.9, 0.8, 0.2, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
  mean, recall, decay = davis.statistics(values)
  assert mean == pytest.approx(values.mean())
  assert recall == pytest.approx(np.mean(values > 0.5))
  # Edges round(linspace(1, 10, 5)) - 1 = [0, 2, 5, 7, 9]: first bin [0:3], last bin [7:10].
  assert decay == pytest.approx(values[0:3].mean() - values[7:10].mean())


def _write_indexed(path, ids):
  from PIL import Image

  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(ids.astype(np.uint8), mode='P')
  image.putpalette([v for k in range(256) for v in (k * 40 % 256, k * 90 % 256, k * 20 % 256)])
  image.save(path)


def _write_davis(root, results, rng):
  """Two sequences in the official layout, and predictions with proposal ids permuted."""
  (root / 'ImageSets' / '2017').mkdir(parents=True)
  (root / 'ImageSets' / '2017' / 'val.txt').write_text('blackswan\ncows\n')
  for sequence in ('blackswan', 'cows'):
    gt = _video(rng)
    permutation = rng.permutation(3) + 1
    for t, frame in enumerate(gt):
      name = f'{t:05d}.png'
      _write_indexed(root / 'Annotations_unsupervised' / '480p' / sequence / name, frame)
      _write_indexed(
        results / sequence / name, np.where(frame > 0, permutation[np.maximum(frame - 1, 0)], 0)
      )


def test_command_on_the_official_layout(tmp_path, capsys):
  import json

  rng = _rng()
  root, results = tmp_path / 'DAVIS', tmp_path / 'results'
  _write_davis(root, results, rng)
  output = tmp_path / 'out' / 'davis.json'
  assert (
    davis.main(
      ['--davis_root', str(root), '--results_dir', str(results), '--output_json', str(output)]
    )
    == 0
  )
  printed = capsys.readouterr().out
  assert 'J&F-Mean' in printed and 'cows_3' in printed
  saved = json.loads(output.read_text())
  assert saved['J&F-Mean'] == 1.0 and saved['F-Recall'] == 1.0
  assert sorted(saved['per_sequence']) == [
    f'{s}_{k}' for s in ('blackswan', 'cows') for k in (1, 2, 3)
  ]

  # A missing prediction frame and a corrupt one: an error line naming the file, exit 1.
  missing = results / 'cows' / '00003.png'
  missing.unlink()
  assert davis.main(['--davis_root', str(root), '--results_dir', str(results)]) == 1
  assert f'error: {missing} does not exist' in capsys.readouterr().err
  missing.write_bytes(b'\x89PNG broken')
  assert davis.main(['--davis_root', str(root), '--results_dir', str(results)]) == 1
  assert f'{missing}: cannot be decoded' in capsys.readouterr().err
  # One frame of another size, and an RGB picture instead of an indexed PNG: both named.
  from PIL import Image

  Image.fromarray(np.zeros((5, 7), np.uint8)).save(missing)
  assert davis.main(['--davis_root', str(root), '--results_dir', str(results)]) == 1
  assert f'{missing}: the prediction is 7x5, its annotation' in capsys.readouterr().err
  height, width = davis_png.read_indexed_png(str(results / 'cows' / '00000.png')).shape
  Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(missing)
  assert davis.main(['--davis_root', str(root), '--results_dir', str(results)]) == 1
  assert (
    f'{missing}: a DAVIS object-id map is an indexed (palette or grey) PNG'
    in capsys.readouterr().err
  )


def test_command_refuses_an_output_json_under_a_file_before_scoring(tmp_path, capsys):
  """The check the PQ and STQ commands make too (evaluation/base.py `run_command`)."""
  root, results = tmp_path / 'DAVIS', tmp_path / 'results'
  _write_davis(root, results, _rng())
  a_file = tmp_path / 'a_file'
  a_file.write_text('kept')
  output = a_file / 'davis.json'
  argv = ['--davis_root', str(root), '--results_dir', str(results), '--output_json', str(output)]
  assert davis.main(argv) == 1
  captured = capsys.readouterr()
  assert captured.err == f'error: --output_json={output}: {a_file} is a file, not a folder\n'
  assert 'J&F-Mean' not in captured.out and a_file.read_text() == 'kept'
