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


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: takes over ~20 s; deselect with -m "not slow".')


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
