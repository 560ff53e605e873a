"""Shared pytest markers and fixtures (tiny embedded datasets prepared once per session)."""

import ctypes
import gc
import os
import sys

import pytest

# Modules past this many lines are listed at the end of a test run: a judgement aid (does the file
# hold two jobs?), not a rule that fails.
LONG_MODULE_LINES = 600
PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'pix2seq_d')


# The tiers a maintainer can pick (`bash tests/run.sh -m unit`; no -m runs all three):
# unit: pure functions, one process, no training; integration: the real TFDS builders, tf.data,
# orbax, evaluators and the jitted steps together; e2e: the command line, training runs, several
# processes. A `slow` test of a unit file counts as integration.
TIERS = {
  'unit': (
    'test_coco_format.py',
    'test_config_checks.py',
    'test_data_augment.py',
    'test_data_instance_ids.py',
    'test_diffusion.py',
    'test_evaluation_davis.py',
    'test_evaluation_stq.py',
    'test_formats.py',
    'test_loops_steps.py',
    'test_models.py',
    'test_pq.py',
    'test_structure.py',
    'test_tasks_mask_inputs.py',
    'test_tasks_pictures.py',
    'test_tasks_postprocess.py',
    'test_tasks_predict_inputs.py',
    'test_tasks_registry.py',
    'test_tasks_samples.py',
    'test_tf_weights.py',
    'test_tools_degrade_masks.py',
  ),
  'integration': (
    'test_attention.py',
    'test_benchmark.py',
    'test_checkpoints.py',
    'test_data_coco.py',
    'test_data_davis.py',
    'test_data_kitti_step.py',
    'test_data_pipeline.py',
    'test_data_registry.py',
    'test_data_shapes.py',
    'test_evaluation_evaluators.py',
    'test_evaluation_samples.py',
    'test_image_sampling.py',
    'test_loops_evaluate.py',
    'test_plan.py',
    'test_sharding.py',
    'test_summary.py',
    'test_tasks_video_panoptic.py',
    'test_tools_sampling_cost.py',
    'test_video_sampling.py',
  ),
  'e2e': (
    'test_data_cityscapes.py',
    'test_data_preparation.py',
    'test_launch.py',
    'test_loops_eval_checkpoints.py',
    'test_main.py',
    'test_multiprocess_faults.py',
    'test_overfit.py',
    'test_runtime_preemption.py',
    'test_runtime_workdir_files.py',
    'test_train.py',
    'test_video_main.py',
    'test_video_panoptic_main.py',
    'test_workdir_lock.py',
  ),
}


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: takes over ~20 s; deselect with -m "not slow".')
  for tier in TIERS:
    config.addinivalue_line('markers', f'{tier}: the {tier} tier (tests/conftest.py TIERS).')


def tier_of(file_name: str, slow: bool) -> str:
  """The tier of a test in `file_name`; a slow test of a unit file is integration."""
  tiers = [tier for tier, files in TIERS.items() if file_name in files]
  if len(tiers) != 1:
    raise pytest.UsageError(
      f'tests/{file_name} is in {len(tiers)} test tiers; list it in exactly one of '
      f'{", ".join(TIERS)} in tests/conftest.py TIERS.'
    )
  return 'integration' if tiers[0] == 'unit' and slow else tiers[0]


def pytest_collection_modifyitems(config, items):
  for item in items:
    tier = tier_of(item.path.name, item.get_closest_marker('slow') is not None)
    item.add_marker(getattr(pytest.mark, tier))


def pytest_terminal_summary(terminalreporter):
  long = []
  for folder, _, names in os.walk(PACKAGE):
    for name in sorted(n for n in names if n.endswith('.py')):
      path = os.path.join(folder, name)
      with open(path) as f:
        lines = sum(1 for _ in f)
      if lines > LONG_MODULE_LINES:
        long.append(f'{os.path.relpath(path, os.path.dirname(PACKAGE))}: {lines} lines')
  if long:
    terminalreporter.write_sep('-', f'modules over {LONG_MODULE_LINES} lines (one job each?)')
    for line in long:
      terminalreporter.write_line(line)


@pytest.fixture(autouse=True, scope='module')
def _release_compiled_programs():
  """Drops a test module's compiled XLA programs when it ends and gives the freed heap back.

  A worker that keeps every module's programs grows to about 5 GB (1 GB when released), and two
  test runs at once, two workers each plus their subprocesses, then exceed a 24 GiB machine.
  """
  yield
  if 'jax' in sys.modules:  # a module that never imported JAX compiled nothing
    sys.modules['jax'].clear_caches()
    gc.collect()
    try:
      ctypes.CDLL('libc.so.6').malloc_trim(0)  # glibc keeps freed arenas otherwise
    except (OSError, AttributeError):  # not glibc: the memory is reused, only not returned
      pass


@pytest.fixture(scope='session')
def shapes_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding 'shapes/tiny' and 'shapes_video/tiny', prepared once."""
  from pix2seq_d.data import shapes

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  for name in ('shapes/tiny', 'shapes_video/tiny'):
    shapes.make_builder(name, data_dir).download_and_prepare()
  return data_dir


@pytest.fixture(scope='session')
def jax_cache(tmp_path_factory) -> str:
  """The persistent compilation cache the test processes share (processes.py)."""
  return os.environ.get('JAX_COMPILATION_CACHE_DIR') or str(tmp_path_factory.mktemp('jax_cache'))


@pytest.fixture
def shapes_config(shapes_data_dir):
  """configs/shapes.py on 'shapes/tiny' with small batches (arg 'video': 'shapes_video/tiny')."""
  from configs import shapes as shapes_configs

  def make(arg: str = ''):
    config = shapes_configs.get_config(arg)
    config.data.name = 'shapes_video/tiny' if arg == 'video' else 'shapes/tiny'
    config.data.data_dir = shapes_data_dir
    config.data.shuffle_buffer = 16
    config.data.num_parallel_calls = 1  # the test machines share two cores.
    config.train.batch_size = 8
    # The paper's layout, mask = image / 2 (configs/shapes.py uses / 4 for speed).
    config.model.mask_size = (32, 32)
    config.model.denoiser.dim_mults = (1, 1, 2, 2)
    config.eval.batch_size = 8
    config.eval.num_examples = 0
    return config

  return make
