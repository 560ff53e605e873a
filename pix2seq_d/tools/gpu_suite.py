"""The GPU suite: the first and only thing a GPU machine runs in its first call.

  python -m pix2seq_d.tools.gpu_suite --output_dir=DIR [--config=configs/coco.py] \
      [--batch=16] [--deadline_s=480] [--train_steps=20]

In order of value, each part written to DIR/<part>.json as soon as it is done (a timeout keeps
what was measured; a part that fails, e.g. out of memory, records its error and the suite goes
on), and a table printed last (`run_suite`): the attention implementations against the XLA
reference at the model's shapes (attention_check.py), the train step and the sampler at batch 16
(benchmark.py), then batch 32 and the encoder without rematerialisation while the deadline
allows. Like the benchmark it imports no TensorFlow, TFDS or clu; docs/performance.md says how
to bring ml_collections to a machine without it.
"""

import importlib.util
import os
import subprocess
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from pix2seq_d.models import model as p2s
from pix2seq_d.parallel import sharding
from pix2seq_d.tools import attention_check, benchmark

config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file (default configs/coco.py).', lock_config=True
)
flags.DEFINE_string('output_dir', None, 'The folder of the JSON files (created).')
flags.DEFINE_integer('batch', 16, 'The batch of the train and sample parts (global).')
flags.DEFINE_integer('train_steps', 20, 'Timed train steps per round (two rounds).')
flags.DEFINE_float(
  'deadline_s',
  480.0,
  'An optional part starts only when it is expected to end within this many seconds of the start.',
)
FLAGS = flags.FLAGS

# What the suite lets JAX take of an accelerator's memory (JAX preallocates 75% by default); an
# XLA_PYTHON_CLIENT_MEM_FRACTION already set is kept.
MEMORY_FRACTION = '0.95'


