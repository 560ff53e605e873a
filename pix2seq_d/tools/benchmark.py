"""Speed, FLOPs, MFU and memory of the real train step and sampler, on synthetic batches.

  python -m pix2seq_d.tools.benchmark --config=configs/coco.py --config.train.batch_size=16 \
      --config.eval.batch_size=16 [--output_json=F]

The GPU suite (gpu_suite.py) runs these measurements in the order a first GPU session needs.

The train step and the sampler are the ones training and evaluation run (`loops.state`'s
`jit_train_step`, and `jit_predict` of the configured task, on the configured mesh); only the
batches are synthetic, so this imports no TensorFlow, TFDS or clu and runs on a bare accelerator
image. Batch sizes are the
global `config.train.batch_size` and `config.eval.batch_size`.

Reported:
  compile_s       lowering + XLA compilation of the step (the persistent cache, if set, counts).
  step_s_median   median wall time of `--train_steps` steps after `--warmup_steps` (and the min).
  tflop_per_img   model FLOPs per image from XLA's cost analysis of the same step lowered with
                  XLA attention and no rematerialisation: custom calls (cuDNN, Pallas) report no
                  FLOPs, and recomputation is not model work.
  mfu             achieved FLOP/s over the devices' dense bf16 peak (PEAK_TFLOPS).
  peak_mem_gib    the devices' peak bytes in use (`memory_stats`), or where a backend keeps no
                  statistics (CPU) the compiled program's arguments + outputs + temporaries.
  memory          (--parts=memory) the train state's bytes, the batch's, and the activations
                  the step keeps for the backward pass of one microbatch
                  (config.train.microbatches), from abstract tracing (no device needed), and the
                  compiled step's memory analysis: plans a batch size for a device one lacks.
"""

import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from pix2seq_d.loops import state as state_lib
from pix2seq_d.loops import steps
from pix2seq_d.models import model as p2s
from pix2seq_d.parallel import sharding
from pix2seq_d.tasks import registry
from pix2seq_d.tools import summary

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command's flags (defined only when it runs, so that other tools can import this
  module and define their own)."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('output_json', None, 'Also write the figures to this JSON file.')
  flags.DEFINE_integer('train_steps', 20, 'Timed train steps (after the warm-up).')
  flags.DEFINE_integer('warmup_steps', 2, 'Untimed train steps after compilation.')
  flags.DEFINE_integer('sample_repeats', 5, 'Timed sampling batches (after one warm-up batch).')
  flags.DEFINE_list(
    'parts',
    ['train', 'sample'],
    'What to measure: train, sample, memory (the activations the train step keeps '
    'and its compiled memory analysis, without running it: plans batch sizes for '
    'devices one does not have).',
  )
  flags.DEFINE_bool('compile_memory', True, 'With --parts=memory, also compile the train step.')


# Dense bf16 peak TFLOP/s per chip (datasheets), by the start of `jax.Device.device_kind`; the
# longest matching prefix wins.
PEAK_TFLOPS = {
  'NVIDIA H100': 989.0,  # SXM; the PCIe card below
  'NVIDIA H100 PCIe': 756.0,
  'NVIDIA H200': 989.0,
  'NVIDIA A100': 312.0,
  'NVIDIA L4': 121.0,
  'NVIDIA B200': 2250.0,
  'TPU v4': 275.0,
  'TPU v5 lite': 197.0,  # v5e
  'TPU v5e': 197.0,
  'TPU v5p': 459.0,
  'TPU v5': 459.0,
  'TPU v6 lite': 918.0,  # v6e (Trillium)
  'TPU v6e': 918.0,
}
GIB = 2**30


