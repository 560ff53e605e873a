"""A tiny Pix2Seq-D memorises one batch of synthetic masks on the CPU and samples them back."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes
from pix2seq_d.loops import state as state_lib
from pix2seq_d.loops import steps
from pix2seq_d.tasks import registry


def synthetic_batch(seed, batch_size, image_size, mask_size):
  """Rectangles of random classes / instance ids over a stuff background, colour-coded by class.

  Returns image (B, H, W, 3) float32 and label (B, Hm, Wm, 2) int32.
  """
  rng = np.random.default_rng(seed)
  scale = image_size // mask_size
  label = np.zeros((batch_size, mask_size, mask_size, 2), np.int32)
  label[..., 0] = 4  # a stuff class covering the background.
  label[..., 1] = rng.integers(1, 16, (batch_size, 1, 1))
  image = np.full((batch_size, image_size, image_size, 3), 0.2, np.float32)
  for b in range(batch_size):
    ids = rng.permutation(np.arange(1, 16))
    ids = ids[ids != label[b, 0, 0, 1]]
    for k in range(rng.integers(2, 4)):
      y, x = rng.integers(0, mask_size - 5, 2)
      size = rng.integers(3, 6)
      cls = rng.integers(1, 4)
      label[b, y : y + size, x : x + size] = (cls, ids[k])
      colour = rng.uniform(0.5, 1.0) * np.eye(3)[cls - 1] + 0.1
      image[b, scale * y : scale * (y + size), scale * x : scale * (x + size)] = colour
  return image, label


@pytest.mark.slow
def test_tiny_model_overfits_one_batch_and_samples_it():
  config = shapes.get_config('tiny')
  config.train.learning_rate = 5e-3
  config.train.warmup_steps = 10
  config.train.num_steps = 300
  config.train.ema_decay = 0.0  # sample with the trained weights themselves.
  seed = np.random.SeedSequence().entropy % 2**32
  print(f'overfit batch seed: {seed}')
  image, label = synthetic_batch(seed, 4, 32, 16)
  batch = {'image': jnp.asarray(image), 'label': jnp.asarray(label)}

  model = state_lib.build_model(config, rngs=nnx.Rngs(0))
  tx = steps.make_optimizer(config.train)
  state = steps.create_train_state(model, tx)
  model.train()
  train_graphdef = nnx.graphdef(model)
  model.eval()
  eval_graphdef = nnx.graphdef(model)
  train_step = jax.jit(functools.partial(steps.train_step, train_graphdef, config=config, tx=tx))

  losses = []
  key = jax.random.key(0)
  for step in range(config.train.num_steps):
    state, metrics = train_step(state, batch, jax.random.fold_in(key, step))
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses))
  assert losses[0] / losses[-1] >= 5, losses[::25]

  predict = jax.jit(functools.partial(registry.get_task(config).sample, eval_graphdef))
  pred = np.asarray(
    predict(state.params, state.model_state, {'image': batch['image']}, jax.random.key(1))
  )
  accuracy = np.mean(np.all(pred == label, axis=-1))
  assert accuracy >= 0.95, (accuracy, seed)


def test_semantic_aux_loss_adds_to_the_loss_and_trains_the_class_head():
  seed = np.random.SeedSequence().entropy % 2**32
  print(f'semantic aux seed: {seed}')
  rng = np.random.default_rng(seed)
  config = shapes.get_config('tiny')
  assert state_lib.build_model(config, rngs=nnx.Rngs(0)).semantic_head is None  # as the paper
  weight = float(rng.uniform(0.5, 2.0))
  config.diffusion.semantic_aux_weight = weight
  config.train.warmup_steps = 5
  config.train.learning_rate = 5e-3
  image, label = synthetic_batch(seed, 4, 32, 16)
  batch = {'image': jnp.asarray(image), 'label': jnp.asarray(label)}
  model = state_lib.build_model(config, rngs=nnx.Rngs(0))
  model.train()

  # The total is the diffusion loss plus weight x the head's class cross-entropy (same noise).
  key = jax.random.key(int(rng.integers(2**31)))
  without = config.copy_and_resolve_references()
  without.diffusion.semantic_aux_weight = 0.0

  def loss_under(cfg):
    return nnx.jit(functools.partial(steps.diffusion_loss, config=cfg))(model, batch, key)

  total, metrics = loss_under(config)
  diffusion_only, _ = loss_under(without)
  assert float(total) == pytest.approx(
    float(diffusion_only) + weight * float(metrics['semantic_loss']), rel=1e-4
  )

  tx = steps.make_optimizer(config.train)
  state = steps.create_train_state(model, tx)
  graphdef = nnx.graphdef(model)
  train_step = jax.jit(functools.partial(steps.train_step, graphdef, config=config, tx=tx))
  semantic = []
  for step in range(80):
    state, metrics = train_step(state, batch, jax.random.fold_in(key, step))
    semantic.append(float(metrics['semantic_loss']))
  assert semantic[-1] < 0.3 * semantic[0], semantic[::10]
  model.eval()
  nnx.update(model, state.params, state.model_state)
  predicted = np.asarray(model.semantic_logits(model.encode(batch['image'])).argmax(-1))
  assert np.mean(predicted == label[..., 0]) >= 0.9
