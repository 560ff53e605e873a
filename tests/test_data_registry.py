"""config.data.name -> the dataset module (registry.py), and the input benchmark command."""

import re
import subprocess
import sys

import pytest
from processes import ROOT

from configs import coco
from pix2seq_d.data import registry

SAMPLE_ROOT = f'{ROOT}/tests/data/coco_panoptic_sample'


def test_names_select_their_sources(shapes_config, tmp_path):
  assert registry.get_source(shapes_config()).name == 'shapes/tiny'
  assert registry.get_source(shapes_config('video')).clips
  # A COCO-format folder replaces a TFDS COCO name: the folder is what the user pointed at.
  config = coco.get_config()
  config.data.coco_root = SAMPLE_ROOT
  config.data.train_split = config.data.eval_split = 'val2017'
  config.data.data_dir = str(tmp_path)
  source = registry.get_source(config)
  assert source.name == 'coco_folder' and len(source.categories) == 133
  config.data.name = ''
  with pytest.raises(ValueError, match='config.data.name is empty'):
    registry.get_source(config)


def test_input_benchmark_prints_both_rates(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'pix2seq_d.data.benchmark',
      '--config=configs/coco.py:runlocal',
      '--steps=2',
      '--warmup=1',
      '--batch_size=2',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  rows = re.findall(
    r'^\| (decode|train pipeline)[^|]*\|\s+(\d+) \|\s+([\d.]+) \|\s+([\d.]+) \|',
    result.stdout,
    re.M,
  )
  assert [row[0] for row in rows] == ['decode', 'train pipeline'], result.stdout
  for _, examples, seconds, rate in rows:
    assert int(examples) == 4 and float(seconds) > 0 and float(rate) > 0
