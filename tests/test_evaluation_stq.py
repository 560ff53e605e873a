"""STQ (evaluation/stq.py, stq_evaluator.py): hand-derived cases, invariances, the command on
KITTI-STEP-layout files, and the plug-in equal to the definitions.

The hand-derived values below were also checked against deeplab2's numpy STQ
(evaluation/numpy/segmentation_and_tracking_quality.py), which cannot run in CI.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from processes import ROOT
from step_layout import write_png_16_bits

from pix2seq_d.evaluation import base, registry, stq
from pix2seq_d.formats import step_png

SKY, ROAD, PERSON, CAR, VOID = 10, 0, 11, 13, 255


def _rng():
  seed = int(np.random.SeedSequence().entropy % 2**32)
  print('seed', seed)
  return np.random.default_rng(seed)


def _score(frames, sequences=None):
  """STQ of [(gt_sem, gt_inst, pred_sem, pred_inst)] frames, one sequence unless named."""
  per = {}
  for k, frame in enumerate(frames):
    name = sequences[k] if sequences else 'seq'
    per.setdefault(name, stq.SequenceSTQ(19, (PERSON, CAR)))
    per[name].add_frame(*(np.asarray(a) for a in frame))
  return stq.summarize({name: s.summary() for name, s in per.items()})


def test_a_void_prediction_counts_against_its_class_and_as_a_class():
  # 8 sky + 8 road pixels, one sky pixel predicted void: IoU (road 1 + sky 7/8 + void 0) / 3.
  gt = np.array([[SKY] * 8, [ROAD] * 8])
  pred = gt.copy()
  pred[0, 0] = VOID
  zeros = np.zeros_like(gt)
  result = _score([(gt, zeros, pred, zeros)])
  assert result['IoU'] == pytest.approx((1 + 7 / 8 + 0) / 3, abs=1e-15)
  assert result['AQ'] == 0.0 and result['STQ'] == 0.0  # no thing tube
  # A void ground-truth pixel counts for nothing, whatever is predicted there.
  gt_void = gt.copy()
  gt_void[0, 0] = VOID
  assert _score([(gt_void, zeros, gt, zeros)])['IoU'] == 1.0


def test_a_track_split_in_two_halves_its_association():
  # One car of 2 pixels in each of 2 frames (tube size 4); the prediction calls it id 1 in the
  # first frame and id 2 in the second: each predicted tube has TPA 2, IoU 2 / 4, so
  # AQ = (2 * 0.5 + 2 * 0.5) / 4 = 0.5; classes are perfect, so STQ = sqrt(0.5).
  gt_sem = np.array([[CAR, CAR, ROAD]])
  gt_inst = np.array([[7, 7, 0]])
  frames = [
    (gt_sem, gt_inst, gt_sem, np.array([[1, 1, 0]])),
    (gt_sem, gt_inst, gt_sem, np.array([[2, 2, 0]])),
  ]
  result = _score(frames)
  assert result['AQ'] == pytest.approx(0.5, abs=1e-15) and result['IoU'] == 1.0
  assert result['STQ'] == pytest.approx(math.sqrt(0.5), abs=1e-15)
  assert result['per_sequence']['seq']['num_frames'] == 2
  # Consistent ids over time: AQ 1.
  frames[1] = (gt_sem, gt_inst, gt_sem, np.array([[1, 1, 0]]))
  assert _score(frames)['AQ'] == 1.0


def test_a_track_switch_costs_both_tracks():
  # Cars 1 and 2 (one pixel each, two frames); the prediction swaps their ids in frame 2. Each
  # gt tube (size 2) meets both predicted tubes (size 2) once: TPA 1, IoU 1 / 3, so
  # AQ(g) = (1 * 1/3 + 1 * 1/3) / 2 = 1/3 for both tubes.
  sem = np.array([[CAR, CAR]])
  gt_inst = np.array([[1, 2]])
  frames = [(sem, gt_inst, sem, np.array([[1, 2]])), (sem, gt_inst, sem, np.array([[2, 1]]))]
  result = _score(frames)
  assert result['AQ'] == pytest.approx(1 / 3, abs=1e-15) and result['IoU'] == 1.0
  assert result['STQ'] == pytest.approx(math.sqrt(1 / 3), abs=1e-15)


def test_crowd_pixels_are_neither_a_tube_nor_a_false_positive():
  # Person pixel 0 is crowd (thing, instance 0): not part of any gt tube, and predicting a
  # person track over it costs nothing. Tube g = the 2 pixels of person 3, predicted as id 5
  # over 3 pixels (1 of them crowd): TPA 2, |p| = 2 after removing crowd, AQ = 1.
  gt_sem = np.array([[PERSON, PERSON, PERSON, SKY]])
  gt_inst = np.array([[0, 3, 3, 0]])
  pred_inst = np.array([[5, 5, 5, 0]])
  result = _score([(gt_sem, gt_inst, gt_sem, pred_inst)])
  assert result['AQ'] == 1.0
  # Were pixel 0 a track of its own (person 4), the prediction would merge two tubes:
  # g1 = {0}: TPA 1, IoU 1 / 3; g2 = {1, 2}: TPA 2, IoU 2 / 3;
  # AQ = ((1 * 1/3) / 1 + (2 * 2/3) / 2) / 2 = 1/2.
  merged = _score([(gt_sem, np.array([[4, 3, 3, 0]]), gt_sem, pred_inst)])
  assert merged['AQ'] == pytest.approx(0.5, abs=1e-15)


def test_sequences_are_scored_apart_and_the_set_averages_over_tubes():
  # Sequence a: one tube, AQ 1. Sequence b: two tubes, both predicted as one id: each AQ(g) =
  # (2 * 2/4) / 2 = 0.5. Set AQ = (1 + 0.5 + 0.5) / 3 tubes; the same id 1 in both sequences
  # names two tubes.
  sem = np.array([[CAR, CAR, CAR, CAR]])
  a = (sem, np.array([[1, 1, 1, 1]]), sem, np.array([[1, 1, 1, 1]]))
  b = (sem, np.array([[1, 1, 2, 2]]), sem, np.array([[1, 1, 1, 1]]))
  result = _score([a, b], sequences=['a', 'b'])
  assert result['per_sequence']['a']['AQ'] == 1.0
  assert result['per_sequence']['b']['AQ'] == pytest.approx(0.5, abs=1e-15)
  assert result['AQ'] == pytest.approx(2 / 3, abs=1e-15)


def _random_sequence(rng, frames=4, shape=(12, 20)):
  classes = np.array([ROAD, SKY, PERSON, CAR, VOID])
  gt_sem = rng.choice(classes, size=(frames, *shape))
  gt_inst = np.where(np.isin(gt_sem, (PERSON, CAR)), rng.integers(0, 4, (frames, *shape)), 0)
  pred_sem = np.where(
    rng.uniform(size=gt_sem.shape) < 0.2, rng.choice(classes, gt_sem.shape), gt_sem
  )
  pred_inst = np.where(
    rng.uniform(size=gt_sem.shape) < 0.2, rng.integers(0, 6, gt_sem.shape), gt_inst
  )
  return gt_sem, gt_inst, pred_sem, pred_inst


def test_relabelling_track_ids_consistently_changes_nothing():
  rng = _rng()
  gt_sem, gt_inst, pred_sem, pred_inst = _random_sequence(rng)
  frames = list(zip(gt_sem, gt_inst, pred_sem, pred_inst, strict=True))
  reference = _score(frames)
  gt_map = np.concatenate([[0], rng.permutation(np.arange(100, 60000))[:3]])  # 0 (crowd) stays
  pred_map = rng.permutation(65536)[:6]  # any ids, including 0 -> another id
  relabelled = [(gs, gt_map[gi], ps, pred_map[pi]) for gs, gi, ps, pi in frames]
  again = _score(relabelled)
  for key in ('STQ', 'AQ', 'IoU'):
    assert again[key] == pytest.approx(reference[key], abs=1e-12), key


def test_bad_maps_are_named():
  sequence = stq.SequenceSTQ(19, (PERSON, CAR))
  ok = np.zeros((2, 2), np.int64)
  with pytest.raises(ValueError, match='ground-truth class 19 is neither a class'):
    sequence.add_frame(ok + 19, ok, ok, ok)
  with pytest.raises(ValueError, match='predicted instance ids must lie in 0..65535'):
    sequence.add_frame(ok, ok, ok, ok + 70000)
  with pytest.raises(ValueError, match='differ in size'):
    sequence.add_frame(ok, ok, np.zeros((3, 2)), np.zeros((3, 2)))


def _write_step_folder(root, rng, sequences=('0002', '0006'), frames=3, shape=(10, 14)):
  """A KITTI-STEP ground truth under root/panoptic_maps/val and perturbed predictions."""
  predictions = root / 'results'
  for name in sequences:
    gt_sem, gt_inst, pred_sem, pred_inst = _random_sequence(rng, frames, shape)
    for k in range(frames):
      step_png.write_step_png(
        str(root / 'panoptic_maps' / 'val' / name / f'{k:06d}.png'), gt_sem[k], gt_inst[k]
      )
      step_png.write_step_png(
        str(predictions / name / f'{k:06d}.png'), pred_sem[k], pred_inst[k] * 997
      )
  return predictions


def test_command_scores_step_files_as_the_definitions(tmp_path, capsys):
  rng = _rng()
  results = _write_step_folder(tmp_path, rng)
  output = tmp_path / 'out' / 'stq.json'
  args = ['--step_root', str(tmp_path), '--split', 'val', '--results_dir', str(results)]
  assert stq.main([*args, '--output_json', str(output)]) == 0
  printed = capsys.readouterr().out
  saved = json.loads(output.read_text())
  assert set(saved) == {'STQ', 'AQ', 'IoU', 'per_sequence'}
  assert set(saved['per_sequence']) == {'0002', '0006'}
  assert set(saved['per_sequence']['0002']) == {'STQ', 'AQ', 'IoU', 'num_frames'}
  assert f'{100 * saved["STQ"]:6.2f}' in printed and '0006' in printed
  # The same frames scored in memory.
  per = {}
  for name in ('0002', '0006'):
    sequence = stq.SequenceSTQ(19, (PERSON, CAR))
    for k in range(3):
      gt = step_png.read_step_png(str(tmp_path / 'panoptic_maps' / 'val' / name / f'{k:06d}.png'))
      pred = step_png.read_step_png(str(results / name / f'{k:06d}.png'))
      sequence.add_frame(*gt, *pred)
    per[name] = sequence.summary()
  assert stq.summarize(per) == saved


def test_command_names_a_missing_wrong_or_broken_prediction(tmp_path, capsys):
  rng = _rng()
  results = _write_step_folder(tmp_path, rng)
  args = ['--step_root', str(tmp_path), '--results_dir', str(results)]
  frame = results / '0006' / '000001.png'
  step_png.write_step_png(str(frame), np.zeros((4, 4)), np.zeros((4, 4)))
  assert stq.main(args) == 1
  assert f'error: {frame}: the prediction is 4x4, its ground truth 14x10' in capsys.readouterr().err
  frame.write_bytes(b'\x89PNG\r\n\x1a\n broken')
  assert stq.main(args) == 1
  assert f'{frame}: cannot be decoded' in capsys.readouterr().err
  frame.unlink()
  assert stq.main(args) == 1
  assert f'{frame}: no prediction for the ground-truth frame' in capsys.readouterr().err
  nowhere = tmp_path / 'nowhere'
  assert stq.main(['--step_root', str(nowhere), '--results_dir', str(results)]) == 1
  assert f'is {nowhere} a KITTI-STEP root' in capsys.readouterr().err


def _unwritable_folder(tmp_path):
  """A folder this process cannot create files in: mode 0o555, or /proc for root (whom file
  modes do not stop)."""
  if os.geteuid() == 0:
    return '/proc'
  folder = tmp_path / 'read_only'
  folder.mkdir()
  folder.chmod(0o555)
  return str(folder)


@pytest.mark.parametrize(
  'case, reason',
  [
    ('in a read-only folder', 'cannot create files in'),
    ('a folder', 'is a folder, not a file'),
    ('under a file', 'is a file, not a folder'),
  ],
)
def test_command_refuses_an_output_json_it_cannot_write_before_scoring(
  tmp_path, capsys, case, reason
):
  results = _write_step_folder(tmp_path, _rng())
  a_file = tmp_path / 'a_file'
  a_file.write_text('kept')
  output = {
    'in a read-only folder': os.path.join(_unwritable_folder(tmp_path), 'stq.json'),
    'a folder': str(results),
    'under a file': str(a_file / 'out' / 'stq.json'),
  }[case]
  args = ['--step_root', str(tmp_path), '--results_dir', str(results), '--output_json', output]
  assert stq.main(args) == 1
  captured = capsys.readouterr()
  assert captured.err.startswith(f'error: --output_json={output}: ') and reason in captured.err
  assert len(captured.err.splitlines()) == 1 and 'STQ' not in captured.out  # before the table
  assert a_file.read_text() == 'kept'
  assert os.path.isdir(output) if case == 'a folder' else not os.path.exists(output)


def test_command_names_an_output_json_lost_while_scoring_and_writes_nothing(tmp_path, capsys):
  """A folder that could be written at start and is gone when the results are (another job
  replaced it by a file): one error line after the table, no traceback, the file as it was."""
  results = _write_step_folder(tmp_path, _rng())
  out = tmp_path / 'out'
  out.mkdir()
  output = str(out / 'stq.json')

  def score_while_the_folder_goes():
    scores = stq.evaluate_folder(str(tmp_path), str(results))
    shutil.rmtree(out)
    out.write_text('replaced by a file')
    return scores, stq.format_table(scores)

  assert base.run_command(score_while_the_folder_goes, output) == 1
  captured = capsys.readouterr()
  assert 'STQ' in captured.out  # the table was printed
  assert captured.err.startswith(f'error: --output_json={output}: cannot be written')
  assert len(captured.err.splitlines()) == 1
  assert out.read_text() == 'replaced by a file'


@pytest.mark.parametrize(
  'things, message',
  [
    ('11,x', "error: --things=11,x: 'x' is not an integer class id"),
    ('11,19', 'error: --things=11,19: 19 is not a class of 0..18 (--num_classes=19)'),
  ],
)
def test_command_names_a_bad_thing_class(tmp_path, capsys, things, message):
  results = _write_step_folder(tmp_path, _rng())
  args = ['--step_root', str(tmp_path), '--results_dir', str(results), f'--things={things}']
  assert stq.main(args) == 1
  captured = capsys.readouterr()
  assert captured.err == message + '\n' and 'STQ' not in captured.out


def test_the_plug_in_equals_the_definitions_on_our_maps_and_merges():
  """Ground truth as the pipeline holds it (semantic = class + 1, void 0, a crowd flag, compact
  ids) scores as the STEP maps it came from."""
  rng = _rng()
  categories = [{'id': k, 'name': str(k), 'isthing': int(k in (PERSON, CAR))} for k in range(19)]
  names = ['0002', '0006', '0007']
  step_scores = {}
  evaluators = [registry.make_evaluators(['stq'], categories)[0] for _ in range(2)]
  for k, name in enumerate(names):
    gt_sem, gt_inst, pred_sem, pred_inst = _random_sequence(rng)
    sequence = stq.SequenceSTQ(19, (PERSON, CAR))
    for t in range(len(gt_sem)):
      sequence.add_frame(gt_sem[t], gt_inst[t], pred_sem[t], pred_inst[t])
    step_scores[name] = sequence.summary()
    ours = lambda sem: np.where(sem == VOID, 0, sem + 1)
    crowd = np.isin(gt_sem, (PERSON, CAR)) & (gt_inst == 0)
    compact = np.where(gt_sem == VOID, 0, gt_sem * 10 + gt_inst + 1)  # any ids per (class, id)
    ground_truth = np.stack([ours(gt_sem), compact, crowd.astype(np.int64)], axis=-1)
    prediction = base.Panoptic(ours(pred_sem), pred_inst)
    evaluators[k % 2].update(ground_truth, prediction, name)
  (merged,) = registry.make_evaluators(['stq'], categories)
  merged.merge([json.loads(json.dumps(e.state())) for e in evaluators])
  expected = stq.summarize(step_scores)
  results = merged.results()
  for key in ('STQ', 'AQ', 'IoU'):
    assert results.scalars[key] == pytest.approx(expected[key], abs=1e-12), key
  assert results.scalars['num_sequences'] == 3
  assert results.details['per_sequence'].keys() == expected['per_sequence'].keys()


def _our_maps(gt_sem, gt_inst, pred_sem, pred_inst):
  """STEP maps (class, 255 void; crowd = thing with id 0) -> the plug-in's (T, H, W, 3) ground
  truth [class + 1, id, crowd] and its Panoptic prediction."""
  ours = lambda sem: np.where(sem == VOID, 0, sem + 1)
  crowd = np.isin(gt_sem, (PERSON, CAR)) & (gt_inst == 0)
  ids = np.where(gt_sem == VOID, 0, gt_sem * 10 + gt_inst + 1)
  ground_truth = np.stack([ours(gt_sem), ids, crowd.astype(np.int64)], axis=-1)
  return ground_truth, base.Panoptic(ours(pred_sem), pred_inst)


def _assert_rows_close(actual: dict, expected: dict) -> None:
  """Per-sequence rows {name: {STQ, AQ, IoU, num_frames}} equal up to rounding."""
  assert actual.keys() == expected.keys()
  for name, row in expected.items():
    assert actual[name] == pytest.approx(row, abs=1e-12), name


def _switch_after(rng, first, frames, shape=(6, 8)):
  """A sequence of `frames` STEP frames: two cars on a random road / sky background, predicted
  exactly for the first `first` frames and with the cars' ids swapped after them."""
  gt_sem = rng.choice(np.array([ROAD, SKY]), size=(frames, *shape))
  gt_inst = np.zeros_like(gt_sem)
  gt_sem[:, 0, :2] = CAR
  gt_inst[:, 0, :2] = [1, 2]
  pred_inst = gt_inst.copy()
  pred_inst[first:, 0, :2] = [2, 1]
  return gt_sem, gt_inst, gt_sem.copy(), pred_inst


