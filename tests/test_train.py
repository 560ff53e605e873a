"""The program users run: `python -m pix2seq_d.main` end to end on the tiny shapes set.

Every test starts real processes (absl flags, TFDS, tf.data, orbax, clu writers); they share one
persistent compilation cache so that later runs reuse the first run's compiled steps.
"""

import json
import os
import shutil
import signal
import time

import numpy as np
import pytest
from PIL import Image
from processes import PATIENCE_S, ROOT, main_command, run, start


def _event_files(workdir):
  return {
    os.path.join(root, name)
    for root, _, files in os.walk(workdir)
    for name in files
    if 'tfevents' in name
  }


def _event_tags(workdir, skip=frozenset()):
  """{tag: sorted steps} of every summary in the workdir's TensorBoard event files."""
  from tensorboard.backend.event_processing import event_file_loader

  tags = {}
  for path in sorted(_event_files(workdir) - set(skip)):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  return {tag: sorted(steps) for tag, steps in tags.items()}


def _checkpoint_steps(workdir):
  from pix2seq_d.runtime import checkpoints

  return checkpoints.saved_steps(str(workdir))


@pytest.mark.slow
def test_train_eval_tensorboard_resume_and_predict(tmp_path, shapes_data_dir, jax_cache):
  workdir = tmp_path / 'run'
  code, log = run(
    main_command(
      workdir, shapes_data_dir, '--config.train.num_steps=6', '--config.train.checkpoint_every=3'
    ),
    jax_cache,
  )
  assert code == 0, log[-3000:]
  results = json.loads((workdir / 'eval_results.json').read_text())
  assert results['step'] == 6 and results['num_images'] == 4
  for key in ('PQ', 'SQ', 'RQ', 'PQ_th', 'PQ_st'):
    assert 0.0 <= results[key] <= 1.0, key
  tags = _event_tags(workdir)
  assert tags['train/loss'] == [2, 4, 6]
  assert 'eval/PQ' in tags and 'eval/input_gt_prediction' in tags and 'train/input_gt' in tags
  # The whole config is in the hparams, nested fields included.
  events = b''.join(open(path, 'rb').read() for path in _event_files(workdir))
  for field in (b'model.encoder.num_layers', b'diffusion.b_scale', b'data.scale_jitter'):
    assert field in events, field
  assert _checkpoint_steps(workdir) == [3, 6]
  # Each checkpoint records where the training stream stood: 4 examples a step, none skipped.
  positions = workdir / 'stream_positions'
  assert sorted(p.name for p in positions.iterdir()) == ['3', '6']
  assert json.loads((positions / '6' / '0_of_1.json').read_text()) == {'position': 24}

  # The same command with more steps resumes from step 6, continues the curve and the stream;
  # what differs from the config the run was trained with is said (log, TensorBoard text).
  code, log = run(
    main_command(
      workdir,
      shapes_data_dir,
      '--config.train.num_steps=8',
      '--config.train.checkpoint_every=3',
      '--config.train.microbatches=2',
    ),
    jax_cache,
  )
  assert code == 0, log[-3000:]
  assert 'Resumed from the checkpoint of step 6' in log
  assert 'differs from the one the run was trained with' in log
  assert 'train.microbatches: 1 -> 2' in log and 'train.num_steps: 6 -> 8' in log
  assert _event_tags(workdir)['config_changes'] == [6]
  assert json.loads((workdir / 'config.json').read_text())['train']['microbatches'] == 2
  assert 'from stream position 24' in log
  assert _event_tags(workdir)['train/loss'] == [2, 4, 6, 8]
  assert json.loads((positions / '8' / '0_of_1.json').read_text()) == {'position': 32}

  # Prediction on new images with the run's EMA weights.
  inputs = tmp_path / 'inputs'
  inputs.mkdir()
  rng = np.random.default_rng()
  for name, size in (('a', (48, 64)), ('b', (70, 50))):
    Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(inputs / f'{name}.png')
  (inputs / 'broken.jpg').write_bytes(b'\xff\xd8 not really a JPEG')
  out = tmp_path / 'predictions'
  code, log = run(
    main_command(
      workdir,
      shapes_data_dir,
      f'--config.predict.input={inputs}',
      f'--config.predict.output={out}',
      mode='predict',
    ),
    jax_cache,
  )
  assert code == 0, log[-3000:]
  # One unreadable image is skipped and reported; every readable one is written.
  assert '1 of 3 inputs could not be read' in log and str(inputs / 'broken.jpg') in log
  predictions = json.loads((out / 'panoptic.json').read_text())
  assert sorted(a['file_name'] for a in predictions['annotations']) == ['a.png', 'b.png']
  assert Image.open(out / 'panoptic' / 'b.png').size == (50, 70)
  assert Image.open(out / 'overlays' / 'a.png').size == (64, 48)


