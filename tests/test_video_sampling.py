"""Streaming video sampling (models.sampling.sample_video): what each frame's mask may depend on.

Exact invariants of the scan over frames, on a tiny video model with random weights: a frame
never depends on later frames; in streaming mode it depends on the model's own earlier
predictions; with ground-truth conditioning or single frames it does not.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes
from pix2seq_d.loops import state as state_lib
from pix2seq_d.models import sampling


def _video_model():
  config = shapes.get_config('tiny')
  config.task = 'video_panoptic'
  config.model.max_instances = 16
  config.diffusion.steps = 3
  model = state_lib.build_model(config, rngs=nnx.Rngs(0))
  model.eval()
  return model, config


def _sampler(model, config, **kwargs):
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(frames, key, gt_cond=None):
    return sampling.sample_video(
      nnx.merge(graphdef, state),
      frames,
      key,
      config,
      first_steps=3,
      later_steps=2,
      gt_cond=gt_cond,
      **kwargs,
    )

  return run


@pytest.mark.slow
def test_frames_depend_on_the_past_only_as_the_mode_says():
  seed = int(np.random.SeedSequence().entropy % 2**31)
  print('seed', seed)
  rng = np.random.default_rng(seed)
  model, config = _video_model()
  frames = jnp.asarray(rng.uniform(size=(2, 5, 32, 32, 3)), jnp.float32)
  changed_first = frames.at[:, 0].set(jnp.asarray(rng.uniform(size=(2, 32, 32, 3)), jnp.float32))
  changed_last = frames.at[:, -1].set(0.5)
  key = jax.random.key(seed)

  stream = _sampler(model, config)
  out = np.asarray(stream(frames, key))
  assert out.shape == (2, 5, 16, 16, 2) and out.dtype == np.int32
  # Causal: the last frame changes nothing before it.
  np.testing.assert_array_equal(np.asarray(stream(changed_last, key))[:, :-1], out[:, :-1])
  # Streaming: frame 0's prediction conditions frame 1 (and on), so changing frame 0's image
  # changes later predictions through the model's own masks.
  assert not np.array_equal(np.asarray(stream(changed_first, key))[:, 1:], out[:, 1:])

  gt = jnp.asarray(rng.integers(0, 6, size=(2, 5, 16, 16, 2)), jnp.int32)
  with_gt = functools.partial(_sampler(model, config), gt_cond=gt)
  # Ground-truth conditioning: earlier images no longer reach later frames, the masks do.
  np.testing.assert_array_equal(
    np.asarray(with_gt(changed_first, key))[:, 1:], np.asarray(with_gt(frames, key))[:, 1:]
  )
  other_gt = gt.at[:, 0].set(0)
  assert not np.array_equal(
    np.asarray(stream(frames, key, other_gt))[:, 1:3], np.asarray(with_gt(frames, key))[:, 1:3]
  )

  # Single frames: each frame on its own.
  single = _sampler(model, config, single_frames=True)
  np.testing.assert_array_equal(
    np.asarray(single(changed_first, key))[:, 1:], np.asarray(single(frames, key))[:, 1:]
  )


@pytest.mark.slow
def test_any_number_of_frames_including_one():
  model, config = _video_model()
  run = _sampler(model, config)
  key = jax.random.key(0)
  for length in (1, 2, 4):
    out = run(jnp.zeros((1, length, 32, 32, 3)), key)
    assert out.shape == (1, length, 16, 16, 2)
