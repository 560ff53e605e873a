"""Cityscapes through `coco_folder`: a tiny gtFine folder converted by the real cityscapesscripts
package (csCreatePanopticImgs --use-train-id), arranged as README "Cityscapes" says, trained and
evaluated a few steps with configs/cityscapes.py:runlocal."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from processes import process_env, run

CITIES = {'train': ('aachen', 2), 'val': ('frankfurt', 2)}
# Cityscapes label ids (not train ids) of the instanceIds PNGs.
ROAD, SKY, PERSON, CAR, UNLABELED = 7, 23, 24, 26, 0


def _instance_ids(rng, height=32, width=64):
  """A Cityscapes *_instanceIds.png array: stuff and crowd as label ids, instances as
  label * 1000 + k."""
  ids = np.full((height, width), ROAD, np.int32)
  ids[: height // 3] = SKY
  for k in range(int(rng.integers(1, 4))):
    top, left = 12 + 3 * k, int(rng.integers(0, width - 12))
    ids[top : top + 6, left : left + 10] = CAR * 1000 + k
  ids[-4:, :6] = PERSON  # a crowd of people
  ids[:2, :] = UNLABELED
  return ids


def write_gtfine(root, rng):
  for split, (city, count) in CITIES.items():
    for k in range(count):
      stem = f'{city}_000000_{k:06d}'
      gt_dir = root / 'gtFine' / split / city
      image_dir = root / 'leftImg8bit' / split / city
      gt_dir.mkdir(parents=True, exist_ok=True)
      image_dir.mkdir(parents=True, exist_ok=True)
      Image.fromarray(_instance_ids(rng).astype(np.uint16)).save(
        gt_dir / f'{stem}_gtFine_instanceIds.png'
      )
      Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(
        image_dir / f'{stem}_leftImg8bit.png'
      )


def arrange_coco_layout(cityscapes, coco):
  """README "Cityscapes": the converter's JSON and PNG folder and the images, one folder each,
  the images under the names the converter's JSON gives them (<stem>_gtFine_leftImg8bit.png)."""
  (coco / 'annotations').mkdir(parents=True)
  for split in CITIES:
    gt = cityscapes / 'gtFine'
    os.symlink(
      gt / f'cityscapes_panoptic_{split}_trainId.json',
      coco / 'annotations' / f'panoptic_{split}.json',
    )
    os.symlink(
      gt / f'cityscapes_panoptic_{split}_trainId', coco / 'annotations' / f'panoptic_{split}'
    )
    (coco / split).mkdir()
    for city in os.listdir(cityscapes / 'leftImg8bit' / split):
      for name in os.listdir(cityscapes / 'leftImg8bit' / split / city):
        json_name = name.replace('_leftImg8bit.png', '_gtFine_leftImg8bit.png')
        os.symlink(cityscapes / 'leftImg8bit' / split / city / name, coco / split / json_name)


@pytest.mark.slow
def test_cityscapes_converted_by_cityscapesscripts_trains_and_evaluates(tmp_path, jax_cache):
  seed = int(np.random.SeedSequence().entropy % 2**31)
  print('seed', seed)
  rng = np.random.default_rng(seed)
  cityscapes, coco = tmp_path / 'cityscapes', tmp_path / 'cs_coco'
  write_gtfine(cityscapes, rng)
  convert = [
    sys.executable,
    '-m',
    'cityscapesscripts.preparation.createPanopticImgs',
    f'--dataset-folder={cityscapes / "gtFine"}',
    '--use-train-id',
    '--set-names',
    'train',
    'val',
  ]
  proc = subprocess.run(convert, capture_output=True, text=True, env=process_env(jax_cache))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  arrange_coco_layout(cityscapes, coco)

  workdir = tmp_path / 'run'
  code, log = run(
    [
      sys.executable,
      '-m',
      'pix2seq_d.main',
      '--config=configs/cityscapes.py:runlocal',
      f'--workdir={workdir}',
      f'--config.data.coco_root={coco}',
      f'--config.data.data_dir={tmp_path / "tfds"}',
      '--config.data.num_parallel_calls=1',
    ],
    jax_cache,
  )
  assert code == 0, log[-3000:]
  categories = json.loads((workdir / 'categories.json').read_text())
  assert [c['id'] for c in categories] == list(range(19))  # the train ids
  assert {c['name'] for c in categories if c['isthing']} >= {'person', 'car'}
  # configs/cityscapes.py's class count (void + the 19 train ids) is the JSON's: no other taken.
  assert json.loads((workdir / 'config.json').read_text())['model']['num_classes'] == 20
  assert 'config.model.num_classes=0' not in log
  results = json.loads((workdir / 'eval_results.json').read_text())
  assert results['step'] == 4 and results['num_images'] == 2
  assert 0.0 <= results['PQ'] <= 1.0
