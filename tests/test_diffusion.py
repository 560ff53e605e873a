"""Analog bits, schedules, the loss weights and the lax.scan sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pix2seq_d.diffusion import bits, losses, sampler, schedules


def _random_label(seed, shape=(3, 9, 11), num_classes=256, max_instances=256):
  rng = np.random.default_rng(seed)
  label = np.stack([rng.integers(0, num_classes, shape), rng.integers(0, max_instances, shape)], -1)
  label.reshape(-1, 2)[:2] = [[0, 0], [255, 255]]  # always include the extremes.
  return jnp.asarray(label, jnp.int32)


def test_int_bits_least_significant_first():
  np.testing.assert_array_equal(bits.int_to_bits(jnp.array(6)), [0, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(bits.int_to_bits(jnp.array(255)), [1] * 8)
  assert int(bits.bits_to_int(jnp.array([1, 0, 0, 0, 0, 0, 0, 1]))) == 129


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_panoptic_bits_round_trip(seed):
  label = _random_label(seed)
  analog = bits.label_to_bits(label, 0.1)
  assert analog.shape == label.shape[:-1] + (16,)
  np.testing.assert_allclose(np.abs(analog), 0.1)
  # 8 + 8 layout: the first 8 bits are the semantic channel.
  np.testing.assert_array_equal(bits.bits_to_int(analog[..., :8] > 0), label[..., 0])
  np.testing.assert_array_equal(bits.bits_to_label(analog), label)
  # Small noise below the threshold does not change the decoded ids.
  noisy = analog + 0.09 * jax.random.uniform(jax.random.key(seed), analog.shape, minval=-1)
  np.testing.assert_array_equal(bits.bits_to_label(noisy), label)


def test_bits_to_panoptic_clamps_to_the_valid_ranges():
  label = jnp.array([[200, 250], [3, 4]])
  decoded = bits.bits_to_panoptic(
    bits.label_to_bits(label, 0.1), num_classes=134, max_instances=101
  )
  np.testing.assert_array_equal(decoded, [[133, 100], [3, 4]])


def test_logits_to_analog_is_the_expected_bits():
  ids = jnp.array([[5, 200]])
  confident = 50.0 * jax.nn.one_hot(ids, 256)  # (1, 2, 256)
  np.testing.assert_allclose(
    bits.logits_to_analog(confident, 0.1), bits.label_to_bits(ids, 0.1), atol=1e-6
  )
  uniform = bits.logits_to_analog(jnp.zeros((1, 2, 256)), 0.1)
  np.testing.assert_allclose(uniform, 0.0, atol=1e-7)


def test_cosine_schedule_values():
  t = jnp.linspace(0.0, 1.0, 11)
  gamma = schedules.cosine(t)
  assert float(gamma[0]) > 0.9999 and 1e-9 <= float(gamma[-1]) < 1e-8
  assert np.all(np.diff(np.asarray(gamma)) <= 0)
  expected = np.clip(np.cos(((0.3 + 2e-4) / (1 + 2.5e-4)) * np.pi / 2) ** 2, 1e-9, 1)
  assert float(schedules.cosine(jnp.float32(0.3))) == pytest.approx(expected, rel=1e-6)
  for name in ('sigmoid', 'linear'):
    values = np.asarray(schedules.get_schedule(name)(t))
    assert values[0] == pytest.approx(1.0, abs=1e-6) and values[-1] < 1e-6
    assert np.all(np.diff(values) <= 0)
  with pytest.raises(ValueError, match='config.diffusion.schedule'):
    schedules.get_schedule('cosine2')


def test_q_sample_mixes_signal_and_noise():
  x0 = jnp.ones((2, 3, 3, 16))
  noise = -jnp.ones_like(x0)
  x_t = schedules.q_sample(x0, jnp.array([1.0, 0.25]), noise)
  np.testing.assert_allclose(x_t[0], 1.0)
  np.testing.assert_allclose(x_t[1], 0.5 - np.sqrt(0.75), rtol=1e-6)


def test_pixel_weights_mean_one_and_favour_small_instances():
  rng = np.random.default_rng(7)
  instance = np.zeros((2, 16, 16), np.int32)
  instance[0, :4, :4] = 1 + rng.integers(0, 3)  # small instance.
  instance[0, 8:, :] = 5  # large instance.
  instance[1] = rng.integers(0, 4, (16, 16))
  weights = losses.instance_pixel_weights(jnp.asarray(instance), 8, 0.2)
  np.testing.assert_allclose(weights.mean(axis=(1, 2)), 1.0, rtol=1e-5)
  small, large, background = weights[0, 0, 0], weights[0, 15, 0], weights[0, 6, 6]
  assert small > background > large
  counts = np.array([(instance[0] == k).sum() for k in (instance[0, 0, 0], 5)])
  ratio = (counts[1] + 1) ** 0.2 / (counts[0] + 1) ** 0.2
  assert float(small / large) == pytest.approx(ratio, rel=1e-5)
  uniform = losses.instance_pixel_weights(jnp.asarray(instance), 8, 0.0)
  np.testing.assert_allclose(uniform, 1.0)


def test_softmax_xent_loss_is_weighted_mean():
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.normal(size=(2, 4, 4, 2, 256)), jnp.float32)
  label = jnp.asarray(rng.integers(0, 256, (2, 4, 4, 2)))
  weights = jnp.asarray(rng.uniform(0.5, 1.5, (2, 4, 4)), jnp.float32)
  nll = -np.take_along_axis(
    np.asarray(jax.nn.log_softmax(logits)), np.asarray(label)[..., None], -1
  )[..., 0]
  expected = np.mean(nll * np.asarray(weights)[..., None])
  assert float(losses.softmax_xent_loss(logits, label, weights)) == pytest.approx(expected, 1e-5)


def test_semantic_loss_is_the_mean_class_cross_entropy():
  seed = np.random.SeedSequence().entropy % 2**32
  print(f'semantic loss seed: {seed}')
  rng = np.random.default_rng(seed)
  num_classes = int(rng.integers(2, 140))
  logits = rng.normal(size=(2, 5, 3, num_classes)).astype(np.float32)
  semantic = rng.integers(0, num_classes, (2, 5, 3))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  expected = -np.mean(np.log(np.take_along_axis(probs, semantic[..., None], -1)))
  got = float(losses.semantic_loss(jnp.asarray(logits), jnp.asarray(semantic)))
  assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('steps, td', [(1, 0.0), (5, 1.0), (10, 2.0), (20, 0.5)])
def test_time_grid_monotone_and_non_negative(steps, td):
  t_now, t_next = (np.asarray(t) for t in sampler.time_grid(steps, td))
  assert t_now[0] == 1.0 and np.all(np.diff(t_now) < 0)
  assert np.all(t_next >= 0.0) and np.all(t_next < t_now) and np.all(np.diff(t_next) <= 0)
  assert t_next[-1] == 0.0


def _oracle(x0):
  return lambda x_t, gamma, x0_prev: jnp.broadcast_to(x0, x_t.shape)


@pytest.mark.parametrize('name', ['ddim', 'ddpm'])
def test_sampler_with_perfect_oracle_returns_x0(name):
  label = _random_label(11, (2, 6, 5))
  x0 = bits.label_to_bits(label, 0.1)
  out = sampler.sample(
    _oracle(x0),
    x0.shape,
    jax.random.key(0),
    steps=8,
    td=1.0,
    schedule='cosine',
    sampler=name,
    b_scale=0.1,
  )
  np.testing.assert_allclose(out, x0, atol=1e-7)
  np.testing.assert_array_equal(bits.bits_to_label(out), label)


def test_ddim_step_from_true_noise_recovers_x0():
  """DDIM's update is exact when the x0 estimate is exact: x_next = q_sample(x0, gamma_next)."""
  x0 = bits.label_to_bits(_random_label(5, (1, 4, 4)), 0.1)
  noise = jax.random.normal(jax.random.key(1), x0.shape)
  x_t = schedules.q_sample(x0, jnp.array([0.3]), noise)
  x_next = sampler.ddim_step(x_t, x0, 0.3, 0.8, None)
  np.testing.assert_allclose(x_next, schedules.q_sample(x0, jnp.array([0.8]), noise), atol=1e-6)