def peak_tflops(device_kind: str) -> float | None:
  """Dense bf16 peak TFLOP/s of one chip of `device_kind`, or None when unknown (e.g. CPU)."""
  matches = [kind for kind in PEAK_TFLOPS if device_kind.startswith(kind)]
  return PEAK_TFLOPS[max(matches, key=len)] if matches else None


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """This process's rows of a random training batch with the arrays the task's pipeline yields
  (`Task.train_batch_spec`).

  Returns:
    float arrays uniform in [0, 1) ('image' (b, H, W, 3)); int arrays of [semantic, instance]
    channel pairs ('label' (b, Hm, Wm, 2), for video 'cond_label' (b, Hm, Wm, 2 * frames)) with
    ids below config.model.num_classes / max_instances; b = batch_size / processes.
  """
  rows = batch_size // jax.process_count()
  rng = np.random.default_rng(seed + jax.process_index())
  limits = np.array([config.model.num_classes, config.model.max_instances])
  batch = {}
  for name, spec in registry.get_task(config).train_batch_spec(rows).items():
    if np.issubdtype(spec.dtype, np.floating):
      batch[name] = rng.random(spec.shape, dtype=np.float32)
    else:
      pairs = spec.shape[:-1] + (spec.shape[-1] // 2, 2)
      batch[name] = (rng.integers(0, 2**31 - 1, pairs) % limits).reshape(spec.shape)
      batch[name] = batch[name].astype(np.int32)
  return batch


def synthetic_sample_inputs(config, batch_size: int, seed: int = 1) -> dict[str, np.ndarray]:
  """This process's rows of random sampler inputs, uniform in [0, 1), with the arrays of
  `Task.sample_input_spec`: images (b, H, W, 3) for an image task, clips of
  config.eval.video_length_bucket frames (b, T, H, W, 3) for a video task."""
  rows = batch_size // jax.process_count()
  rng = np.random.default_rng(seed + jax.process_index())
  return {
    name: rng.random(spec.shape, dtype=np.float32)
    for name, spec in registry.get_task(config).sample_input_spec(rows).items()
  }


def images_per_row(inputs: dict[str, np.ndarray]) -> int:
  """Images in one row of sampler inputs: 1 for (b, H, W, 3), T for clips (b, T, H, W, 3)."""
  return int(np.prod(next(iter(inputs.values())).shape[1:-3], dtype=np.int64))


def model_flops_per_image(config, mesh, batch: dict, key: jax.Array) -> float:
  """XLA's FLOP count of one train step per image, with XLA attention and no remat."""
  counted = summary.flops_config(config)
  state_shape, state_shardings, train_graphdef, _, tx = state_lib.build_train_state(
    counted, mesh, abstract=True
  )
  step = state_lib.jit_train_step(counted, tx, train_graphdef, state_shardings, mesh)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  analysis = step.lower(state_shape, abstract_batch, key).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis['flops']) / batch['image'].shape[0]


def peak_memory_gib(compiled) -> tuple[float, str]:
  """(GiB, source): the largest per-device peak of `memory_stats`, else the compiled program's."""
  stats = [d.memory_stats() for d in jax.local_devices()]
  if all(s and 'peak_bytes_in_use' in s for s in stats):
    return max(s['peak_bytes_in_use'] for s in stats) / GIB, 'memory_stats'
  memory = compiled.memory_analysis()
  total = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    + memory.temp_size_in_bytes
    - memory.alias_size_in_bytes
  )
  return total / GIB, 'memory_analysis'


def residual_gib(config, batch: dict, task=None) -> float:
  """GiB of activations the train step keeps for its backward pass (all devices together).

  The leaves of the loss's VJP closure, traced abstractly: what the rematerialisation policies
  and the attention implementation decide, in the compute dtype, independent of any backend's
  scheduling (XLA:CPU's compiled memory analysis does not show rematerialisation's savings).
  Parameters used by the backward pass are included.
  """
  task = task or registry.get_task(config)
  model = nnx.eval_shape(lambda: state_lib.build_model(config, rngs=nnx.Rngs(0), task=task))
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}

  def backward_closure(params, rest, batch, key):
    def loss(params):
      merged = nnx.merge(graphdef, params, rest, copy=True)
      cond = task.train_conditioning(batch)
      return steps.diffusion_loss(merged, batch, key, config, cond=cond)[0]

    return jax.vjp(loss, params)[1]

  closure = jax.eval_shape(backward_closure, params, rest, abstract_batch, jax.random.key(0))
  return _tree_gib(closure)


def _tree_gib(tree) -> float:
  return (
    sum(
      math.prod(leaf.shape) * leaf.dtype.itemsize
      for leaf in jax.tree.leaves(tree)
      if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    )
    / GIB
  )


