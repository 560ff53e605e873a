"""Checkpoint save / resume, keep-N, model mismatch messages and partial init.

States are the tiny model's TrainState structure filled with random numbers (no initialiser is
compiled, which would take ~20 s on CPU); what is checked is that every array comes back bitwise.
"""

import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes
from pix2seq_d.loops import run as run_lib
from pix2seq_d.loops import state as state_lib
from pix2seq_d.loops import steps
from pix2seq_d.parallel import sharding
from pix2seq_d.runtime import checkpoints, init_from

_is_variable = lambda x: isinstance(x, nnx.Variable)


def _config(**model_overrides):
  config = shapes.get_config('tiny')
  for dotted, value in model_overrides.items():
    section, _, name = dotted.rpartition('__')
    (config.model[section] if section else config.model)[name] = value
  return config


def _abstract_state(config):
  tx = steps.make_optimizer(config.train)
  return jax.eval_shape(
    lambda: steps.create_train_state(state_lib.build_model(config, rngs=nnx.Rngs(0)), tx)
  )


def _random_state(abstract, seed, mesh):
  """A concrete state of `abstract`'s structure with random values, placed with its shardings."""
  rng = np.random.default_rng(seed)

  def fill(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      data = jax.eval_shape(jax.random.key_data, leaf)
      return jax.random.wrap_key_data(
        rng.integers(0, 2**32, data.shape, dtype=np.uint32), dtype=leaf.dtype
      )
    if jnp.issubdtype(leaf.dtype, jnp.integer):
      return jnp.asarray(rng.integers(0, 1000, leaf.shape), leaf.dtype)
    return jnp.asarray(rng.standard_normal(leaf.shape), leaf.dtype)

  state = jax.tree.map(fill, abstract)
  shardings = sharding.state_shardings(abstract, mesh)
  return jax.device_put(state, shardings), shardings


def _flat(state):
  """{path: numpy value} with PRNG keys as key data."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_variable)[0]:
    value = leaf.get_value() if _is_variable(leaf) else leaf
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
      value = jax.random.key_data(value)
    flat[sharding.path_names(path)] = value
  return flat


def _assert_equal(actual, expected, paths=None):
  actual, expected = _flat(actual), _flat(expected)
  for path in paths if paths is not None else expected:
    assert actual[path].dtype == expected[path].dtype, path
    np.testing.assert_array_equal(
      np.asarray(actual[path]), np.asarray(expected[path]), err_msg='/'.join(path)
    )


@pytest.fixture(scope='module')
def mesh():
  return sharding.make_mesh(_config().mesh)


@pytest.fixture(scope='module')
def image_abstract():
  return _abstract_state(_config())


def test_round_trip_is_bitwise_keeps_newest_and_resumes_latest(tmp_path, mesh, image_abstract):
  manager = checkpoints.CheckpointManager(tmp_path, keep=2)
  assert manager.restore_latest(image_abstract) is None
  states = {}
  for step in (10, 20, 30):
    states[step], shardings = _random_state(image_abstract, step, mesh)
    assert manager.save(step, states[step])
  assert not manager.save(30, states[30])  # the same step again is a no-op.
  manager.wait_until_finished()
  assert manager.all_steps() == [20, 30]
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['20', '30']
  manager.close()

  # A new manager (as after a restart) resumes the newest step onto the sharded abstract state.
  manager = checkpoints.CheckpointManager(tmp_path, keep=2)
  restored, step = manager.restore_latest(sharding.with_shardings(image_abstract, shardings))
  assert step == 30
  assert jax.tree.structure(restored) == jax.tree.structure(states[30])
  _assert_equal(restored, states[30])
  kernel = restored.params['denoiser']['conv_in']['kernel']
  assert isinstance(kernel, nnx.Param) and kernel.get_metadata()['out_sharding'][2] == 'conv_in'
  expected_sharding = shardings.params['denoiser']['conv_in']['kernel'].get_value()
  assert kernel.get_value().sharding == expected_sharding
  rng_key = restored.model_state['encoder']['dropout']['rngs']['key']
  assert isinstance(rng_key, nnx.RngKey)
  assert (
    rng_key.get_value().dtype
    == image_abstract.model_state['encoder']['dropout']['rngs']['key'].get_value().dtype
  )
  manager.close()


def test_a_run_starts_as_build_train_state_and_resumes_the_saved_state_into_its_abstract_one(
  tmp_path, monkeypatch
):
  """Run.start_state: without a checkpoint the fresh state equals the one build_train_state
  allocates; with one, the newest is restored bitwise into the run's abstract state (whose
  shardings it keeps), with no fresh state built."""
  seed = int(np.random.default_rng().integers(2**31))
  print(f'seed {seed}')
  config = _config()
  run = run_lib.open_run(config, str(tmp_path), data=None)
  manager = run.checkpoint_manager()
  fresh, step = run.start_state(manager)
  assert step == 0
  _assert_equal(fresh, state_lib.build_train_state(config, run.mesh)[0])

  saved, _ = _random_state(run.model.state, seed, run.mesh)
  manager.save(7, saved, force=True)
  manager.wait_until_finished()
  built = []  # each fresh state the resume builds (it must build none)
  init_state = state_lib.init_state
  monkeypatch.setattr(
    state_lib, 'init_state', lambda *args, **kwargs: built.append(1) or init_state(*args, **kwargs)
  )
  restored, step = run.start_state(manager)
  assert step == 7 and not built
  _assert_equal(restored, saved)
  for leaf, expected in zip(
    jax.tree.leaves(restored), jax.tree.leaves(run.model.shardings), strict=True
  ):
    assert leaf.sharding == expected
  manager.close()


def test_restoring_another_model_size_names_the_parameter_and_shapes(
  tmp_path, mesh, image_abstract
):
  manager = checkpoints.CheckpointManager(tmp_path)
  manager.save(5, _random_state(image_abstract, 0, mesh)[0])
  manager.wait_until_finished()
  bigger = _abstract_state(_config(encoder__mlp_dim=128))
  with pytest.raises(ValueError) as error:
    manager.restore_latest(bigger)
  message = str(error.value)
  assert 'params/encoder/layers/0/mlp/fc1/bias' in message
  assert '(64,)' in message and '(128,)' in message
  assert str(tmp_path / 'checkpoints') in message and 'config' in message
  manager.close()


def _remove_state_folder(step):
  shutil.rmtree(step / checkpoints.ITEM)
  return f'{step} holds no {checkpoints.ITEM!r} item ({step}/state is missing)'


def _garbage_metadata(step):
  metadata = list(step.rglob('_METADATA'))
  assert metadata
  for path in metadata:
    path.write_bytes(b'\xff\xfe garbage \x00')
  return f'{step} cannot be read as a checkpoint'


def _delete_an_array_file(step):
  data = [p for p in (step / checkpoints.ITEM).rglob('*') if p.is_file() and '/d/' in str(p)]
  assert data, sorted(str(p) for p in step.rglob('*'))
  max(data, key=lambda p: p.stat().st_size).unlink()  # the biggest block of arrays
  return f'{step} cannot be restored: a file of it is missing'


@pytest.mark.parametrize(
  'damage',
  [_remove_state_folder, _garbage_metadata, _delete_an_array_file],
  ids=lambda f: f.__name__,
)
def test_a_damaged_step_is_named_with_what_to_do(tmp_path, mesh, image_abstract, damage):
  manager = checkpoints.CheckpointManager(tmp_path)
  manager.save(5, _random_state(image_abstract, 0, mesh)[0])
  manager.close()
  expected = damage(tmp_path / 'checkpoints' / '5')
  manager = checkpoints.CheckpointManager(tmp_path)
  with pytest.raises(ValueError) as error:
    manager.restore_latest(image_abstract)
  message = str(error.value)
  assert expected in message and 'To resume from the step before, remove' in message, message
  manager.close()


@pytest.fixture
def image_run(tmp_path, mesh, image_abstract):
  """A finished image run's workdir (one checkpoint at step 7) and the state it saved."""
  workdir = tmp_path / 'image_run'
  manager = checkpoints.CheckpointManager(workdir)
  state, _ = _random_state(image_abstract, 1, mesh)
  manager.save(7, state)
  manager.close()
  return workdir, state


