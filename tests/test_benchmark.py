"""`python -m pix2seq_d.tools.benchmark` and the GPU suite on CPU: figures, JSON layout, no
TensorFlow or clu."""

import json
import os
import subprocess
import sys

import pytest

from configs import shapes
from pix2seq_d.tools import benchmark, summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Installed on the path of the benchmark's process: importing any of these fails, as on the lent
# GPU image where none of them exists.
BLOCKER = """
import importlib.abc, sys
BLOCKED = ('tensorflow', 'tensorflow_datasets', 'clu')
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED:
      raise ImportError(f'{name} is not installed here (blocked by the benchmark test)')
    return None
sys.meta_path.insert(0, _Block())
"""
TRAIN_KEYS = {
  'batch',
  'compile_s',
  'step_s_median',
  'img_per_s',
  'tflop_per_img',
  'tflop_per_s',
  'mfu',
  'peak_mem_gib',
}
SAMPLE_KEYS = {'batch', 'steps', 'compile_s', 'img_per_s', 'ms_per_img'}


def _run_without_tensorflow(tmp_path, module: str, *args: str) -> subprocess.CompletedProcess:
  """`python -m module args` with TensorFlow, TFDS and clu impossible to import, as on the GPU
  image."""
  (tmp_path / 'sitecustomize.py').write_text(BLOCKER)
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    PYTHONPATH=os.pathsep.join([str(tmp_path), REPO, os.environ.get('PYTHONPATH', '')]),
  )
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )


def test_memory_plan_runs_without_tensorflow(tmp_path):
  """The benchmark command (its train and sample parts run in the GPU suite's test below): the
  memory plan of a batch in microbatches, as table and JSON."""
  output = tmp_path / 'bench.json'
  result = _run_without_tensorflow(
    tmp_path,
    'pix2seq_d.tools.benchmark',
    '--config=configs/shapes.py:tiny',
    '--config.train.batch_size=8',
    '--config.train.microbatches=4',
    '--parts=memory',
    '--compile_memory=false',
    f'--output_json={output}',
  )
  assert result.returncode == 0, result.stderr[-4000:]
  assert 'memory  batch 8 in 4 microbatch(es)' in result.stdout
  report = json.loads(output.read_text())
  memory = report['memory']
  assert report['device_kind'] == 'cpu' and memory['batch'] == 8 and memory['microbatches'] == 4
  assert memory['state_gib'] > 0 and memory['batch_gib'] > 0 and memory['residual_gib'] > 0


@pytest.mark.slow
def test_gpu_suite_runs_on_cpu_writing_a_file_per_part(tmp_path):
  """The GPU suite on the tiny config: every part in its own JSON, the table last, no
  TensorFlow; a deadline already spent skips the optional parts instead of running them."""
  out = tmp_path / 'suite'
  result = _run_without_tensorflow(
    tmp_path,
    'pix2seq_d.tools.gpu_suite',
    f'--output_dir={out}',
    '--config=configs/shapes.py:tiny',
    '--batch=2',
    '--train_steps=3',
    '--deadline_s=1',
  )
  assert result.returncode == 0, result.stderr[-4000:]
  parts = {p.stem: json.loads(p.read_text()) for p in out.glob('*.json')}
  assert set(parts) == {
    'environment',
    'attention',
    'train_batch2',
    'sample_batch2',
    'train_batch4',
    'train_batch2_encoder_remat_none',
  }
  assert parts['environment']['device_kind'] == 'cpu'
  checks = parts['attention']['checks']
  assert {(c['site'], c['multiple']) for c in checks} == {
    (site, multiple)
    for site in (
      'bottleneck self-attention',
      'bottleneck cross-attention',
      'encoder self-attention',
    )
    for multiple in (64, 128)
  }
  tiny = shapes.get_config('tiny').model
  bottleneck = checks[0]
  # The tiny denoiser's 16x16 mask goes down 3 times: 2x2 tokens and the time token.
  assert bottleneck['query_tokens'] == 5 and bottleneck['head_dim'] == 16
  assert checks[-1]['heads'] == tiny.encoder.num_heads
  for check in checks:  # float32 on CPU: the padded path equals the reference closely
    assert check['error'] is None and not check['nan'], check
    assert check['forward_max_rel_err'] < 1e-5
    assert max(check['grad_max_rel_err'].values()) < 1e-4
  train, sample = parts['train_batch2'], parts['sample_batch2']
  assert TRAIN_KEYS <= set(train) and len(train['step_s_median_rounds']) == 2
  assert SAMPLE_KEYS <= set(sample)
  assert train['batch'] == 2 and sample['batch'] == 2 and sample['steps'] == 20
  assert train['mfu'] is None  # no bf16 peak is known for a CPU
  for value in (train['compile_s'], train['step_s_median'], train['peak_mem_gib']):
    assert value > 0
  assert sample['img_per_s'] > 0 and sample['ms_per_img'] > 0
  assert train['step_s_min'] <= train['step_s_median']
  assert abs(train['img_per_s'] * train['step_s_median'] - 2) < 1e-6
  assert abs(train['tflop_per_s'] - train['tflop_per_img'] * train['img_per_s']) < 1e-9
  # A train step is one forward and one backward pass (about 2x the forward) of the encoder and
  # one denoiser step: XLA's count must land between 2x and 4.5x the forward FLOPs.
  forward = summary.forward_flops(shapes.get_config('tiny'))
  ratio = train['tflop_per_img'] * 1e12 / (forward['encoder'] + forward['denoiser_step'])
  assert 2.0 < ratio < 4.5, ratio
  assert 'deadline' in parts['train_batch4']['skipped']
  lines = result.stdout.strip().splitlines()
  assert lines[-1].startswith('train_batch2_encoder_remat_none: skipped')
  assert any(line.startswith('train_batch2: compile') for line in lines)


@pytest.mark.parametrize(
  'kind, peak',
  [
    ('NVIDIA H100 80GB HBM3', 989.0),
    ('NVIDIA H100 PCIe', 756.0),
    ('NVIDIA H200', 989.0),
    ('TPU v5 lite', 197.0),
    ('TPU v5p', 459.0),
    ('TPU v4', 275.0),
    ('cpu', None),
  ],
)
def test_peak_table_matches_device_kinds(kind, peak):
  assert benchmark.peak_tflops(kind) == peak


def test_bad_parts_are_refused():
  with pytest.raises(ValueError, match='--parts=eval'):
    benchmark.run(shapes.get_config('tiny'), parts=['eval'], warmup=1, repeats=1, sample_repeats=1)


@pytest.mark.parametrize('arg', ['tiny', 'video'])
def test_synthetic_batches_are_shaped_as_the_tasks(arg):
  """The benchmark's random batches carry the arrays the task's pipeline yields, ids in range."""
  from pix2seq_d.tasks import registry

  config = shapes.get_config(arg)
  task = registry.get_task(config)
  batch = benchmark.synthetic_batch(config, 4)
  spec = task.train_batch_spec(4)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
    k: (s.shape, s.dtype) for k, s in spec.items()
  }
  for name, value in batch.items():
    if name != 'image':
      assert value[..., 0::2].max() < config.model.num_classes and value.min() >= 0
      assert value[..., 1::2].max() < config.model.max_instances
  (inputs,) = benchmark.synthetic_sample_inputs(config, 4).values()
  frames = (config.eval.video_length_bucket,) if task.reads_clips else ()
  assert inputs.shape == (4, *frames, *config.model.image_size, 3)