def test_only_the_first_frames_are_scored_and_all_frames_come_from_the_same_pass():
  """config.eval.max_frames_per_sequence = N: a track switch after frame N costs nothing in the
  headline STQ, AQ, IoU; with score_all_frames_too the whole clip of the same example gives the
  *_all_frames figures of the definitions over every frame."""
  from pix2seq_d.tasks import base as task_base

  rng = _rng()
  first = int(rng.integers(2, 5))
  lengths = {'0002': first + int(rng.integers(1, 4)), '0006': first + 3}
  categories = [{'id': k, 'name': str(k), 'isthing': int(k in (PERSON, CAR))} for k in range(19)]
  both = [
    registry.EVALUATORS['stq'](categories, max_frames=first, all_frames_too=True) for _ in range(2)
  ]
  truncating = registry.EVALUATORS['stq'](categories, max_frames=first)
  everything = {}
  for k, (name, length) in enumerate(lengths.items()):
    maps = _switch_after(rng, first, length)
    everything[name] = maps
    ground_truth, prediction = _our_maps(*maps)
    example = task_base.Example(
      example_id=name,
      name=name,
      prediction=base.Panoptic(*(m[:first] for m in prediction)),
      ground_truth=ground_truth[:first],
      all_frames=(ground_truth, prediction),
    )
    evaluator = both[k % 2]
    evaluator.update(example.ground_truth, evaluator.read(example), name)
    # Given the whole clip, an evaluator of N frames scores its first N.
    truncating.update(ground_truth, prediction, name)
  (merged,) = registry.make_evaluators(['stq'], categories)
  merged.max_frames, merged.all_frames_too = first, True
  merged.merge([json.loads(json.dumps(e.state())) for e in both])
  results = merged.results()
  assert results.scalars['STQ'] == 1.0 and results.scalars['AQ'] == 1.0
  assert truncating.results().scalars == {
    'STQ': 1.0,
    'AQ': 1.0,
    'IoU': 1.0,
    'num_sequences': 2,
  }
  assert all(row['num_frames'] == first for row in results.details['per_sequence'].values())
  names = [name for name in lengths for _ in range(lengths[name])]
  frames = [f for name in lengths for f in zip(*everything[name], strict=True)]
  expected = _score(frames, names)
  assert expected['STQ'] < 1.0
  for key in ('STQ', 'AQ', 'IoU'):
    assert results.scalars[f'{key}_all_frames'] == pytest.approx(expected[key], abs=1e-12), key
  _assert_rows_close(results.details['per_sequence_all_frames'], expected['per_sequence'])
  assert 'every frame:' in results.table


