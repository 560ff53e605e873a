"""The Pix2Seq-D sampler: DDIM or DDPM over analog bits, written as one `jax.lax.scan`.

The caller encodes the image once and closes `predict_x0` over the encoder output, so each scan
step costs one denoiser pass and nothing else.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from pix2seq_d.diffusion import schedules

# predict_x0(x_t (B, ...), gamma (B,), x0_prev (B, ...)) -> x0 estimate (B, ...).
PredictX0 = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def time_grid(steps: int, td: float) -> tuple[jax.Array, jax.Array]:
  """Asymmetric time intervals: t_now = 1 - i / T, t_next = max(1 - (i + 1 + td) / T, 0).

  Returns:
    (t_now, t_next), each (steps,) float32.
  """
  index = jnp.arange(steps, dtype=jnp.float32)
  t_now = 1.0 - index / steps
  t_next = jnp.maximum(1.0 - (index + 1.0 + td) / steps, 0.0)
  return t_now, t_next


def ddim_step(x_t, x0, gamma_now, gamma_next, key):
  """Deterministic DDIM (eta 0) update from t_now to t_next; `key` is unused."""
  del key
  eps = (x_t - jnp.sqrt(gamma_now) * x0) / jnp.sqrt(1.0 - gamma_now)
  return jnp.sqrt(gamma_next) * x0 + jnp.sqrt(1.0 - gamma_next) * eps


def ddpm_step(x_t, x0, gamma_now, gamma_next, key):
  """Ancestral DDPM update from t_now to t_next with fresh Gaussian noise."""
  alpha = gamma_now / gamma_next
  eps = (x_t - jnp.sqrt(gamma_now) * x0) / jnp.sqrt(1.0 - gamma_now)
  mean = (x_t - (1.0 - alpha) / jnp.sqrt(1.0 - gamma_now) * eps) / jnp.sqrt(alpha)
  noise = jax.random.normal(key, x_t.shape, x_t.dtype)
  return mean + jnp.sqrt(jnp.clip(1.0 - alpha, 0.0, 1.0)) * noise


SAMPLERS = {'ddim': ddim_step, 'ddpm': ddpm_step}


def sample(
  predict_x0: PredictX0,
  shape: tuple[int, ...],
  key: jax.Array,
  *,
  steps: int,
  td: float,
  schedule: str,
  sampler: str,
  b_scale: float,
  x0_clip: bool = True,
) -> jax.Array:
  """Generates analog bits from Gaussian noise.

  Args:
    predict_x0: the denoiser as an x0 estimator; x0_prev is the previous step's estimate (zeros at
      the first step), which a self-conditioned model consumes and others ignore.
    shape: (B, Hm, Wm, bits) of the sample.
    key: PRNG key for the initial noise (and DDPM's per-step noise).
    steps: number of denoiser calls T.
    td: the asymmetric time interval (0 = symmetric).
    schedule: name of the gamma schedule.
    sampler: 'ddim' or 'ddpm'.
    b_scale: the analog-bit scale; x0 estimates are clipped to [-b_scale, b_scale].
    x0_clip: whether to clip the x0 estimates.

  Returns:
    The last x0 estimate, (B, Hm, Wm, bits) float32 (not x at t_next).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f'config.diffusion.sampler={sampler!r}: choose one of {sorted(SAMPLERS)}.')
  if steps < 1:
    raise ValueError(f'config.diffusion.steps={steps} must be at least 1.')
  gamma_fn = schedules.get_schedule(schedule)
  update = SAMPLERS[sampler]
  init_key, step_key = jax.random.split(key)
  x_init = jax.random.normal(init_key, shape, jnp.float32)
  t_now, t_next = time_grid(steps, td)
  batch_ones = jnp.ones((shape[0],), jnp.float32)

  def body(carry, inputs):
    x_t, x0_prev = carry
    time_now, time_next, key = inputs
    gamma_now, gamma_next = gamma_fn(time_now), gamma_fn(time_next)
    x0 = predict_x0(x_t, gamma_now * batch_ones, x0_prev).astype(jnp.float32)
    if x0_clip:
      x0 = jnp.clip(x0, -b_scale, b_scale)
    x_next = update(x_t, x0, gamma_now, gamma_next, key)
    return (x_next, x0), None

  keys = jax.random.split(step_key, steps)
  (_, x0), _ = jax.lax.scan(body, (x_init, jnp.zeros(shape, jnp.float32)), (t_now, t_next, keys))
  return x0
