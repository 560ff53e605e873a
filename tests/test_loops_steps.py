"""The train step's gradient accumulation (config.train.microbatches): the same update as the
whole batch, memory that follows the microbatch, and batch sizes checked before compiling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes
from pix2seq_d.loops import state as state_lib
from pix2seq_d.loops import steps
from pix2seq_d.parallel import sharding
from pix2seq_d.tools import benchmark


def _seed():
  seed = int(np.random.SeedSequence().entropy % 2**31)
  print('seed', seed)
  return seed


def _tiny_config(batch_size, microbatches=1):
  config = shapes.get_config('tiny')
  config.model.encoder.dropout = 0.0
  config.model.encoder.drop_path = 0.0
  config.train.batch_size = batch_size
  config.train.microbatches = microbatches
  return config


def _model_without_batch_statistics(config):
  """The model in training mode with BatchNorm on its running averages: without statistics of
  the batch, an example's gradient does not depend on the other examples of its batch."""
  model = state_lib.build_model(config, rngs=nnx.Rngs(params=config.seed, dropout=1))
  model.train()
  frozen = 0
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.BatchNorm):
      module.use_running_average = True
      frozen += 1
  assert frozen  # the ResNet has BatchNorm: the test would not see it otherwise
  return model


@pytest.mark.slow
def test_microbatched_update_equals_the_full_batch_update():
  seed = _seed()
  batch_size, count = 8, 4
  config = _tiny_config(batch_size, count)
  batch = benchmark.synthetic_batch(config, batch_size, seed=seed)
  key = jax.random.key(seed)
  model = _model_without_batch_statistics(config)
  tx = steps.make_optimizer(config.train)
  graphdef = nnx.graphdef(model)
  state = steps.create_train_state(model, tx)

  step = jax.jit(functools.partial(steps.train_step, graphdef, config=config, tx=tx))
  new_state, metrics = step(state, batch, key)

  # The whole batch in one pass, with each row given the t and noise its microbatch drew.
  micro_shape = (batch_size // count,) + batch['label'].shape[1:]
  draws = [steps.draw_noise(steps.microbatch_key(key, j, count), micro_shape) for j in range(count)]
  # Microbatch j holds rows j, j + count, ...: row i * count + j is row i of microbatch j.
  t = jnp.stack([d[0] for d in draws], axis=1).reshape(batch_size)
  noise = jnp.stack([d[1] for d in draws], axis=1).reshape((batch_size,) + draws[0][1].shape[1:])

  def full_loss(params):
    merged = nnx.merge(graphdef, params, state.model_state, copy=True)
    return steps.diffusion_loss(merged, batch, key, config, draws=(t, noise))[0]

  loss, grads = jax.jit(jax.value_and_grad(full_loss))(state.params)
  updates, _ = tx.update(grads, state.opt_state, state.params)
  expected = jax.tree.map(jnp.add, state.params, updates)

  assert float(metrics['loss']) == pytest.approx(float(loss), rel=1e-5)
  got_norm = float(metrics['grad_norm'])
  assert got_norm == pytest.approx(
    float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))), rel=1e-4
  )
  for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
  assert int(new_state.step) == 1  # one optimiser update for the four microbatches


def _compiled_temp_bytes(batch_size, microbatches):
  config = _tiny_config(batch_size, microbatches)
  mesh = sharding.make_mesh(config.mesh)
  state, shardings, graphdef, _, tx = state_lib.build_train_state(config, mesh, abstract=True)
  local = benchmark.synthetic_batch(config, batch_size)
  batch = {
    name: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding.batch_sharding(mesh))
    for name, value in local.items()
  }
  step = state_lib.jit_train_step(config, tx, graphdef, shardings, mesh)
  compiled = step.lower(state, batch, jax.random.key(0)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_step_memory_follows_the_microbatch_not_the_batch():
  # Microbatches of 4 at two global batches: the compiled step's temporaries barely differ,
  # although the batch is 4x larger (one pass over 16 rows needs about 3x those of 4 rows).
  small, large = _compiled_temp_bytes(8, 2), _compiled_temp_bytes(32, 8)
  print('temporaries (bytes): batch 8 in 2 microbatches', small, '32 in 8', large)
  assert large < 1.25 * small


@pytest.mark.parametrize(
  'field, value, message',
  [
    (
      'train.batch_size',
      6,
      r'config.train.batch_size=6: must be a multiple of the 4 data-parallel',
    ),
    ('eval.batch_size', 2, r'config.eval.batch_size=2: must be a multiple of the 4'),
    ('train.microbatches', 4, r'config.train.microbatches=4: must divide the 2 training rows'),
  ],
)
def test_batches_that_do_not_split_over_the_devices_are_named(field, value, message):
  config = _tiny_config(8)
  config.eval.batch_size = 8
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    sharding.check_batch_sizes(config, 4)  # four data-parallel devices
  sharding.check_batch_sizes(_tiny_config(8, 2), 4)
