"""`--mode=summary` on the COCO config (remat on, as shipped): parameters and FLOPs by part."""

import re

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
