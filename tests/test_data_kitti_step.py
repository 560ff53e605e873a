"""KITTI-STEP-layout folders (data/kitti_step.py): conversion to canonical clips, bad input named
before training, re-preparation when a file changes, and a folder's own categories."""

import itertools
import json
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from processes import run
from step_layout import (
  CAR,
  PERSON,
  VOID,
  seeded_rng,
  step_config,
  write_map,
  write_png_16_bits,
  write_step_folder,
)

from pix2seq_d.data import kitti_step
from pix2seq_d.formats import step_png
from pix2seq_d.tasks.registry import get_task


def _decoded(source, split):
  dataset = source.builder.as_dataset(split=split).map(source.decode)
  return {example['video_name'].decode(): example for example in tfds.as_numpy(dataset)}


def test_sequences_become_clips_with_one_id_per_track_and_crowd_flagged(tmp_path):
  rng = seeded_rng()
  written = write_step_folder(tmp_path / 'step', rng)
  source = kitti_step.make_source(step_config(tmp_path / 'step', tmp_path / 'tfds'))
  assert source.clips and source.categories == kitti_step.CATEGORIES
  for name, example in _decoded(source, 'val').items():
    classes, instance = written['val'][name]
    void = classes == VOID
    np.testing.assert_array_equal(example['semantic'], np.where(void, 0, classes + 1))
    thing = np.isin(classes, (PERSON, CAR))
    np.testing.assert_array_equal(example['crowd'], (thing & (instance == 0)).astype(np.int32))
    # The map's own track ids, on tracked things only (config.data.instance_id_order='track').
    np.testing.assert_array_equal(example['track'], np.where(thing, instance, 0))
    # One id per (class, track) pair over the whole sequence, and only there.
    ours = example['instance']
    assert (ours[void] == 0).all() and (ours[~void] > 0).all()
    pairs = classes[~void] * 65536 + instance[~void]
    assert len(np.unique(pairs)) == len(np.unique(ours[~void]))
    for pair in np.unique(pairs):
      assert len(np.unique(ours[~void][pairs == pair])) == 1
    assert example['frames'].shape == classes.shape + (3,)


def _write_image(path, shape, rng):
  from PIL import Image

  Image.fromarray(rng.integers(0, 255, shape + (3,), dtype=np.uint8)).save(path)


def _widen_to_16_bits(path):
  """Rewrites a STEP map with the same values in 16 bits per channel (as a writer of uint16
  arrays stores them): Pillow would keep only the high bytes, all zero."""
  from PIL import Image

  write_png_16_bits(path, np.asarray(Image.open(path)).astype(np.uint16))


def _truncate(path, rng):
  """Cuts a PNG short at a random point after its header (its size stays readable)."""
  data = path.read_bytes()
  cut = int(rng.integers(40, len(data) - 12))
  print('cut', path, 'at', cut, 'of', len(data))
  path.write_bytes(data[:cut])


BAD_INPUTS = {
  'missing map': (
    lambda root, rng: (root / 'panoptic_maps/val/0002/000001.png').unlink(),
    '0002/000001.png: the panoptic map of this frame is missing',
  ),
  'map of another size': (
    lambda root, rng: write_map(
      str(root / 'panoptic_maps/val/0002/000002.png'), np.zeros((8, 8), int), np.zeros((8, 8), int)
    ),
    r'0002/000002.png: the map is \(8, 8\), its frame .*000002.png \(24, 40\)',
  ),
  'unknown class': (
    lambda root, rng: write_map(
      str(root / 'panoptic_maps/train/0001/000000.png'),
      np.full((20, 36), 42),
      np.zeros((20, 36), int),
    ),
    r'0001/000000.png: class 42 is neither a class of the folder \(0..18\) nor void \(255\)',
  ),
  'frames not numbered from 0': (
    lambda root, rng: (root / 'images/val/0006/000001.png').rename(
      root / 'images/val/0006/000009.png'
    ),
    r'0006/000002.png: frames must be numbered 000000.png, 000001.png, ... \(expected 000001.png',
  ),
  'map with 16 bits per channel': (
    lambda root, rng: _widen_to_16_bits(root / 'panoptic_maps/train/0000/000003.png'),
    '0000/000003.png: a STEP panoptic map has 8 bits per channel .*; this file has 16',
  ),
  'truncated frame': (
    lambda root, rng: _truncate(root / 'images/train/0001/000004.png', rng),
    r'0001/000004.png: cannot be decoded as a PNG \(',
  ),
  'frames of two sizes': (
    lambda root, rng: _write_image(root / 'images/val/0006/000002.png', (10, 10), rng),
    r'0006/000002.png: its size \(10, 10\) differs from the first frame of sequence 0006',
  ),
}