def _wait_for_checkpoint(workdir, proc, deadline):
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f'training ended early:\n{proc.stdout.read()[-3000:]}')
    if _checkpoint_steps(workdir):
      return
    time.sleep(1.0)
  raise AssertionError('no checkpoint appeared in time')


@pytest.mark.slow
def test_sigkill_then_resume_and_sigterm_saves(tmp_path, shapes_data_dir, jax_cache):
  workdir = tmp_path / 'run'
  long_run = main_command(
    workdir,
    shapes_data_dir,
    '--config.train.num_steps=100000',
    '--config.train.checkpoint_every=4',
    mode='train',
  )
  proc = start(long_run, jax_cache)
  try:
    _wait_for_checkpoint(workdir, proc, time.time() + PATIENCE_S)
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
  finally:
    proc.kill()
  killed_at = max(_checkpoint_steps(workdir))

  # SIGTERM: the resumed run saves the step it is at before exiting, although it is not a
  # multiple of checkpoint_every (1000).
  resumed = main_command(
    workdir,
    shapes_data_dir,
    '--config.train.num_steps=100000',
    '--config.train.checkpoint_every=1000',
    mode='train',
  )
  old_files = _event_files(workdir)
  proc = start(resumed, jax_cache)
  try:
    # Wait until the resumed run has logged twice (in its own event file).
    deadline = time.time() + PATIENCE_S
    while time.time() < deadline and len(_event_tags(workdir, old_files).get('train/loss', [])) < 2:
      assert proc.poll() is None, proc.stdout.read()[-3000:]
      time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 0, out[-3000:]
  assert f'Resumed from the checkpoint of step {killed_at}' in out
  saved = max(_checkpoint_steps(workdir))
  assert saved > killed_at + 2 and saved % 1000 != 0
  # The loss curve continues: the resumed run trains from the checkpoint and logs the steps
  # after the last one the killed run logged, so every step appears once in TensorBoard.
  logged_before = _event_tags(workdir, _event_files(workdir) - old_files)['train/loss']
  resumed_steps = _event_tags(workdir, old_files)['train/loss']
  assert logged_before[-1] >= killed_at
  assert resumed_steps[:2] == [logged_before[-1] + 2, logged_before[-1] + 4]
  steps = _event_tags(workdir)['train/loss']  # every file's events, duplicates kept
  assert len(steps) == len(set(steps)), steps


@pytest.mark.slow
def test_checkpoint_of_another_model_shape_is_refused(tmp_path, shapes_data_dir, jax_cache):
  common = ('--config.train.num_steps=2', '--config.train.checkpoint_every=2')
  code, log = run(main_command(tmp_path, shapes_data_dir, *common, mode='train'), jax_cache)
  assert code == 0, log[-3000:]
  code, log = run(
    main_command(
      tmp_path, shapes_data_dir, *common, '--config.model.denoiser.dim=24', mode='train'
    ),
    jax_cache,
  )
  assert code != 0
  assert 'denoiser' in log and 'shape' in log, log[-3000:]


@pytest.mark.slow
def test_two_processes_train_and_evaluate_in_lockstep(tmp_path, shapes_data_dir, jax_cache):
  """launch/local_multiprocess.sh: 2 processes joined by jax.distributed over localhost."""
  workdir = tmp_path / 'run'
  cmd = [
    'bash',
    os.path.join(ROOT, 'launch', 'local_multiprocess.sh'),
    '2',
    *main_command(
      workdir,
      shapes_data_dir,
      '--config.train.num_steps=2',
      '--config.train.checkpoint_every=2',
      '--config.eval.num_examples=6',
    )[3:],
  ]
  code, log = run(cmd, jax_cache)
  assert code == 0, log[-4000:]
  results = json.loads((workdir / 'eval_results.json').read_text())
  # 6 examples over 2 processes and global batches of 4: every example counted exactly once.
  assert results['num_images'] == 6 and results['step'] == 2
  assert _checkpoint_steps(workdir) == [2]