def test_sampler_shape_determinism_and_self_conditioning_input():
  seen = []

  def predict(x_t, gamma, x0_prev):
    seen.append(x0_prev.shape)
    return jnp.tanh(x_t + x0_prev) * 0.1

  run = lambda key, name='ddim': sampler.sample(
    predict, (2, 4, 6, 16), key, steps=4, td=1.0, schedule='cosine', sampler=name, b_scale=0.1
  )
  a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
  assert a.shape == (2, 4, 6, 16) and seen[0] == (2, 4, 6, 16)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  np.testing.assert_array_equal(run(jax.random.key(3), 'ddpm'), run(jax.random.key(3), 'ddpm'))
  with pytest.raises(ValueError, match='config.diffusion.sampler'):
    run(jax.random.key(0), 'euler')


def _noisy_predict(calls=None):
  """A denoiser stand-in whose estimate depends on x_t; records (x_t, gamma) of every call."""

  def predict(x_t, gamma, x0_prev):
    if calls is not None:
      jax.debug.callback(lambda x, g: calls.append((np.asarray(x), np.asarray(g))), x_t, gamma)
    return jnp.tanh(3.0 * x_t) * 0.1

  return predict


@pytest.mark.parametrize('name', ['ddim', 'ddpm'])
def test_refinement_from_t0_one_is_plain_sampling(name):
  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  x0_in = bits.label_to_bits(_random_label(seed, (2, 5, 7)), 0.1)
  kwargs = dict(steps=6, td=1.0, schedule='cosine', sampler=name, b_scale=0.1)
  key = jax.random.key(seed)
  plain = sampler.sample(_noisy_predict(), x0_in.shape, key, **kwargs)
  refined = sampler.sample(_noisy_predict(), x0_in.shape, key, start=(x0_in, 1.0), **kwargs)
  np.testing.assert_array_equal(np.asarray(refined), np.asarray(plain))