def per_device_gib(tree) -> float:
  """GiB one device holds of a tree of sharded abstract arrays (the largest shard of each leaf)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      continue
    sharded = getattr(leaf, 'sharding', None)
    shape = sharded.shard_shape(leaf.shape) if sharded is not None else leaf.shape
    total += math.prod(shape) * leaf.dtype.itemsize
  return total / GIB


def bench_memory(
  config,
  mesh,
  *,
  compile_step: bool = True,
  model: state_lib.TrainStateParts | None = None,
  task=None,
) -> dict:
  """The train state's size (all devices and per device) and the activations the step keeps
  (all devices together, GiB), and unless `compile_step` is False the compiled (never run) step's
  per-device analysis. Everything is abstract: no array is allocated, not even the batch.
  `model`: `state.build_train_state(config, mesh, abstract=True)` when the caller has it (a
  run's `Run.model`), else built here; `task`: the run's (default: the configured task)."""
  model = model or state_lib.build_train_state(config, mesh, abstract=True)
  state, state_shardings, train_graphdef, _, tx = model
  task = task or registry.get_task(config)
  spec = task.train_batch_spec(config.train.batch_size)
  microbatches = int(config.train.microbatches)
  # With accumulation only one microbatch's activations are alive at a time.
  one_microbatch = {
    k: jax.ShapeDtypeStruct((v.shape[0] // microbatches,) + v.shape[1:], v.dtype)
    for k, v in spec.items()
  }
  record = {
    'batch': config.train.batch_size,
    'microbatches': microbatches,
    'state_gib': _tree_gib(state),
    'state_gib_per_device': per_device_gib(state),
    'batch_gib': _tree_gib(spec),
    'residual_gib': residual_gib(config, one_microbatch, task),
  }
  if not compile_step:
    return record
  batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh))
    for k, v in spec.items()
  }
  start = time.perf_counter()
  compiled = (
    state_lib.jit_train_step(config, tx, train_graphdef, state_shardings, mesh, task)
    .lower(state, batch, jax.random.key(0))
    .compile()
  )
  memory = compiled.memory_analysis()
  return {
    **record,
    'compile_s': time.perf_counter() - start,
    'argument_gib': memory.argument_size_in_bytes / GIB,
    'output_gib': memory.output_size_in_bytes / GIB,
    'temp_gib': memory.temp_size_in_bytes / GIB,
    'total_gib': (
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      + memory.temp_size_in_bytes
      - memory.alias_size_in_bytes
    )
    / GIB,
  }


def _timed(fn, repeats: int) -> list[float]:
  """Wall seconds of `repeats` calls of fn() (each result waited for)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def bench_train(
  config, mesh, *, warmup: int, repeats: int, rounds: int = 1, flops: float | None = None
) -> dict:
  """Compiles and times the train step; returns the 'train' record.

  `rounds` > 1 times `repeats` steps that many times over ('step_s_median_rounds': the median
  of each round, to see whether a measurement repeats); `flops` per image saves counting them
  again for a config of the same model.
  """
  batch_size = config.train.batch_size
  local = synthetic_batch(config, batch_size)
  key = jax.random.key(config.seed)
  if flops is None:
    flops = model_flops_per_image(config, mesh, local, key)

  state, state_shardings, train_graphdef, _, tx = state_lib.build_train_state(config, mesh)
  batch = sharding.make_global_batch(local, mesh)
  start = time.perf_counter()
  compiled = (
    state_lib.jit_train_step(config, tx, train_graphdef, state_shardings, mesh)
    .lower(state, batch, key)
    .compile()
  )
  compile_s = time.perf_counter() - start

  holder = {'state': state}

  def one_step():
    holder['state'], metrics = compiled(holder['state'], batch, key)
    return holder['state'], metrics

  _timed(one_step, warmup)
  round_times = [_timed(one_step, repeats) for _ in range(rounds)]
  times = round_times[0]
  loss = float(one_step()[1]['loss'])
  step_s = statistics.median(times)
  img_per_s = batch_size / step_s
  tflop_per_s = flops * img_per_s / 1e12
  peak = peak_tflops(jax.devices()[0].device_kind)
  memory, memory_source = peak_memory_gib(compiled)
  return {
    'batch': batch_size,
    'compile_s': compile_s,
    'step_s_median': step_s,
    'step_s_min': min(times),
    'img_per_s': img_per_s,
    'tflop_per_img': flops / 1e12,
    'tflop_per_s': tflop_per_s,
    'mfu': tflop_per_s / (peak * jax.device_count()) if peak else None,
    'peak_mem_gib': memory,
    'peak_mem_source': memory_source,
    'loss': loss,
    'microbatches': int(config.train.microbatches),
    'step_s_median_rounds': [statistics.median(t) for t in round_times],
  }


def bench_sample(config, mesh, *, repeats: int) -> dict:
  """Compiles and times `config.diffusion.steps`-step sampling of the task's predict function on
  random inputs (a video task streams clips of config.eval.video_length_bucket frames, each
  frame after the first with config.diffusion.steps_later_frames steps); returns the 'sample'
  record, per image or frame."""
  batch_size = config.eval.batch_size
  task = registry.get_task(config)
  state, state_shardings, _, eval_graphdef, _ = state_lib.build_train_state(config, mesh)
  predict = state_lib.jit_predict(
    task, eval_graphdef, state_shardings.ema_params, state_shardings.ema_model_state, mesh
  )
  local = synthetic_sample_inputs(config, batch_size)
  inputs = sharding.make_global_batch(local, mesh)
  frames = images_per_row(local)
  args = (state.ema_params, state.ema_model_state, inputs, jax.random.key(0))
  start = time.perf_counter()
  compiled = predict.lower(*args).compile()
  compile_s = time.perf_counter() - start
  run = lambda: compiled(*args)
  _timed(run, 1)
  seconds = statistics.median(_timed(run, repeats))
  images = batch_size * frames
  return {
    'batch': batch_size,
    'frames_per_example': frames,
    'steps': config.diffusion.steps,
    'compile_s': compile_s,
    'img_per_s': images / seconds,
    'ms_per_img': 1e3 * seconds / images,
  }


def format_report(report: dict) -> str:
  """The table the command prints."""
  lines = [
    f'device: {report["device_kind"]} x {report["device_count"]}, '
    f'dense bf16 peak {report["peak_tflops_per_device"] or "unknown"} TFLOP/s per device, '
    f'compute dtype {report["dtype"]}, attention {report["attention"]}'
  ]
  train = report.get('train')
  if train:
    mfu = f'{100 * train["mfu"]:.1f}%' if train['mfu'] is not None else 'n/a'
    lines.append(
      f'train   batch {train["batch"]}: compile {train["compile_s"]:.1f} s, step median '
      f'{train["step_s_median"]:.4f} s (min {train["step_s_min"]:.4f}), '
      f'{train["img_per_s"]:.2f} img/s, {train["tflop_per_img"]:.4g} TFLOP/img, '
      f'{train["tflop_per_s"]:.4g} TFLOP/s, MFU {mfu}, peak memory '
      f'{train["peak_mem_gib"]:.2f} GiB ({train["peak_mem_source"]})'
    )
  memory = report.get('memory')
  if memory:
    line = (
      f'memory  batch {memory["batch"]} in {memory["microbatches"]} microbatch(es): train state '
      f'{memory["state_gib"]:.2f} GiB, batch {memory["batch_gib"]:.2f} GiB, activations kept '
      f'for the backward pass of a microbatch {memory["residual_gib"]:.2f} GiB'
    )
    if 'temp_gib' in memory:
      line += (
        f'; compiled (not run): temporaries {memory["temp_gib"]:.2f} GiB, arguments '
        f'{memory["argument_gib"]:.2f} GiB, total {memory["total_gib"]:.2f} GiB '
        f'(compile {memory["compile_s"]:.1f} s)'
      )
    lines.append(line)
  sample = report.get('sample')
  if sample:
    lines.append(
      f'sample  batch {sample["batch"]}, {sample["steps"]} steps: compile '
      f'{sample["compile_s"]:.1f} s, {sample["img_per_s"]:.2f} img/s, '
      f'{sample["ms_per_img"]:.1f} ms/img'
    )
  return '\n'.join(lines)


def write_json(path: str | None, report: dict) -> None:
  """Writes the report atomically (a partial run still leaves valid JSON)."""
  if not path or jax.process_index() != 0:
    return
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(report, f, indent=2)
  os.replace(tmp, path)


def run(
  config,
  *,
  parts,
  warmup: int,
  repeats: int,
  sample_repeats: int,
  output_json: str | None = None,
  compile_memory: bool = True,
) -> dict:
  """Measures `parts` ('train', 'sample') and returns the report (also written as it goes)."""
  unknown = set(parts) - {'train', 'sample', 'memory'}
  if unknown or not parts:
    raise ValueError(f'--parts={",".join(parts)}: use train, sample and/or memory.')
  if repeats < 1 or warmup < 0 or sample_repeats < 1:
    raise ValueError('--train_steps and --sample_repeats must be >= 1, --warmup_steps >= 0.')
  mesh = sharding.make_mesh(config.mesh)
  dtype = p2s.resolve_dtype(config.model.dtype)
  device_kind = jax.devices()[0].device_kind
  report = {
    'device_kind': device_kind,
    'device_count': jax.device_count(),
    'peak_tflops_per_device': peak_tflops(device_kind),
    'dtype': jnp.dtype(dtype).name,
    'attention': p2s.resolve_attention_impl(config.model.attention_impl, dtype),
    'remat': dict(config.model.remat),
    'image_size': list(config.model.image_size),
    'mask_size': list(config.model.mask_size),
    'jax': jax.__version__,
  }
  if 'memory' in parts:
    report['memory'] = bench_memory(config, mesh, compile_step=compile_memory)
    write_json(output_json, report)
  if 'train' in parts:
    report['train'] = bench_train(config, mesh, warmup=warmup, repeats=repeats)
    write_json(output_json, report)
  if 'sample' in parts:
    report['sample'] = bench_sample(config, mesh, repeats=sample_repeats)
    write_json(output_json, report)
  return report


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.config is None:
    raise app.UsageError('--config=configs/NAME.py is required.')
  report = run(
    FLAGS.config,
    parts=FLAGS.parts,
    warmup=FLAGS.warmup_steps,
    repeats=FLAGS.train_steps,
    sample_repeats=FLAGS.sample_repeats,
    output_json=FLAGS.output_json,
    compile_memory=FLAGS.compile_memory,
  )
  if jax.process_index() == 0:
    print(format_report(report), flush=True)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
