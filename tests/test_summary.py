"""`--mode=summary` on the COCO config (remat on, as shipped): parameters and FLOPs by part; and
on the Cityscapes config, which knows its class count without the data."""

import re
import sys

from processes import run

from configs import coco
from pix2seq_d.tools import summary


def test_coco_summary_counts_parameters_and_flops_by_part():
  text = summary.model_summary(coco.get_config())
  assert text.splitlines()[-1] == 'total params: 94492480'
  parts = dict(re.findall(r'(\w+) ([\d,]+\.\d)', text.split('by part: ')[1].splitlines()[0]))
  flops = {name: float(value.replace(',', '')) for name, value in parts.items()}
  assert set(flops) == {
    'resnet',
    'encoder_transformer',
    'fusion',
    'transunet_convs',
    'transunet_transformer',
    'attention_core',
  }
  # The parts of one encoder pass and one denoiser step add up to the two totals printed above.
  encoder, denoiser = (
    float(v.replace(',', ''))
    for v in re.findall(r'encoder ([\d,.]+), denoiser step ([\d,.]+)', text)[0]
  )
  assert abs(flops['resnet'] + flops['encoder_transformer'] + flops['fusion'] - encoder) < 1.0
  assert abs(flops['transunet_convs'] + flops['transunet_transformer'] - denoiser) < 0.2


def test_cityscapes_summary_needs_no_data(tmp_path, jax_cache):
  """configs/cityscapes.py sets its 19 classes + void, so --mode=summary runs without a dataset
  (the tiny :runlocal model keeps it quick; the class count is the full config's)."""
  command = [
    sys.executable,
    '-m',
    'pix2seq_d.main',
    '--config=configs/cityscapes.py:runlocal',
    f'--workdir={tmp_path / "run"}',
    '--mode=summary',
  ]
  code, log = run(command, jax_cache)
  assert code == 0, log[-3000:]
  assert 'image (64, 128), mask (32, 64)' in log
  # The summary is stdout (first in `log`), the log lines stderr.
  assert any(line.startswith('total params: ') for line in log.splitlines())
