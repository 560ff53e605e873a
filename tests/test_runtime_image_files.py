"""The one KITTI-STEP map reader (runtime/image_files.py) as the STQ command meets it: an 8-bit RGB
map reads back exactly, a map with 16 bits per channel is refused naming the file (dataset
preparation meets the same reader: tests/test_data_kitti_step.py's bad-input table)."""

import subprocess
import sys

import numpy as np
import pytest
from processes import ROOT
from step_layout import write_png_16_bits

from pix2seq_d.evaluation import stq
from pix2seq_d.runtime import image_files


def _rng():
  seed = int(np.random.SeedSequence().entropy % 2**32)
  print('seed', seed)
  return np.random.default_rng(seed)


def _random_map(rng, shape):
  classes = rng.integers(0, 19, shape)
  classes[rng.uniform(size=shape) < 0.1] = 255
  return classes, rng.integers(0, 2**16, shape)


def test_an_8_bit_map_reads_back_and_a_16_bit_one_is_refused_naming_it(tmp_path):
  rng = _rng()
  shape = tuple(int(v) for v in rng.integers(3, 40, 2))
  classes, instance = _random_map(rng, shape)
  eight = str(tmp_path / 'eight.png')
  stq.write_step_png(eight, classes, instance)
  read_classes, read_instance = image_files.read_step_png(eight)
  np.testing.assert_array_equal(read_classes, classes)
  np.testing.assert_array_equal(read_instance, instance)
  # The same values widened to 16 bits per channel: Pillow keeps their (zero) high bytes.
  sixteen = tmp_path / 'sixteen.png'
  write_png_16_bits(sixteen, np.stack([classes, instance // 256, instance % 256], axis=-1))
  with pytest.raises(ValueError, match=f'{sixteen}: .*8 bits per channel.*this file has 16'):
    image_files.read_step_png(str(sixteen))


def test_the_stq_command_refuses_a_16_bit_prediction_naming_it(tmp_path):
  rng = _rng()
  shape = (int(rng.integers(4, 20)), int(rng.integers(4, 20)))
  results = tmp_path / 'results'
  bad = (int(rng.integers(0, 2)), int(rng.integers(0, 3)))  # (sequence, frame) widened
  for s, sequence in enumerate(('0002', '0006')):
    for k in range(3):
      classes, instance = _random_map(rng, shape)
      frame = f'{k:06d}.png'
      stq.write_step_png(str(tmp_path / 'panoptic_maps/val' / sequence / frame), classes, instance)
      prediction = results / sequence / frame
      stq.write_step_png(str(prediction), classes, instance)
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
