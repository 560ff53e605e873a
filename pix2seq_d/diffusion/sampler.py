"""The Pix2Seq-D sampler: DDIM or DDPM over analog bits, written as one `jax.lax.scan`.

The caller encodes the image once and closes `predict_x0` over the encoder output, so each scan
step costs one denoiser pass and nothing else.

Two optional inputs turn the sampler into an editor of masks:
- `start=(x0_in, t0)` refines a given mask as SDEdit does (Meng et al., ICLR 2022): x0_in is
  noised to time t0, x_t0 = sqrt(gamma(t0)) x0_in + sqrt(1 - gamma(t0)) eps, and only the
  remaining max(1, round(steps * t0)) steps run, on the grid scaled into [0, t0]. t0 = 1 is plain
  sampling exactly (x_1 is the same eps, not mixed with x0_in).
- `known=(x0_known, mask)` completes a partial mask by replacement, as RePaint does (Lugmayr et
  al., CVPR 2022): after every update the known pixels are reset to x0_known noised to the next
  step's level with fresh noise, and the returned estimate holds x0_known there exactly.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from pix2seq_d.config import checks
from pix2seq_d.diffusion import schedules

# predict_x0(x_t (B, ...), gamma (B,), x0_prev (B, ...)) -> x0 estimate (B, ...).
PredictX0 = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def time_grid(steps: int, td: float, t_start: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Asymmetric time intervals: t_now = 1 - i / T, t_next = max(1 - (i + 1 + td) / T, 0), all
  scaled by `t_start` (a refinement starting at t0 < 1).

  Returns:
    (t_now, t_next), each (steps,) float32.
  """
  index = jnp.arange(steps, dtype=jnp.float32)
  t_now = t_start * (1.0 - index / steps)
  t_next = t_start * jnp.maximum(1.0 - (index + 1.0 + td) / steps, 0.0)
  return t_now, t_next


def refine_steps(steps: int, t_start: float) -> int:
  """How many of a `steps`-step sampling a refinement from `t_start` runs: the remaining ones."""
  return max(1, round(steps * t_start))


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
  start: tuple[jax.Array, float] | None = None,
  known: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
  """Generates analog bits from Gaussian noise (or refines / completes given bits).

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
    start: (x0_in (B, Hm, Wm, bits), t0 in (0, 1]): refine x0_in from time t0 (module doc).
    known: (x0_known (B, Hm, Wm, bits), mask (B, Hm, Wm, 1) bool): hold x0_known where the mask
      is set (module doc).

  Returns:
    The last x0 estimate, (B, Hm, Wm, bits) float32 (not x at t_next).
  """
  checks.check_choice('diffusion.sampler', sampler, tuple(SAMPLERS))
  if steps < 1:
    raise ValueError(f'config.diffusion.steps={steps} must be at least 1.')
  gamma_fn = schedules.get_schedule(schedule)
  update = SAMPLERS[sampler]
  init_key, step_key = jax.random.split(key)
  x_init = jax.random.normal(init_key, shape, jnp.float32)
  t_start = 1.0
  if start is not None:
    x0_in, t_start = start
    if not 0.0 < t_start <= 1.0:
      raise ValueError(f'the refinement start t0={t_start} must lie in (0, 1].')
    steps = refine_steps(steps, t_start)
    if t_start < 1.0:
      gamma = gamma_fn(jnp.float32(t_start))
      x_init = jnp.sqrt(gamma) * x0_in.astype(jnp.float32) + jnp.sqrt(1.0 - gamma) * x_init
  t_now, t_next = time_grid(steps, td, t_start)
  batch_ones = jnp.ones((shape[0],), jnp.float32)

  def body(carry, inputs):
    x_t, x0_prev = carry
    time_now, time_next, key = inputs
    gamma_now, gamma_next = gamma_fn(time_now), gamma_fn(time_next)
    x0 = predict_x0(x_t, gamma_now * batch_ones, x0_prev).astype(jnp.float32)
    if x0_clip:
      x0 = jnp.clip(x0, -b_scale, b_scale)
    if known is None:
      x_next = update(x_t, x0, gamma_now, gamma_next, key)
    else:  # the known pixels at the next level, with noise of their own
      update_key, known_key = jax.random.split(key)
      x_next = update(x_t, x0, gamma_now, gamma_next, update_key)
      x0_known, mask = known
      eps = jax.random.normal(known_key, shape, jnp.float32)
      reset = jnp.sqrt(gamma_next) * x0_known + jnp.sqrt(1.0 - gamma_next) * eps
      x_next = jnp.where(mask, reset, x_next)
    return (x_next, x0), None

  keys = jax.random.split(step_key, steps)
  (_, x0), _ = jax.lax.scan(body, (x_init, jnp.zeros(shape, jnp.float32)), (t_now, t_next, keys))
  if known is not None:
    x0 = jnp.where(known[1], known[0].astype(jnp.float32), x0)
  return x0