def test_command_scores_the_first_frames_as_the_evaluator(tmp_path, capsys):
  """--max_frames_per_sequence=N gives the evaluator's figures for N frames (later frames need
  no prediction); without it, every frame's."""
  rng = _rng()
  first = int(rng.integers(2, 4))
  categories = [{'id': k, 'name': str(k), 'isthing': int(k in (PERSON, CAR))} for k in range(19)]
  evaluator = registry.EVALUATORS['stq'](categories, max_frames=first, all_frames_too=True)
  for name, length in (('0002', first + 2), ('0006', first + 1)):
    maps = _switch_after(rng, first, length)
    maps = (*maps[:2], *_random_sequence(rng, length, (6, 8))[2:])  # predictions random too
    for k in range(length):
      for folder, (sem, inst) in (('panoptic_maps/val', maps[:2]), ('results', maps[2:])):
        step_png.write_step_png(str(tmp_path / folder / name / f'{k:06d}.png'), sem[k], inst[k])
    ground_truth, prediction = _our_maps(*maps)
    evaluator.update(ground_truth, (prediction, (ground_truth, prediction)), name)
  expected = evaluator.results()
  args = ['--step_root', str(tmp_path), '--results_dir', str(tmp_path / 'results')]
  assert stq.main([*args, '--output_json', str(tmp_path / 'all.json')]) == 0
  (tmp_path / 'results' / '0006' / f'{first:06d}.png').unlink()  # a frame not scored
  output = tmp_path / 'first.json'
  flag = f'--max_frames_per_sequence={first}'
  assert stq.main([*args, flag, '--output_json', str(output)]) == 0
  first_frames = json.loads(output.read_text())
  all_frames = json.loads((tmp_path / 'all.json').read_text())
  for key in ('STQ', 'AQ', 'IoU'):
    assert first_frames[key] == pytest.approx(expected.scalars[key], abs=1e-12), key
    assert all_frames[key] == pytest.approx(expected.scalars[f'{key}_all_frames'], abs=1e-12)
  _assert_rows_close(first_frames['per_sequence'], expected.details['per_sequence'])
  assert {row['num_frames'] for row in first_frames['per_sequence'].values()} == {first}
  capsys.readouterr()
  assert stq.main([*args, '--max_frames_per_sequence=-1']) == 1
  assert capsys.readouterr().err.startswith('error: --max_frames_per_sequence=-1: must be >= 0')