@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input_is_named_before_anything_trains(tmp_path, case):
  rng = seeded_rng()
  root = tmp_path / 'step'
  write_step_folder(root, rng)
  damage, message = BAD_INPUTS[case]
  damage(root, rng)
  with pytest.raises(ValueError, match=message):
    kitti_step.make_source(step_config(root, tmp_path / 'tfds'))
  # No half-prepared copy (nor a leftover of one) that a later run could take for the data.
  assert list(tmp_path.glob('tfds/step_folder/*/*')) == []


def test_a_changed_file_is_converted_again_and_test_has_no_maps(tmp_path):
  rng = seeded_rng()
  root = tmp_path / 'step'
  write_step_folder(root, rng)
  config = step_config(root, tmp_path / 'tfds')
  first = kitti_step.make_builder(config).builder_config.name
  assert kitti_step.make_builder(config).builder_config.name == first
  classes, instance = np.full((24, 40), CAR), np.full((24, 40), 3)
  write_map(str(root / 'panoptic_maps/val/0002/000000.png'), classes, instance)
  assert kitti_step.make_builder(config).builder_config.name != first
  config.data.eval_split = 'test'
  write_step_folder(root, rng, {'test': {'0003': (2, 24, 40)}})
  with pytest.raises(FileNotFoundError, match='test has none: use --mode=predict'):
    kitti_step.make_builder(config)


def test_a_short_training_sequence_is_named_and_gives_no_window(tmp_path, caplog):
  rng = seeded_rng()
  root = tmp_path / 'step'
  write_step_folder(
    root, rng, {'train': {'0000': (2, 24, 40), '0001': (4, 20, 36)}, 'val': {'0002': (3, 24, 40)}}
  )
  config = step_config(root, tmp_path / 'tfds')
  source = kitti_step.make_source(config)
  assert (
    'sequence 0000 of split train has 2 frames, fewer than config.data.video_window=3'
    in caplog.text
  )
  batch = next(get_task(config).train_iterator(source=source, process_index=0, process_count=1))
  assert batch['image'].shape == (2, 64, 208, 3) and batch['cond_label'].shape == (2, 32, 104, 4)


def _first_batch_or_error(iterator, timeout_s=300):
  """next(iterator), or the exception it raised; fails the test if it waits past timeout_s (the
  stream would otherwise hang the test run for ever)."""
  import threading

  outcome = []

  def take():
    try:
      outcome.append(next(iterator))
    except Exception as e:  # the outcome under test
      outcome.append(e)

  thread = threading.Thread(target=take, daemon=True)
  thread.start()
  thread.join(timeout_s)
  assert outcome, f'no batch and no error after {timeout_s} s: the training stream hangs'
  return outcome[0]


def test_a_split_without_any_window_stops_training_before_reading(tmp_path):
  rng = seeded_rng()
  root = tmp_path / 'step'
  short = int(rng.integers(1, 3))  # 1 or 2 frames, below the window of 3
  write_step_folder(
    root,
    rng,
    {'train': {'0000': (short, 24, 40), '0001': (2, 20, 36)}, 'val': {'0002': (3, 24, 40)}},
  )
  config = step_config(root, tmp_path / 'tfds')
  source = kitti_step.make_source(config)
  with pytest.raises(
    ValueError,
    match=r"config.data.train_split 'train' of 'kitti_step': its longest sequence has 2 frames, "
    r'fewer than config.data.video_window=3',
  ):
    get_task(config).train_iterator(source=source, process_index=0, process_count=1)


@pytest.mark.slow
def test_training_on_a_split_without_any_window_stops_at_start_and_frees_the_workdir(
  tmp_path, jax_cache
):
  rng = seeded_rng()
  root = tmp_path / 'step'
  frames = [int(rng.integers(1, 3)) for _ in range(3)]  # every sequence shorter than 3 frames
  train = {f'{k:04d}': (n, 24, 40) for k, n in enumerate(frames)}
  write_step_folder(root, rng, {'train': train, 'val': {'0009': (3, 24, 40)}})
  workdir = tmp_path / 'run'
  command = [
    sys.executable,
    '-m',
    'pix2seq_d.main',
    '--config=configs/kitti_step.py:runlocal',
    f'--workdir={workdir}',
    f'--config.data.step_root={root}',
    f'--config.data.data_dir={tmp_path / "tfds"}',
    '--config.data.num_parallel_calls=1',
  ]
  code, log = run(command, jax_cache)
  assert code != 0, log[-3000:]
  assert (
    f"config.data.train_split 'train' of 'kitti_step': its longest sequence has {max(frames)} "
    'frames, fewer than config.data.video_window=3'
  ) in log, log[-3000:]
  assert not (workdir / 'run.lock').exists()


