"""Video panoptic segmentation from the command line: configs/kitti_step.py:runlocal trains,
evaluates STQ and the per-frame PQ, writes KITTI-STEP maps that the STQ command scores exactly as
the loop did, and predicts on the unlabelled test frames; the full config's summary."""

import json
import subprocess
import sys

import numpy as np
import pytest
from processes import ROOT, process_env, run
from step_layout import write_step_folder

from pix2seq_d.formats import step_png


def _kitti_command(workdir, step_root, data_dir, *overrides, mode='train_and_eval'):
  return [
    sys.executable,
    '-m',
    'pix2seq_d.main',
    '--config=configs/kitti_step.py:runlocal',
    f'--workdir={workdir}',
    f'--mode={mode}',
    f'--config.data.step_root={step_root}',
    f'--config.data.data_dir={data_dir}',
    '--config.data.num_parallel_calls=1',
    *overrides,
  ]


@pytest.mark.slow
def test_kitti_step_runlocal_trains_scores_stq_like_the_command_and_predicts(tmp_path, jax_cache):
  seed = int(np.random.SeedSequence().entropy % 2**31)
  print('seed', seed)
  rng = np.random.default_rng(seed)
  root = tmp_path / 'step'
  write_step_folder(root, rng)
  write_step_folder(root, rng, {'test': {'0003': (3, 24, 40)}})
  workdir = tmp_path / 'run'
  code, log = run(
    _kitti_command(workdir, root, tmp_path / 'tfds', '--config.eval.write_predictions=True'),
    jax_cache,
  )
  assert code == 0, log[-3000:]
  results = json.loads((workdir / 'eval_results.json').read_text())
  assert results['step'] == 4 and results['num_sequences'] == 2
  assert results['num_images'] == 5 + 3  # the per-frame PQ: frames of the two val sequences
  for key in ('STQ', 'AQ', 'IoU', 'PQ'):
    assert 0.0 <= results[key] <= 1.0, key
  assert set(results['stq']['per_sequence']) == {'0002', '0006'}

  # The STQ command on the loop's own predictions gives the loop's figures.
  predictions = workdir / 'predictions' / 'step_4'
  assert sorted(p.name for p in (predictions / '0006').glob('??????.png')) == [
    f'{k:06d}.png' for k in range(3)
  ]
  output = tmp_path / 'stq.json'
  command = [
    sys.executable,
    '-m',
    'pix2seq_d.evaluation.stq',
    f'--step_root={root}',
    '--split=val',
    f'--results_dir={predictions}',
    f'--output_json={output}',
  ]
  proc = subprocess.run(
    command, cwd=ROOT, env=process_env(jax_cache), capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  scores = json.loads(output.read_text())
  for key in ('STQ', 'AQ', 'IoU'):
    assert scores[key] == pytest.approx(results[key], abs=1e-12), key
  for name, row in scores['per_sequence'].items():
    assert row['STQ'] == pytest.approx(results['stq']['per_sequence'][name]['STQ'], abs=1e-12)

  # --mode=predict on the unlabelled test sequences (a folder of frame folders).
  out = tmp_path / 'out'
  code, log = run(
    _kitti_command(
      workdir,
      root,
      tmp_path / 'tfds',
      f'--config.predict.input={root / "images" / "test"}',
      f'--config.predict.output={out}',
      mode='predict',
    ),
    jax_cache,
  )
  assert code == 0, log[-3000:]
  classes, instance = step_png.read_step_png(str(out / '0003' / '000002.png'))
  assert classes.shape == (24, 40)
  assert set(np.unique(classes)) <= set(range(19)) | {255}


def test_the_full_config_summary_at_384x1248(jax_cache):
  code, log = run(
    [sys.executable, '-m', 'pix2seq_d.main', '--config=configs/kitti_step.py', '--mode=summary'],
    jax_cache,
  )
  assert code == 0, log[-3000:]
  assert 'image (384, 1248), mask (192, 624)' in log
  # The summary is stdout (first in `log`), the log lines stderr.
  (total,) = [
    int(line.split(': ')[1]) for line in log.splitlines() if line.startswith('total params: ')
  ]
  assert 94_000_000 < total < 95_500_000  # the COCO model + 32 conditioning input channels