def _paths(state, field, prefixes=None):
  return [p for p in _flat(state) if p[0] == field and (prefixes is None or p[1] in prefixes)]


def _assert_logged_counts(log: str, state, old, fresh) -> None:
  """The counts init_from logs equal those found by comparing arrays: of the params and BatchNorm
  statistics (random in every state, so equal values tell where one came from), how many hold
  the checkpoint's values, how many their fresh ones, and how many neither (grown)."""
  weights = _paths(fresh, 'params') + [
    p for p in _paths(fresh, 'model_state') if p[-1] in ('mean', 'var')
  ]
  new, saved, initial = _flat(state), _flat(old), _flat(fresh)

  def same(a, b):
    return a.shape == b.shape and np.array_equal(np.asarray(a), np.asarray(b))

  copied = sum(1 for p in weights if p in saved and same(new[p], saved[p]))
  kept = sum(1 for p in weights if same(new[p], initial[p]))
  grown = len(weights) - copied - kept
  assert (
    f'of {len(weights)} parameters and BatchNorm statistics, copied {copied}, grew {grown} ' in log
  ), log
  assert f'kept {kept} fresh (' in log, log


def test_init_from_encoder_copies_only_the_image_encoder(image_run, mesh, caplog):
  workdir, old = image_run
  config = _config(denoiser__dim=8)  # another denoiser: 'all' could not copy it.
  fresh, _ = _random_state(_abstract_state(config), 2, mesh)
  caplog.set_level(logging.INFO)
  state = init_from.restore_for_init(str(workdir), fresh, mode='encoder')
  _assert_logged_counts(caplog.text, state, old, fresh)
  encoder = init_from.ENCODER_MODULES
  _assert_equal(state, old, _paths(fresh, 'params', encoder))
  batch_stats = [p for p in _paths(fresh, 'model_state', encoder) if p[-1] in ('mean', 'var')]
  assert batch_stats
  _assert_equal(state, old, batch_stats)
  _assert_equal(state, fresh, _paths(fresh, 'params', ('denoiser',)))
  _assert_equal(state, fresh, _paths(fresh, 'opt_state') + _paths(fresh, 'step'))
  ema = {('params',) + p[1:]: v for p, v in _flat(state).items() if p[0] == 'ema_params'}
  for path, value in ema.items():
    np.testing.assert_array_equal(value, _flat(state)[path])
  with pytest.raises(ValueError, match=r"params/denoiser/\S+ has shape .*mode='all'"):
    init_from.restore_for_init(str(workdir), fresh, mode='all')


