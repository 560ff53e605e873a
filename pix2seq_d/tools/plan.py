"""`--mode=plan`: what a run would do, found before any accelerator time is paid for.

After the config checks pass, the plan prints, section by section:
- config: every field that differs from the defaults (config/defaults.py);
- mesh: the devices, the mesh shape, the rows of the training and eval batches per device;
- model: parameters and forward FLOPs per image (XLA's cost analysis of abstract computations);
- memory: per device, the train state (exact, from its shardings), the activations the step
  keeps for its backward pass (one microbatch, split over the data-parallel devices) and the
  batch; with config.plan.compile, XLA's analysis of the compiled (never run) train step;
- data: the examples of each split, found without preparing or converting (data/survey.py);
- checkpoint: the step the run would resume from, or what it would start from.
Nothing is allocated, trained or written (not even the workdir). A section that fails prints its
error and the others still run; the exit status is 1 when any failed.

  XLA_FLAGS=--xla_force_host_platform_device_count=16 python -m pix2seq_d.main \\
      --config=configs/coco.py --workdir=DIR --mode=plan
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax

from pix2seq_d.config import defaults as config_defaults
from pix2seq_d.config import fields
from pix2seq_d.data import survey as survey_lib
from pix2seq_d.loops import run as run_lib
from pix2seq_d.parallel import sharding
from pix2seq_d.runtime import checkpoints
from pix2seq_d.tools import benchmark, summary

GIB = 2**30


def config_differences(config) -> list[str]:
  """'field: default -> value' for every field that differs from config/defaults.py."""
  ours = fields.flat(config.to_dict())
  defaults = fields.flat(config_defaults.get_base_config().to_dict())
  lines = []
  for field in sorted(ours):
    value, default = ours[field], defaults.get(field, '(not a default field)')
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
      value, default = tuple(value), tuple(default)
    if value != default:
      lines.append(f'{field}: {default!r} -> {value!r}')
  return lines or ['(the defaults)']


def mesh_lines(config, mesh) -> list[str]:
  """The devices of `mesh` and how the batches split over them; a line 'error: ...' where a
  batch does not split over the data-parallel devices."""
  parallel = sharding.data_parallel_size(mesh)
  rows = config.train.batch_size // parallel
  microbatches = int(config.train.microbatches)
  devices = jax.devices()
  lines = [
    f'{len(devices)} {devices[0].platform} devices in {jax.process_count()} process(es); mesh '
    + ', '.join(f'{axis} {size}' for axis, size in mesh.shape.items()),
    f'training batch {config.train.batch_size}: {rows} rows per data-parallel device'
    + (f', {rows // microbatches} per microbatch of {microbatches}' if microbatches > 1 else ''),
    f'eval batch {config.eval.batch_size}: {config.eval.batch_size // parallel} rows per device',
  ]
  try:
    sharding.check_batch_sizes(config, parallel)
  except ValueError as error:  # the mesh stands: memory is still estimated on it.
    lines.append(f'error: {error}')
  return lines


def model_lines(config, task=None) -> list[str]:
  """Parameters and forward FLOPs per image (`task`: the run's, as in `summary.model_summary`)."""
  text = summary.model_summary(config, task).splitlines()
  params = int(text[-1].split()[-1])
  return [f'{params:,} parameters ({params / 1e6:.2f}M)', *text[-3:-1]]


def _size(gib: float) -> str:
  return f'{gib:.2f} GiB' if gib >= 1 else f'{gib * 1024:.1f} MiB'


def memory_lines(config, mesh, compile_step: bool, model=None, task=None) -> list[str]:
  """Per-device memory of the train step, from abstract arrays (nothing allocated); `model` and
  `task` as in `benchmark.bench_memory`."""
  record = benchmark.bench_memory(config, mesh, compile_step=compile_step, model=model, task=task)
  parallel = sharding.data_parallel_size(mesh)
  state = record['state_gib_per_device']
  # The batch and the kept activations split over the data-parallel devices.
  activations = record['residual_gib'] / parallel
  batch = record['batch_gib'] / parallel
  lines = [
    f'train state {_size(state)} per device ({_size(record["state_gib"])} in all)',
    f'kept activations {_size(activations)} per device (one microbatch of '
    f'{config.train.batch_size // record["microbatches"]} rows; remat '
    f'{dict(config.model.remat)}, attention {config.model.attention_impl!r})',
    f'batch {_size(batch)} per device; about {_size(state + activations + batch)} per device '
    'before temporaries',
  ]
  if compile_step:
    lines.append(
      f'compiled train step ({record["compile_s"]:.0f} s to compile): arguments '
      f'{_size(record["argument_gib"])}, outputs {_size(record["output_gib"])}, temporaries '
      f'{_size(record["temp_gib"])}, in all {_size(record["total_gib"])} per device'
    )
  return lines


def data_lines(config) -> list[str]:
  """The examples per split, or the error a run would stop with."""
  found = survey_lib.survey(config)
  return [
    f'{found.name}: '
    + ', '.join(f'{split} {count:,}' for split, count in found.splits.items())
    + f' ({found.note})'
  ]


def checkpoint_lines(config, workdir: str) -> list[str]:
  """What the run starts from: its own last checkpoint, config.init_from, or random weights."""
  steps = checkpoints.saved_steps(workdir) if os.path.isdir(workdir) else []
  if steps:
    return [f'resumes {workdir} from step {steps[-1]} (checkpoints at {steps})']
  init = config.init_from
  if init.path:
    if init.format == 'pix2seq_d':
      found = checkpoints.saved_steps(init.path)
      if not found:
        raise FileNotFoundError(
          f'config.init_from.path={init.path!r}: no checkpoint of a run there (no '
          f'{checkpoints.CHECKPOINT_SUBDIR}/<step> folder).'
        )
      where = f'step {found[-1]} of {init.path}'
    elif not os.path.exists(init.path) and not os.path.exists(f'{init.path}.index'):
      raise FileNotFoundError(f'config.init_from.path={init.path!r} does not exist.')
    else:
      where = init.path
    return [f'starts afresh in {workdir}, weights from {where} (mode {init.mode!r})']
  return [f'starts afresh in {workdir} from random weights (seed {config.seed})']


def plan(config, workdir: str, write: Callable[[str], None] = print) -> bool:
  """Writes the plan of a run of `config` in `workdir`; returns False when a section failed."""
  ok = True

  def section(title: str, make: Callable[[], list[str]]) -> None:
    nonlocal ok
    write(f'{title}:')
    try:
      lines = make()
    except (ValueError, FileNotFoundError, OSError) as error:
      lines = [f'error: {error}']
    ok = ok and not any(line.startswith('error: ') for line in lines)
    for line in lines:
      write(f'  {line}')

  section('config', lambda: config_differences(config))
  run = None

  def mesh_section() -> list[str]:
    nonlocal run
    run = run_lib.open_run(config, workdir, data=None)  # reads and writes nothing
    return mesh_lines(config, run.mesh)

  section('mesh', mesh_section)
  if run is not None:
    section('model', lambda: model_lines(config, run.task))
    compile_step = bool(config.plan.compile)
    section('memory', lambda: memory_lines(config, run.mesh, compile_step, run.model, run.task))
  section('data', lambda: data_lines(config))
  section('checkpoint', lambda: checkpoint_lines(config, workdir))
  write('plan: ' + ('every check passed' if ok else 'errors above; a run would stop'))
  return ok