def _random_map(rng, shape):
  classes = rng.integers(0, 19, shape)
  classes[rng.uniform(size=shape) < 0.1] = 255
  return classes, rng.integers(0, 2**16, shape)


def test_the_stq_command_refuses_a_16_bit_prediction_naming_it(tmp_path):
  """The STEP reader's refusal (tests/test_formats.py) as the command meets it: exit 1, the file
  named."""
  rng = _rng()
  shape = (int(rng.integers(4, 20)), int(rng.integers(4, 20)))
  results = tmp_path / 'results'
  bad = (int(rng.integers(0, 2)), int(rng.integers(0, 3)))  # (sequence, frame) widened
  for s, sequence in enumerate(('0002', '0006')):
    for k in range(3):
      classes, instance = _random_map(rng, shape)
      frame = f'{k:06d}.png'
      gt_path = str(tmp_path / 'panoptic_maps/val' / sequence / frame)
      step_png.write_step_png(gt_path, classes, instance)
      prediction = results / sequence / frame
      step_png.write_step_png(str(prediction), classes, instance)
      if (s, k) == bad:
        rgb = np.stack([classes, instance // 256, instance % 256], axis=-1)
        write_png_16_bits(prediction, rgb)
        bad_path = prediction
  command = [sys.executable, '-m', 'pix2seq_d.evaluation.stq']
  command += ['--step_root', str(tmp_path), '--results_dir', str(results)]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stdout + result.stderr
  assert f'error: {bad_path}: a STEP panoptic map has 8 bits per channel' in result.stderr
  assert 'this file has 16' in result.stderr
