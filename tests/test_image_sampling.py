"""Several samples per image (config.eval.num_samples): one sample is today's prediction bit for
bit; K samples come from independent noise in one program with the encoder run once per image.

The tiny image model with every weight drawn at random, small enough not to saturate (its own
initialisation zeroes the output layer, which would make every sample alike whatever the noise).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes
from pix2seq_d.loops import state as state_lib
from pix2seq_d.models import sampling
from pix2seq_d.tasks import registry


@pytest.fixture(scope='module')
def setup():
  seed = int(np.random.SeedSequence().entropy % 2**31)
  print('seed', seed)
  rng = np.random.default_rng(seed)
  config = shapes.get_config('tiny')
  config.diffusion.steps = 3
  model = state_lib.build_model(config, rngs=nnx.Rngs(0))
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.1, p.shape), p.dtype), params)
  images = jnp.asarray(rng.uniform(size=(2, 32, 32, 3)), jnp.float32)
  return config, graphdef, params, rest, images, jax.random.key(seed)


def _task_sample(config, num_samples, graphdef, params, rest, images, key):
  config = config.copy_and_resolve_references()
  config.eval.num_samples = num_samples
  task = registry.get_task(config)
  return jax.jit(lambda p, s, x, k: task.sample(graphdef, p, s, {'image': x}, k))(
    params, rest, images, key
  )


@pytest.mark.slow
def test_one_sample_is_todays_prediction(setup):
  config, graphdef, params, rest, images, key = setup
  today = jax.jit(lambda p, s, x, k: sampling.sample_ids(nnx.merge(graphdef, p, s), x, k, config))(
    params, rest, images, key
  )
  one = _task_sample(config, 1, graphdef, params, rest, images, key)
  assert one.shape == (2, 16, 16, 2)
  np.testing.assert_array_equal(np.asarray(one), np.asarray(today))


@pytest.mark.slow
def test_k_samples_differ_and_the_encoder_runs_once_per_image(setup):
  config, graphdef, params, rest, images, key = setup
  several = np.asarray(_task_sample(config, 4, graphdef, params, rest, images, key))
  assert several.shape == (2, 4, 16, 16, 2)
  # Independent noise: no two of an image's samples are the same analog bits (the decoded ids of
  # random weights may saturate to one map whatever the noise).
  analog = jax.jit(
    lambda p, s, x, k: sampling.sample_bits(nnx.merge(graphdef, p, s), x, k, config, num_samples=4)
  )(params, rest, images, key)
  for image in np.asarray(analog).reshape((2, 4, -1)):
    assert len({sample.tobytes() for sample in image}) == 4

  config4 = config.copy_and_resolve_references()
  config4.eval.num_samples = 4
  task = registry.get_task(config4)
  jaxpr = jax.make_jaxpr(lambda p, s, x, k: task.sample(graphdef, p, s, {'image': x}, k))(
    params, rest, images, key
  )

  def image_convs(jaxpr):
    """Batch sizes of the convolutions that read 3-channel inputs (the ResNet stem)."""
    found = []
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated' and eqn.invars[0].aval.shape[-1] == 3:
        found.append(eqn.invars[0].aval.shape[0])
      for param in eqn.params.values():
        inner = getattr(param, 'jaxpr', param)
        if hasattr(inner, 'eqns'):
          found += image_convs(inner)
    return found

  assert image_convs(jaxpr.jaxpr) == [2]  # once, on the 2 images, not on 2 x 4 copies
