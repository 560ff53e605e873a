"""The price-of-quality sweep: every point evaluated once into its own folder (the run's own
results untouched), a table and a plot made from those files, an interrupted sweep continued."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image
from processes import main_command, run

from pix2seq_d.tools import sampling_cost_report as sampling_cost


def test_sweep_orders_points_by_cost_and_names_each_once():
  points = sampling_cost.sweep([1, 4, 2], ['ddim', 'ddpm'], [1, 2], 2, 'ddim')
  names = [p.name for p in points]
  assert len(names) == len(set(names)) == 7  # ddim 2 steps x 1 sample is in both sweeps
  assert [p.cost for p in points] == sorted(p.cost for p in points)
  assert 'ddim_steps2_k2' in names and 'ddpm_steps4_k1' in names


def test_table_compares_k_samples_with_one_sample_at_the_same_passes(tmp_path):
  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  rng = np.random.default_rng(seed)
  pq = {name: float(rng.uniform(0.1, 0.9)) for name in ('ddim_steps4_k1', 'ddim_steps2_k2')}
  for name, value in pq.items():
    record = {'step': 5, 'PQ': value, 'examples_per_s': 3.0}
    if name.endswith('k2'):
      record['PQ_single'] = value / 2
    os.makedirs(tmp_path / name)
    (tmp_path / name / 'eval_results.json').write_text(json.dumps(record))
  rows = sampling_cost.report(str(tmp_path)).splitlines()[2:]
  assert len(rows) == 2
  k2 = [row for row in rows if row.startswith('| ddim | 2 | 2 |')][0].split('|')
  assert float(k2[5]) == pytest.approx(pq['ddim_steps2_k2'], abs=5e-4)
  assert float(k2[6]) == pytest.approx(pq['ddim_steps2_k2'] / 2, abs=5e-4)
  assert float(k2[7]) == pytest.approx(pq['ddim_steps4_k1'], abs=5e-4)  # 4 passes each
  assert Image.open(tmp_path / sampling_cost.PLOT).size[0] > 0


@pytest.mark.slow
def test_a_sweep_of_a_trained_run_writes_every_point_and_continues(
  tmp_path, shapes_data_dir, jax_cache
):
  workdir = tmp_path / 'run'
  rc, out = run(
    main_command(workdir, shapes_data_dir, '--config.train.num_steps=2', mode='train'), jax_cache
  )
  assert rc == 0, out[-3000:]
  own = (
    (workdir / 'eval_results.json').read_text()
    if (workdir / 'eval_results.json').exists()
    else None
  )
  flags = [a for a in main_command(workdir, shapes_data_dir) if a.startswith('--config')]
  sweep = [
    sys.executable, '-m', 'pix2seq_d.tools.sampling_cost', *flags,
    f'--workdir={workdir}', f'--output_dir={tmp_path / "cost"}', '--steps=1',
    '--samplers=ddim,ddpm', '--num_samples=1,2', '--samples_steps=1',
  ]  # fmt: skip
  rc, out = run(sweep, jax_cache)
  assert rc == 0, out[-3000:]
  names = sorted(p.name for p in (tmp_path / 'cost').iterdir() if p.is_dir())
  # configs/shapes.py samples with DDPM: the K-samples sweep takes the config's sampler
  assert names == ['ddim_steps1_k1', 'ddpm_steps1_k1', 'ddpm_steps1_k2']
  k2 = json.loads((tmp_path / 'cost' / 'ddpm_steps1_k2' / 'eval_results.json').read_text())
  assert 0.0 <= k2['PQ'] <= 1.0 and 'PQ_single' in k2 and k2['num_images'] == 4
  table = (tmp_path / 'cost' / sampling_cost.TABLE).read_text()
  assert table.count('\n') == 2 + len(names)
  own_now = (
    (workdir / 'eval_results.json').read_text()
    if (workdir / 'eval_results.json').exists()
    else None
  )
  assert own_now == own  # the run's own results are not touched
  stamps = {n: os.path.getmtime(tmp_path / 'cost' / n / 'eval_results.json') for n in names}
  os.remove(tmp_path / 'cost' / 'ddpm_steps1_k1' / 'eval_results.json')
  rc, out = run(sweep, jax_cache)
  assert rc == 0, out[-3000:]
  for name in names:
    again = os.path.getmtime(tmp_path / 'cost' / name / 'eval_results.json')
    assert (again != stamps[name]) == (name == 'ddpm_steps1_k1'), name