def test_init_from_all_grows_the_denoiser_input_conv_for_video(image_run, mesh, caplog):
  workdir, old = image_run
  config = _config()
  config.task = 'video_panoptic'  # 2 earlier frames' masks: 32 more denoiser input channels.
  fresh, _ = _random_state(_abstract_state(config), 3, mesh)
  step_dir = workdir / 'checkpoints' / '7'
  caplog.set_level(logging.INFO)
  state = init_from.restore_for_init(step_dir, fresh, mode='all')
  _assert_logged_counts(caplog.text, state, old, fresh)

  kernel_path = ('params', 'denoiser', 'conv_in', 'kernel')
  new_kernel = np.asarray(_flat(state)[kernel_path])
  old_kernel = np.asarray(_flat(old)[kernel_path])
  cin_old = old_kernel.shape[2]
  assert new_kernel.shape[2] == cin_old + 32
  np.testing.assert_array_equal(new_kernel[:, :, :cin_old], old_kernel)
  assert not new_kernel[:, :, cin_old:].any()  # the new channels start at zero.
  others = [p for p in _paths(fresh, 'params') if p != kernel_path]
  _assert_equal(state, old, others)
  _assert_equal(state, fresh, _paths(fresh, 'opt_state') + _paths(fresh, 'step'))
  np.testing.assert_array_equal(
    np.asarray(_flat(state)[('ema_params',) + kernel_path[1:]]), new_kernel
  )
  sharded = state.params['denoiser']['conv_in']['kernel'].get_value().sharding
  assert sharded == fresh.params['denoiser']['conv_in']['kernel'].get_value().sharding


def test_init_from_all_rejects_other_mismatches_and_bad_paths(image_run, tmp_path, mesh):
  workdir, _ = image_run
  fresh, _ = _random_state(_abstract_state(_config(encoder__mlp_dim=128)), 4, mesh)
  with pytest.raises(ValueError, match=r'params/encoder/layers/0/mlp/fc1/bias.*\(128,\).*\(64,\)'):
    init_from.restore_for_init(workdir, fresh, mode='all')
  with pytest.raises(ValueError, match="mode='bogus'"):
    init_from.restore_for_init(workdir, fresh, mode='bogus')
  with pytest.raises(FileNotFoundError, match='config.init_from.path'):
    init_from.restore_for_init(tmp_path / 'nowhere', fresh)


