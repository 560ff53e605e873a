"""Preparing a folder into a TFDS copy (data/source.py, through the KITTI-STEP-layout builder): the
copy's key follows every file read, linked folders included, and a preparation killed half-way
leaves nothing that stays once the next one is done, while two at once do not disturb each other."""

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from processes import PATIENCE_S, ROOT, process_env, start
from step_layout import CAR, seeded_rng, step_config, write_map, write_step_folder

from pix2seq_d.data import kitti_step


def _labels(classes):
  """The semantic labels of STEP classes: class + 1, void (255) 0."""
  return np.where(classes == 255, 0, classes + 1)


def _semantic(source, split, name):
  dataset = source.builder.as_dataset(split=split).map(source.decode)
  examples = {e['video_name'].decode(): e for e in tfds.as_numpy(dataset)}
  return examples[name]['semantic']


def test_a_frame_changed_inside_a_linked_sequence_folder_is_prepared_again(tmp_path):
  rng = seeded_rng()
  root = tmp_path / 'step'
  written = write_step_folder(root, rng)
  # Sequence 0002 of val lives elsewhere; the split links to it, twice (two links to one folder
  # are no cycle).
  elsewhere = tmp_path / 'elsewhere'
  for kind in ('images', 'panoptic_maps'):
    (elsewhere / kind).mkdir(parents=True)
    shutil.move(root / kind / 'val' / '0002', elsewhere / kind / '0002')
    for name in ('0002', '0003'):
      (root / kind / 'val' / name).symlink_to(elsewhere / kind / '0002', target_is_directory=True)
  config = step_config(root, tmp_path / 'tfds')
  first = kitti_step.make_source(config)
  classes, _ = written['val']['0002']
  np.testing.assert_array_equal(_semantic(first, 'val', '0002'), _labels(classes))

  frame = int(rng.integers(0, len(classes)))
  new_classes = np.full(classes.shape[1:], CAR)
  write_map(
    str(elsewhere / 'panoptic_maps' / '0002' / f'{frame:06d}.png'),
    new_classes,
    np.full(classes.shape[1:], 7),
  )
  second = kitti_step.make_source(config)
  assert second.builder.builder_config.name != first.builder.builder_config.name
  for name in ('0002', '0003'):
    semantic = _semantic(second, 'val', name)
    np.testing.assert_array_equal(semantic[frame], new_classes + 1)  # the new content is read
    np.testing.assert_array_equal(
      np.delete(semantic, frame, 0), np.delete(_labels(classes), frame, 0)
    )


def test_a_link_cycle_is_refused_naming_the_link(tmp_path):
  rng = seeded_rng()
  root = tmp_path / 'step'
  write_step_folder(root, rng)
  split = str(rng.choice(['train', 'val']))
  sequence = sorted(os.listdir(root / 'images' / split))[0]
  link = root / 'images' / split / sequence / 'again'
  link.symlink_to(root / 'images', target_is_directory=True)  # walks back into the split
  target = os.path.realpath(root / 'images')
  message = f'{re.escape(str(link))}: a link to {re.escape(target)}, which holds .*a link cycle'
  with pytest.raises(ValueError, match=message):
    kitti_step.make_builder(step_config(root, tmp_path / 'tfds'))


# A preparation held after its first sequence, as if slow, until it is killed.
_HELD_PREPARATION = """
import pathlib, sys, time
from configs import kitti_step as kitti_configs
from pix2seq_d.data import kitti_step

build = kitti_step._build_sequence
def held(*args, **kwargs):
  example = build(*args, **kwargs)
  pathlib.Path(sys.argv[3]).touch()
  time.sleep(3600)
  return example
if sys.argv[3] != '-':
  kitti_step._build_sequence = held
config = kitti_configs.get_config('runlocal')
config.data.step_root, config.data.data_dir = sys.argv[1], sys.argv[2]
source = kitti_step.make_source(config)
print('source ready:', source.builder.data_dir, flush=True)
"""


def _lines_of(process) -> queue.Queue:
  """The lines a process writes, as they come (None at its end)."""
  lines = queue.Queue()

  def pump():
    for line in process.stdout:
      lines.put(line)
    lines.put(None)

  threading.Thread(target=pump, daemon=True).start()
  return lines


def _wait_for_line(lines: queue.Queue, text: str, log: list[str]) -> None:
  deadline = time.monotonic() + PATIENCE_S
  while True:
    line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
    assert line is not None, f'the process ended without printing {text!r}:\n' + ''.join(log)
    log.append(line)
    if text in line:
      return


@pytest.mark.slow
def test_a_preparation_killed_half_way_leaves_nothing_once_the_next_is_done(tmp_path, jax_cache):
  rng = seeded_rng()
  root, data_dir, marker = tmp_path / 'step', tmp_path / 'tfds', tmp_path / 'held'
  written = write_step_folder(root, rng)
  command = [sys.executable, '-c', _HELD_PREPARATION, str(root), str(data_dir)]
  # Its output goes to a file: a pipe nobody reads could fill and stall it.
  with open(tmp_path / 'killed.log', 'w') as killed_log:
    killed = subprocess.Popen(
      [*command, str(marker)],
      cwd=ROOT,
      env=process_env(jax_cache),
      stdout=killed_log,
      stderr=subprocess.STDOUT,
    )
  waiting = None
  try:
    deadline = time.monotonic() + PATIENCE_S
    while not marker.exists():
      assert killed.poll() is None, (tmp_path / 'killed.log').read_text()[-3000:]
      assert time.monotonic() < deadline, 'the preparation never got under way'
      time.sleep(0.1)
    config_dirs = list(data_dir.glob('step_folder/root_*'))
    assert len(config_dirs) == 1
    config_dir = config_dirs[0]
    leftovers = list(config_dir.glob('incomplete.*'))
    assert len(leftovers) == 1, os.listdir(config_dir)

    # A second preparation meanwhile waits for the first; it must not take the live writer's
    # folder for a leftover.
    waiting = start([*command, '-'], jax_cache)
    lines, log = _lines_of(waiting), []
    _wait_for_line(lines, 'Waiting for another process that prepares this dataset', log)
    time.sleep(1.0)
    assert waiting.poll() is None and leftovers[0].is_dir()

    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    _wait_for_line(lines, 'left by a preparation that was killed', log)
    _wait_for_line(lines, 'source ready:', log)
    assert waiting.wait(timeout=PATIENCE_S) == 0, ''.join(log)[-3000:]
  finally:
    for process in (killed, waiting):
      if process is not None:
        if process.poll() is None:
          process.kill()
        process.wait()
    if waiting is not None:
      waiting.stdout.close()

  version = str(kitti_step.StepFolder.VERSION)
  assert sorted(os.listdir(config_dir)) == [version]  # no leftover, no lock file
  source = kitti_step.make_source(step_config(root, data_dir))
  assert os.fspath(source.builder.data_dir) == os.fspath(config_dir / version)
  for split, sequences in written.items():
    for name, (classes, _) in sequences.items():
      np.testing.assert_array_equal(_semantic(source, split, name), _labels(classes))