def test_refinement_noises_the_input_to_t0_and_runs_the_remaining_steps():
  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  x0_in = bits.label_to_bits(_random_label(seed, (2, 5, 7)), 0.1)
  key = jax.random.key(seed)
  calls = []
  sampler.sample(
    _noisy_predict(calls),
    x0_in.shape,
    key,
    steps=10,
    td=0.0,
    schedule='cosine',
    sampler='ddim',
    b_scale=0.1,
    start=(x0_in, 0.4),
  )
  assert len(calls) == sampler.refine_steps(10, 0.4) == 4
  gamma = float(schedules.cosine(jnp.float32(0.4)))
  first_x, first_gamma = calls[0]
  np.testing.assert_allclose(first_gamma, gamma, rtol=1e-6)
  noise = jax.random.normal(jax.random.split(key)[0], x0_in.shape)
  np.testing.assert_allclose(
    first_x, np.sqrt(gamma) * x0_in + np.sqrt(1 - gamma) * noise, rtol=1e-5, atol=1e-6
  )
  # The remaining grid, scaled into [0, 0.4]: 0.4, 0.3, 0.2, 0.1.
  np.testing.assert_allclose(
    [float(g[0]) for _, g in calls], schedules.cosine(jnp.array([0.4, 0.3, 0.2, 0.1])), rtol=1e-6
  )


@pytest.mark.parametrize('name', ['ddim', 'ddpm'])
def test_known_pixels_are_held_exactly_and_noised_to_each_level(name):
  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  rng = np.random.default_rng(seed)
  x0_known = bits.label_to_bits(_random_label(seed, (2, 24, 24)), 0.1)
  mask = jnp.asarray(rng.uniform(size=(2, 24, 24, 1)) < 0.5)
  calls = []
  out = sampler.sample(
    _noisy_predict(calls),
    x0_known.shape,
    jax.random.key(seed),
    steps=5,
    td=0.0,
    schedule='cosine',
    sampler=name,
    b_scale=0.1,
    known=(x0_known, mask),
  )
  held = np.broadcast_to(np.asarray(mask), out.shape)
  np.testing.assert_array_equal(np.asarray(out)[held], np.asarray(x0_known)[held])
  assert not np.allclose(np.asarray(out)[~held], np.asarray(x0_known)[~held])
  for x_t, gamma in calls[1:]:  # after the first update: known pixels at the step's level
    g = float(gamma[0])
    eps = (x_t[held] - np.sqrt(g) * np.asarray(x0_known)[held]) / np.sqrt(1 - g)
    assert abs(eps.mean()) < 0.1 and abs(eps.std() - 1.0) < 0.1, (g, eps.mean(), eps.std())