@pytest.mark.slow
def test_failed_checkpoint_write_ends_the_process(tmp_path, shapes_data_dir, jax_cache):
  """checkpoints/ turned into a file mid-run: orbax's write fails in its background threads,
  which used to keep the process alive, idle, forever. It must exit non-zero, promptly."""
  workdir = tmp_path / 'run'
  cmd = main_command(
    workdir,
    shapes_data_dir,
    '--config.train.num_steps=100000',
    '--config.train.checkpoint_every=20',
    mode='train',
  )
  proc = start(cmd, jax_cache)
  try:
    checkpoints = workdir / 'checkpoints'
    deadline = time.time() + PATIENCE_S
    while not checkpoints.is_dir() and proc.poll() is None and time.time() < deadline:
      time.sleep(0.5)
    assert checkpoints.is_dir(), 'the run never created its checkpoints folder'
    shutil.rmtree(checkpoints)
    checkpoints.write_text('not a folder')
    broken_at = time.time()
    log, _ = proc.communicate(timeout=PATIENCE_S)
  finally:
    proc.kill()
  assert proc.returncode == 1, log[-3000:]
  assert 'exiting with status 1' in log and 'checkpoints' in log
  print(f'exited {time.time() - broken_at:.0f} s after checkpoints/ broke')


def test_eval_of_an_empty_workdir_names_it_and_writes_nothing(tmp_path, shapes_data_dir, jax_cache):
  workdir = tmp_path / 'empty'
  code, log = run(main_command(workdir, shapes_data_dir, mode='eval'), jax_cache)
  assert code == 1
  assert f'--mode=eval: no checkpoint in {workdir}; train first.' in log
  assert log.count('Traceback') <= 1, log[-3000:]
  assert sorted(os.listdir(workdir)) == []


def test_only_the_steps_a_resumed_run_replays_are_skipped(tmp_path):
  """A run killed after logging steps 2-6 and checkpointing step 4: resumed at step 4 it skips
  what it replays (steps 5, 6) and writes step 4's evaluation again (e.g. on more images). (A
  new run on the same folder, its checkpoints deleted, wraps no writer: it writes every step.)"""
  from clu import metric_writers

  from pix2seq_d.loops import train

  first = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)
  for step in (2, 4, 6):
    first.write_scalars(step, {'train/loss': 1.0})
  first.write_scalars(4, {'eval/PQ': 0.1})
  first.close()

  resumed = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)
  writer = train.skip_replayed_summaries(resumed, str(tmp_path), start_step=4)
  writer.write_scalars(4, {'eval/PQ': 0.2})
  writer.write_scalars(6, {'train/loss': 1.0})
  writer.write_scalars(8, {'train/loss': 1.0})
  writer.close()
  tags = _event_tags(tmp_path)
  assert tags['eval/PQ'] == [4, 4] and tags['train/loss'] == [2, 4, 6, 8]


def test_resumed_writer_skips_exactly_the_summaries_already_logged(tmp_path):
  """A run killed while writing step 14's summaries left 'uptime' but not 'train/loss': the
  resumed run writes the loss of step 14 (dropping the whole step lost it) and nothing twice."""
  from clu import metric_writers

  from pix2seq_d.loops import train

  first = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)
  first.write_scalars(12, {'train/loss': 1.0, 'uptime': 5.0})
  first.write_scalars(14, {'uptime': 6.0})
  first.close()
  logged = train._logged_tags(str(tmp_path))
  assert logged == {12: {'train/loss', 'uptime'}, 14: {'uptime'}}

  resumed = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)
  writer = train._SkipLoggedSteps(resumed, logged)
  for step in (12, 14, 16):
    writer.write_scalars(step, {'train/loss': float(step), 'uptime': 7.0})
  writer.close()
  tags = _event_tags(tmp_path)
  assert tags['train/loss'] == [12, 14, 16] and tags['uptime'] == [12, 14, 16]