def test_a_process_whose_share_has_no_window_stops_instead_of_waiting(tmp_path):
  import dataclasses

  rng = seeded_rng()
  root = tmp_path / 'step'
  write_step_folder(
    root, rng, {'train': {'0000': (5, 24, 40), '0001': (2, 24, 40)}, 'val': {'0002': (3, 24, 40)}}
  )
  config = step_config(root, tmp_path / 'tfds')
  source = kitti_step.make_source(config)
  # The split has a window (checked before reading); each of two processes reads one sequence.
  outcomes = [
    _first_batch_or_error(
      get_task(config).train_iterator(source=source, process_index=k, process_count=2)
    )
    for k in range(2)
  ]
  errors = [o for o in outcomes if isinstance(o, Exception)]
  assert len(errors) == 1, outcomes
  assert 'none holds config.data.video_window=3 frames' in str(errors[0])
  assert 'Frames in the longest:] [2]' in str(errors[0])
  # The same without the lengths (a source that does not know them) stops the same way.
  unknown = dataclasses.replace(source, clip_lengths={})
  config.data.video_window = 6
  error = _first_batch_or_error(
    get_task(config).train_iterator(source=unknown, process_index=0, process_count=1)
  )
  assert isinstance(error, Exception) and 'Frames in the longest:] [5]' in str(error)


def test_training_windows_decode_only_their_frames_and_equal_whole_clip_windows(tmp_path):
  import dataclasses
  import itertools

  rng = seeded_rng()
  root = tmp_path / 'step'
  write_step_folder(root, rng)
  config = step_config(root, tmp_path / 'tfds')
  config.data.train_crowd = 'segment'
  source = kitti_step.make_source(config)
  assert source.frame_keys  # windows are cut from the encoded sequence
  whole = dataclasses.replace(source, frame_keys=())  # decode whole sequences, then cut
  for position in (0, 5):
    streams = [
      get_task(config).train_iterator(
        source=s, process_index=0, process_count=1, start_position=position
      )
      for s in (source, whole)
    ]
    for ours, reference in itertools.islice(zip(*streams, strict=True), 4):
      assert ours.keys() == reference.keys()
      for key in ours:
        np.testing.assert_array_equal(ours[key], reference[key], err_msg=key)


def test_a_folder_with_its_own_classes(tmp_path):
  rng = seeded_rng()
  root = tmp_path / 'step'
  categories = [
    {'id': 3, 'name': 'ground', 'isthing': 0},
    {'id': 7, 'name': 'ball', 'isthing': 1},
  ]
  (root).mkdir()
  (root / 'categories.json').write_text(json.dumps(categories))
  for split in ('train', 'val'):
    for t in range(3):
      classes = np.full((8, 8), 3)
      classes[2:5, 2:5] = 7
      instance = np.where(classes == 7, 40 + t % 2, 0)  # two balls alternate
      write_map(str(root / f'panoptic_maps/{split}/0000/{t:06d}.png'), classes, instance)
      (root / f'images/{split}/0000').mkdir(parents=True, exist_ok=True)
      _write_image(root / f'images/{split}/0000/{t:06d}.png', (8, 8), rng)
  config = step_config(root, tmp_path / 'tfds')
  source = kitti_step.make_source(config)
  assert [c['name'] for c in source.categories] == ['ground', 'ball']
  example = _decoded(source, 'val')['0000']
  assert set(np.unique(example['semantic'])) == {1, 2}
  assert len(np.unique(example['instance'][example['semantic'] == 2])) == 2
  (root / 'categories.json').write_text(json.dumps([{'id': 300, 'name': 'x', 'isthing': 0}]))
  with pytest.raises(ValueError, match='id 300 must be a distinct class value in 0..254'):
    kitti_step.make_source(config)