def test_a_read_only_manager_changes_nothing_and_restores_the_ema_part(
  tmp_path, mesh, image_abstract
):
  """What evaluation, a follower and predict open beside a live training run."""
  seed = int(np.random.default_rng().integers(1 << 30))
  print('seed', seed)
  writer = checkpoints.CheckpointManager(tmp_path, keep=5)
  state, shardings = _random_state(image_abstract, seed, mesh)
  writer.save(10, state)
  writer.wait_until_finished()
  # The step a live trainer is writing right now: a temporary folder that only it may remove.
  being_written = tmp_path / 'checkpoints' / '20.orbax-checkpoint-tmp-1796655622'
  (being_written / 'state').mkdir(parents=True)
  (being_written / 'state' / 'part').write_bytes(b'half')

  reader = checkpoints.CheckpointManager(tmp_path, read_only=True)
  assert reader.reload() == [10] and reader.latest_step() == 10
  abstract = sharding.with_shardings(image_abstract, shardings)
  ema = {'ema_params': abstract.ema_params, 'ema_model_state': abstract.ema_model_state}
  restored = reader.restore(10, ema, partial=True)
  expected = {'ema_params': state.ema_params, 'ema_model_state': state.ema_model_state}
  _assert_equal(restored, expected)
  with pytest.raises(PermissionError, match='read-only'):
    reader.save(30, state)
  reader.close()
  assert (being_written / 'state' / 'part').read_bytes() == b'half'
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == [
    '10',
    being_written.name,
  ]
  # A workdir without checkpoints is not created by a reader.
  empty = tmp_path / 'not_yet'
  assert checkpoints.CheckpointManager(empty, read_only=True).reload() == []
  assert not empty.exists()
  writer.close()


def test_class_sized_axes_are_the_class_head():
  config = _config()
  config.diffusion.semantic_aux_weight = 1.0
  assert state_lib.class_sized_axes(config) == {
    ('params', 'semantic_head', 'kernel'): 1,
    ('params', 'semantic_head', 'bias'): 0,
  }


def test_init_from_all_starts_the_class_sized_arrays_afresh(tmp_path, mesh, caplog):
  """Fine-tuning a 6-class run on 20 classes: the class head keeps its fresh values (named in
  a warning with both shapes), every other weight is the checkpoint's; any other mismatch is
  still an error naming the array."""
  seed = int(np.random.default_rng().integers(1 << 30))
  print('seed', seed)
  configs = {}
  for num_classes in (6, 20):
    configs[num_classes] = config = _config(num_classes=num_classes)
    config.diffusion.semantic_aux_weight = 1.0
  old, _ = _random_state(_abstract_state(configs[6]), seed, mesh)
  manager = checkpoints.CheckpointManager(tmp_path / 'six_classes')
  manager.save(3, old)
  manager.close()
  fresh, _ = _random_state(_abstract_state(configs[20]), seed + 1, mesh)
  class_sized = state_lib.class_sized_axes(configs[20])
  caplog.set_level(logging.INFO)
  state = init_from.restore_for_init(
    tmp_path / 'six_classes', fresh, 'all', class_sized=class_sized
  )

  head = [('params', 'semantic_head', 'kernel'), ('params', 'semantic_head', 'bias')]
  _assert_equal(state, fresh, head)
  warning = [
    r.getMessage()
    for r in caplog.records
    if r.levelno == logging.WARNING and r.getMessage().startswith('init_from')
  ]
  assert len(warning) == 1 and 'the class count differs, so 2 arrays' in warning[0], warning
  width = configs[20].model.fusion.dim
  assert f'params/semantic_head/kernel ({width}, 6) in the checkpoint, ({width}, 20)' in warning[0]
  assert 'params/semantic_head/bias (6,) in the checkpoint, (20,) in the model' in warning[0]
  weights = [p for p in _paths(fresh, 'params') if p not in head] + [
    p for p in _paths(fresh, 'model_state') if p[-1] in ('mean', 'var')
  ]
  _assert_equal(state, old, weights)
  _assert_logged_counts(caplog.text, state, old, fresh)
  assert '(2 of them re-initialised for the class count)' in caplog.text
  ema = _flat(state)
  for path in head:
    np.testing.assert_array_equal(ema[('ema_params',) + path[1:]], ema[path])

  with pytest.raises(ValueError, match=r'params/semantic_head/(kernel|bias) has shape'):
    init_from.restore_for_init(tmp_path / 'six_classes', fresh, 'all')  # no class axes given
  other = _config(num_classes=20, encoder__mlp_dim=128)
  other.diffusion.semantic_aux_weight = 1.0
  wider, _ = _random_state(_abstract_state(other), seed + 2, mesh)
  with pytest.raises(ValueError, match=r'params/encoder/layers/0/mlp/fc1/bias.*\(128,\).*\(64,\)'):
    init_from.restore_for_init(
      tmp_path / 'six_classes', wider, 'all', class_sized=state_lib.class_sized_axes(other)
    )