def _commit() -> str | None:
  """The checkout's commit, when git can tell (a copied tree may have no .git)."""
  try:
    return subprocess.run(
      ['git', 'rev-parse', '--short', 'HEAD'],
      cwd=os.path.dirname(os.path.abspath(__file__)),
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _write_part(output_dir: str, name: str, record: dict) -> None:
  if jax.process_index() == 0:
    benchmark.write_json(os.path.join(output_dir, f'{name}.json'), record)


def _variant(config, **fields):
  """A copy of `config` with `fields` ({'section.name': value}) set."""
  variant = config.copy_and_resolve_references()
  for path, value in fields.items():
    *sections, name = path.split('.')
    parent = variant
    for section in sections:
      parent = parent[section]
    parent[name] = value
  return variant


def run_suite(
  config, output_dir: str, *, batch: int = 16, deadline_s: float = 480.0, repeats: int = 20
) -> list[dict]:
  """The GPU suite: the first thing to run on a GPU machine, in one call of a few minutes.

  In order of value, each written to output_dir/<name>.json as soon as it is done (a timeout
  keeps what was measured; a part that fails, e.g. out of memory, records its error and the
  suite goes on):
    environment            device, versions, commit, memory fraction
    attention              `attention_check.check_attention` at the model's shapes, padding to
                           64 and to 128
    train_batch{B}         the train step at batch B with the config's defaults, `repeats`
                           steps timed twice (the two medians show whether it repeats)
    sample_batch{B}        config.diffusion.steps-step sampling at batch B
    train_batch{2B}        then, while the deadline allows (estimated from train_batch{B}):
    train_batch{B}_encoder_remat_none

  Returns the records in that order (also printed as a table by `main`).
  """
  start = time.perf_counter()
  os.makedirs(output_dir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  dtype = p2s.resolve_dtype(config.model.dtype)
  device_kind = jax.devices()[0].device_kind
  records = []

  def done(name: str, record: dict) -> None:
    record = {'part': name, 'seconds': time.perf_counter() - part_start, **record}
    records.append(record)
    _write_part(output_dir, name, record)

  part_start = start
  done(
    'environment',
    {
      'device_kind': device_kind,
      'device_count': jax.device_count(),
      'peak_tflops_per_device': benchmark.peak_tflops(device_kind),
      'dtype': jnp.dtype(dtype).name,
      'attention': p2s.resolve_attention_impl(config.model.attention_impl, dtype),
      'cudnn_seq_multiple': int(config.model.cudnn_seq_multiple),
      'image_size': list(config.model.image_size),
      'mask_size': list(config.model.mask_size),
      'jax': jax.__version__,
      'commit': _commit(),
      'memory_fraction': os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION'),
    },
  )

  def measure(name: str, fn) -> dict:
    nonlocal part_start
    part_start = time.perf_counter()
    try:
      record = fn()
    except Exception as error:  # out of memory and the like: recorded, and the suite goes on
      record = {'error': f'{type(error).__name__}: {error}'[:2000]}
    done(name, record)
    return records[-1]

  measure('attention', lambda: {'checks': attention_check.check_attention(config)})
  train_config = _variant(config, **{'train.batch_size': batch})
  first = measure(
    f'train_batch{batch}',
    lambda: benchmark.bench_train(train_config, mesh, warmup=2, repeats=repeats, rounds=2),
  )
  sample_config = _variant(config, **{'eval.batch_size': batch})
  measure(f'sample_batch{batch}', lambda: benchmark.bench_sample(sample_config, mesh, repeats=5))

  optional = {
    f'train_batch{2 * batch}': _variant(config, **{'train.batch_size': 2 * batch}),
    f'train_batch{batch}_encoder_remat_none': _variant(
      train_config, **{'model.remat.encoder': 'none'}
    ),
  }
  # The first train part's wall time (FLOP count, compile and 40 steps) bounds the others'.
  estimate = first['seconds']
  flops = first.get('tflop_per_img', 0) * 1e12 or None
  for name, variant in optional.items():
    elapsed = time.perf_counter() - start
    if 'error' in first or elapsed + estimate > deadline_s:
      part_start = time.perf_counter()
      why = 'the train step failed at the smaller batch' if 'error' in first else 'deadline'
      done(name, {'skipped': f'{why} ({elapsed:.0f} s of {deadline_s:.0f} s used)'})
      continue
    measure(
      name, lambda v=variant: benchmark.bench_train(v, mesh, warmup=2, repeats=repeats, flops=flops)
    )
  return records


def format_suite(records: list[dict]) -> str:
  """The suite's short table: one line per part."""
  lines = []
  for record in records:
    name, seconds = record['part'], record['seconds']
    if name == 'environment':
      lines.append(
        f'{record["device_kind"]} x {record["device_count"]}, jax {record["jax"]}, commit '
        f'{record["commit"]}, {record["dtype"]}, attention {record["attention"]} (pad '
        f'{record["cudnn_seq_multiple"]}), memory fraction {record["memory_fraction"]}'
      )
    elif name == 'attention':
      for check in record['checks']:
        head = f'{check["site"]:27s} pad {check["multiple"]:3d} {check["implementation"]:10s}'
        if check['error']:
          lines.append(f'{head} refused: {check["error"][:80]}')
        else:
          grads = max(check['grad_max_rel_err'].values())
          lines.append(
            f'{head} fwd err {check["forward_max_rel_err"]:.2e}, grad err {grads:.2e}, '
            f'NaN {check["nan"]}'
          )
    elif 'error' in record or 'skipped' in record:
      lines.append(f'{name}: {record.get("error") or "skipped: " + record["skipped"]}')
    elif name.startswith('train'):
      mfu = f'{100 * record["mfu"]:.1f}%' if record['mfu'] is not None else 'n/a'
      rounds = ', '.join(f'{s:.4f}' for s in record['step_s_median_rounds'])
      lines.append(
        f'{name}: compile {record["compile_s"]:.0f} s, step {record["step_s_median"]:.4f} s '
        f'(min {record["step_s_min"]:.4f}; medians {rounds}), {record["img_per_s"]:.2f} img/s, '
        f'MFU {mfu}, peak {record["peak_mem_gib"]:.1f} GiB'
      )
    else:
      lines.append(
        f'{name}: {record["steps"]} steps, compile {record["compile_s"]:.0f} s, '
        f'{record["img_per_s"]:.2f} img/s, {record["ms_per_img"]:.1f} ms/img'
      )
    lines[-1] += f'  [{seconds:.0f} s]'
  return '\n'.join(lines)


def _coco_config():
  """configs/coco.py of this checkout: the suite's default."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  path = os.path.join(root, 'configs', 'coco.py')
  spec = importlib.util.spec_from_file_location('coco_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.output_dir:
    raise app.UsageError('--output_dir=DIR is required: one JSON file per part goes there.')
  # Read when the backend starts, which nothing has done before this line.
  os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', MEMORY_FRACTION)
  records = run_suite(
    FLAGS.config or _coco_config(),
    FLAGS.output_dir,
    batch=FLAGS.batch,
    deadline_s=FLAGS.deadline_s,
    repeats=FLAGS.train_steps,
  )
  if jax.process_index() == 0:
    print(format_suite(records), flush=True)


if __name__ == '__main__':
  app.run(main)