def test_moving_shapes_are_written_in_the_step_layout_with_entering_tracks(tmp_path):
  from configs import shapes as shapes_configs
  from pix2seq_d.data import registry, shapes, shapes_step

  config = shapes_configs.get_config('video_panoptic')
  config.data.name = 'shapes_step/tiny'
  config.data.data_dir = str(tmp_path)
  # What a writer killed half-way leaves: its staging folder, removed by the next writer.
  killed = tmp_path / 'shapes_step' / 'tiny' / '.shapes-step-tmp-killed'
  (killed / 'images').mkdir(parents=True)
  (killed / 'categories.json').write_text('[')
  source = registry.get_source(config)
  assert sorted(os.listdir(tmp_path / 'shapes_step' / 'tiny')) == [shapes_step.VERSION]
  assert source.name == 'shapes_step/tiny' and source.categories == tuple(
    {k: c[k] for k in ('id', 'name', 'isthing', 'color')} for c in shapes.CATEGORIES
  )
  root = shapes_step.folder(config)
  lengths = source.builder.info.metadata['lengths']
  assert lengths == {
    'train': {'0000': 6, '0001': 6, '0002': 6, '0003': 6},
    'val': {'0000': 8, '0001': 8},
  }
  entered = 0
  for split, sequences in lengths.items():
    for name, frames in sequences.items():
      first = set()
      for t in range(frames):
        classes, instance = step_png.read_step_png(
          f'{root}/panoptic_maps/{split}/{name}/{t:06d}.png'
        )
        assert set(np.unique(classes)) <= {1, 2, 3, 4, 5}
        assert (instance[np.isin(classes, (4, 5))] == 0).all()  # stuff carries no track id
        tracks = set(np.unique(instance[instance > 0]).tolist())
        entered += len(tracks - first) if t else 0
        first |= tracks
  assert entered > 0  # some object enters after the first frame


def test_the_authors_training_ids_of_the_kitti_step_config(tmp_path):
  """configs/kitti_step.py trains on the ids of the authors' data/video.py (KittiStepDataset
  `extract`, then `process_instance_id_map` with object_order 'shuffle'):
  - semantic = class + 1, void (255) -> 0: `tf.where(semantic == ignore_label, 0, semantic + 1)`;
  - instance = the map's G * 256 + B (`panoptic % divisor`): 0 on stuff and on crowd (a car
    without a track id), which keep their class;
  - in training a track id i becomes p[i], p a shuffle of 1..(the window's largest track id), one
    shuffle for the window, so the conditioning frames carry the target frame's ids."""
  rng = seeded_rng()
  root = tmp_path / 'step'
  person, car = sorted(int(v) for v in rng.choice(np.arange(2, 40), size=2, replace=False))
  for split in ('train', 'val'):
    for t in range(4):
      classes = np.full((24, 36), 0)  # road
      classes[:8] = 10  # sky
      classes[:, -3:] = VOID
      instance = np.zeros_like(classes)
      classes[10:16, 4 + t : 12 + t], instance[10:16, 4 + t : 12 + t] = PERSON, person
      classes[10:16, 18:26], instance[10:16, 18:26] = CAR, car
      classes[18:, :8] = CAR  # a crowd of cars: a thing class, instance 0
      write_map(str(root / f'panoptic_maps/{split}/0000/{t:06d}.png'), classes, instance)
      (root / f'images/{split}/0000').mkdir(parents=True, exist_ok=True)
      _write_image(root / f'images/{split}/0000/{t:06d}.png', (24, 36), rng)
  config = step_config(root, tmp_path / 'tfds')
  config.diffusion.frames_dropout = 0.0
  assert (config.data.instance_id_order, config.data.train_crowd) == ('track', 'segment')
  stuff = {(0, 0), (1, 0), (11, 0), (CAR + 1, 0)}  # void, road, sky, the crowd of cars
  seen = set()
  iterator = get_task(config).train_iterator(process_index=0, process_count=1)
  for batch in itertools.islice(iterator, 6):
    for label, cond in zip(batch['label'], batch['cond_label'], strict=True):
      frames = [label, cond[..., :2], cond[..., 2:]]  # the target frame and the two before it
      pairs = {tuple(p) for frame in frames for p in frame.reshape(-1, 2).tolist()}
      things = pairs - stuff
      # One id per track over the window's frames, a distinct one, in 1..max(track id).
      assert {c for c, _ in things} == {PERSON + 1, CAR + 1} and len(things) == 2, things
      assert {i for _, i in things} <= set(range(1, car + 1)), (things, person, car)
      assert pairs >= stuff, pairs
      seen.update(i for _, i in things)
  # Ids come from 1..car (the largest track id), not only from 1..2 as a shuffle of the 2 tracks.
  assert max(seen) > 2, (seen, person, car)


def test_track_ids_are_refused_where_a_dataset_has_none(shapes_config):
  config = shapes_config('video')
  config.data.instance_id_order = 'track'
  config.eval.one_class_per_track = False
  with pytest.raises(ValueError, match="instance_id_order='track' .* 'shapes_video/tiny' has none"):
    get_task(config).train_iterator(process_index=0, process_count=1)
