"""Noise schedules gamma(t) for t in [0, 1]: gamma(0) ~ 1 (clean), gamma(1) ~ 0 (noise).

x_t = sqrt(gamma(t)) * x0 + sqrt(1 - gamma(t)) * eps.
"""

import math

import jax
import jax.numpy as jnp

from pix2seq_d.config import checks

GAMMA_MIN = 1e-9  # keeps 1 / sqrt(gamma) and the log-SNR finite at t = 1.


def cosine(t: jax.Array, ns: float = 2e-4, ds: float = 2.5e-4) -> jax.Array:
  """The paper's cosine schedule: cos^2(((t + ns) / (1 + ds)) * pi / 2), clipped to >= GAMMA_MIN."""
  gamma = jnp.cos(((t + ns) / (1.0 + ds)) * math.pi / 2.0) ** 2
  return jnp.clip(gamma, GAMMA_MIN, 1.0)


def sigmoid(t: jax.Array, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> jax.Array:
  """A sigmoid-shaped gamma: 1 at t = 0 falling to 0 at t = 1 (the TF reference's variant)."""
  v_start = jax.nn.sigmoid(start / tau)
  v_end = jax.nn.sigmoid(end / tau)
  value = jax.nn.sigmoid((t * (end - start) + start) / tau)
  return jnp.clip((v_end - value) / (v_end - v_start), GAMMA_MIN, 1.0)


def linear(t: jax.Array) -> jax.Array:
  """gamma = 1 - t, clipped to >= GAMMA_MIN."""
  return jnp.clip(1.0 - t, GAMMA_MIN, 1.0)


SCHEDULES = {'cosine': cosine, 'sigmoid': sigmoid, 'linear': linear}


def get_schedule(name: str):
  """The gamma function called `name` (config.diffusion.schedule)."""
  checks.check_choice('diffusion.schedule', name, tuple(SCHEDULES))
  return SCHEDULES[name]


def q_sample(x0: jax.Array, gamma: jax.Array, noise: jax.Array) -> jax.Array:
  """x0, noise (B, ...), gamma (B,) -> x_t = sqrt(gamma) x0 + sqrt(1 - gamma) noise."""
  gamma = gamma.reshape(gamma.shape + (1,) * (x0.ndim - 1))
  return jnp.sqrt(gamma) * x0 + jnp.sqrt(1.0 - gamma) * noise
